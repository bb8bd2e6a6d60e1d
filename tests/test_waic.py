"""slt_ppl.waic: WAIC, functional variance and singular fluctuation (Watanabe 2010).

Ground truth without a sampler: draws from exact posteriors (a Gaussian one, and one reduced to a
1-D quadrature), whose posterior expectations are also known in closed form, so every estimate is
checked against an exact value within its own Monte Carlo error, and against theory and ArviZ.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import xarray as xr

import slt_ppl
from slt_ppl.errors import ResultError, SettingError, SLTWarning

LOG_2PI = math.log(2 * math.pi)

# ---------------------------------------------------------------- regular: Gaussian regression
# y = X w0 + N(0, 1), known noise, flat prior, β = 1: the posterior is N(ŵ, (XᵀX)⁻¹) exactly.
# Why these sizes: ν̂ − d/2 has three parts. (1) The bias of ν(β) at finite n: E[V_n] = d − Σh_i²/2
# - O(d²/n) (h_i the leverages), −0.06 % at n = 4000, d = 5. (2) The spread over data sets,
# sd(V_n) ≈ √(2Σh_i²) ≈ d·√(2/n): 2.2 % of ν. (3) Monte Carlo over S = 2000 iid draws: the per-draw
# q(w) = Σ_i (ℓ_i − E ℓ_i)² is ≈ a χ²_d variable, so sd(V̂)/V ≈ √(2/(d·S)) = 1.4 %. Together 2.6 %,
# so the 10 % tolerance of the issue sits at ≈ 3.8 sd.
REG_N, REG_D, CHAINS, DRAWS = 4000, 5, 4, 500


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(20261202)
    x = rng.normal(size=(REG_N, REG_D))
    y = x @ rng.normal(size=REG_D) + rng.normal(size=REG_N)
    precision = x.T @ x
    cov = np.linalg.inv(precision)
    w_hat = cov @ x.T @ y
    draws = rng.multivariate_normal(w_hat, cov, size=(CHAINS, DRAWS))  # (C, S, d)
    loglik = -0.5 * (y - draws @ x.T) ** 2 - 0.5 * LOG_2PI  # (C, S, n)
    resid = y - x @ w_hat
    lev = np.einsum("ij,jk,ik->i", x, cov, x)
    # exact posterior expectations: ℓ_i = −½r_i² + r_i·a − a²/2 − ½log 2π with a ~ N(0, h_i)
    exact_v = float(np.sum(resid**2 * lev + lev**2 / 2))
    exact_lppd_i = -0.5 * np.log1p(lev) - resid**2 / (2 * (1 + lev)) - 0.5 * LOG_2PI
    return {"loglik": loglik, "exact_v": exact_v, "exact_t": float(-exact_lppd_i.mean())}


@pytest.fixture(scope="module")
def regular_estimate(regression):
    return slt_ppl.waic(regression["loglik"])


def test_regular_model_nu_is_d_over_2(regular_estimate):
    est = regular_estimate
    nu = float(est["singular_fluctuation"])
    assert abs(nu - REG_D / 2) <= 0.10 * REG_D / 2, nu  # tolerance: see the sizes comment
    # W_n − T_n = V_n/n ≈ d/n at β = 1 (AIC's penalty per sample)
    assert float(est["waic"] - est["training_loss"]) == pytest.approx(nu * 2 / REG_N)


def test_regular_model_matches_exact_expectations_within_mcse(regression, regular_estimate):
    est = regular_estimate
    v, v_mcse = float(est["functional_variance"]), float(est["functional_variance_mcse"])
    t, t_mcse = float(est["training_loss"]), float(est["training_loss_mcse"])
    # the exact values are expectations under the posterior the draws come from: the estimate
    # must land within 4 Monte Carlo se (z-test), and that se must be the size theory predicts
    assert abs(v - regression["exact_v"]) <= 4 * v_mcse, (v, regression["exact_v"], v_mcse)
    assert abs(t - regression["exact_t"]) <= 4 * t_mcse, (t, regression["exact_t"], t_mcse)
    predicted = math.sqrt(2 / (REG_D * CHAINS * DRAWS)) * v
    assert 0.5 * predicted < v_mcse < 2 * predicted


def test_matches_arviz_waic_and_loo(regression):
    az = pytest.importorskip("arviz", reason="legacy arviz (<1) provides waic; dev extra")
    if not hasattr(az, "waic"):
        pytest.skip("this arviz has no waic")
    import arviz_base
    import arviz_stats

    loglik = regression["loglik"][:, :, :500]
    est = slt_ppl.waic(loglik)
    idata = az.from_dict(posterior={"mu": np.zeros(loglik.shape[:2])}, log_likelihood={"y": loglik})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = az.waic(idata)  # log scale: elpd_waic, se, p_waic
        ref_dev = az.waic(idata, scale="deviance")
    assert float(est["elpd_waic"]) == pytest.approx(ref["elpd_waic"], rel=1e-10)
    assert float(est["elpd_waic_se"]) == pytest.approx(ref["se"], rel=1e-10)
    assert float(est["functional_variance"]) == pytest.approx(ref["p_waic"], rel=1e-10)
    assert float(est["waic_deviance"]) == pytest.approx(ref_dev["elpd_waic"], rel=1e-10)
    # arviz-stats (0.8) has PSIS-LOO only: its lppd = elpd_loo + p_loo is ours exactly, and
    # elpd_loo ≈ elpd_waic (asymptotically equivalent, Watanabe 2010): here within 1 % of the se
    tree = arviz_base.from_dict(
        {"posterior": {"mu": np.zeros(loglik.shape[:2])}, "log_likelihood": {"y": loglik}}
    )
    loo = arviz_stats.loo(tree)
    assert float(est["lppd"]) == pytest.approx(loo.elpd + loo.p, rel=1e-10)
    assert abs(float(est["elpd_waic"]) - loo.elpd) < 0.01 * loo.se


# ---------------------------------------------------------------- input layouts (seam 3)


def _tree(loss: xr.DataArray, nbeta_over_n: float = 1.0, diverged=None) -> xr.DataTree:
    chains = loss.sizes["chain"]
    diverged = np.full(chains, -1) if diverged is None else np.asarray(diverged)
    stats = xr.Dataset(
        {
            "loss_train": loss,
            "loss": loss.mean("train") if "train" in loss.dims else loss.mean(),
            "diverged_at": ("chain", diverged),
        }
    )
    n = loss.sizes["train"]
    tree = xr.DataTree.from_dict({"/sample_stats": stats})
    tree.attrs.update(n=n, nbeta=n * nbeta_over_n, gamma=1.0)
    return tree


def _small_loglik(seed=0, chains=3, draws=200, n=40):
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 0.1, size=(chains, draws, 1))
    y = rng.normal(size=n)
    return -0.5 * (y - mu) ** 2 - 0.5 * LOG_2PI


def test_result_layout_equals_array_input():
    ll = _small_loglik()
    loss = xr.DataArray(-ll, dims=("chain", "draw", "train"))
    from_tree = slt_ppl.waic(_tree(loss))
    from_array = slt_ppl.waic(ll)
    for key in ("waic", "functional_variance", "training_loss", "elpd_waic_se"):
        assert float(from_tree[key]) == pytest.approx(float(from_array[key]), rel=1e-12)
    assert from_tree.attrs["observable"] == "train"
    # per-token losses (dim train_token) are summed into the row's log-likelihood
    tokens = xr.concat([loss * 0.25, loss * 0.75], dim="train_token").transpose(
        "chain", "draw", "train", "train_token"
    )
    from_tokens = slt_ppl.waic(_tree(tokens), "train")
    assert float(from_tokens["waic"]) == pytest.approx(float(from_array["waic"]), rel=1e-12)
    # observed draws under their own dim (observe_every > 1 keeping only the observed draws)
    own_dim = slt_ppl.waic(_tree(loss.rename(draw="train_draw")), "train")
    assert float(own_dim["waic"]) == pytest.approx(float(from_array["waic"]), rel=1e-12)


def test_result_drops_diverged_chains_unobserved_draws_and_picks_beta_one():
    ll = _small_loglik()
    loss = xr.DataArray(-ll, dims=("chain", "draw", "train"))
    # chain 2 diverged (NaN after); every other draw unobserved (observe_every = 2 padding)
    bad = loss.copy()
    bad[2, 50:] = np.nan
    bad[:, 1::2] = np.nan
    with pytest.warns(slt_ppl.DivergenceWarning):
        est = slt_ppl.waic(_tree(bad, diverged=[-1, -1, 50]))
    expected = slt_ppl.waic(ll[:2, ::2])
    assert float(est["waic"]) == pytest.approx(float(expected["waic"]), rel=1e-12)
    # a temperature dim: the slice at β = 1 is used (factor 2 of a run at nβ = n/2)
    hot = xr.concat([loss * 3.0, loss], dim="temperature").assign_coords(temperature=[1.0, 2.0])
    est = slt_ppl.waic(_tree(hot.transpose("temperature", "chain", "draw", "train"), 0.5))
    assert est.attrs["temperature_factor"] == 2.0 and est.attrs["beta"] == pytest.approx(1.0)
    assert float(est["waic"]) == pytest.approx(float(slt_ppl.waic(ll)["waic"]), rel=1e-12)


def test_bad_inputs_raise_named_errors():
    ll = _small_loglik()
    loss = xr.DataArray(-ll, dims=("chain", "draw", "train"))
    with pytest.raises(ResultError, match="loss_test"):
        slt_ppl.waic(_tree(loss), "test")
    two = _tree(loss)
    two["sample_stats"]["loss_probe"] = loss.rename(train="probe")
    with pytest.raises(ResultError, match="several per-row losses"):
        slt_ppl.waic(two)
    with pytest.raises(SettingError, match=r"\(chain, draw, observation\)"):
        slt_ppl.waic(ll[0])
    nan = ll.copy()
    nan[0, 0, 0] = np.inf
    with pytest.raises(ResultError, match="non-finite"):
        slt_ppl.waic(nan)
    with pytest.raises(SettingError, match="beta"):
        slt_ppl.waic(ll, beta=-1)
    with pytest.warns(SLTWarning, match="not 1"):
        slt_ppl.waic(_tree(loss, nbeta_over_n=0.2))


# ---------------------------------------------------------------- singular: y = a·b·x + N(0, 1)
# At true a·b = 0 with prior a, b ~ N(0, 1/γ), β = 1: λ = 1/2 (m = 2; reference section 4), but the
# singular fluctuation is not 1/2. Exact posterior expectations by 1-D quadrature: the likelihood
# depends on u = a·b only, exp(B·u − A·u²/2) with A = Σx², B = Σxy, so given b, a is Gaussian with
# precision P = A·b² + γ and mean B·b/P, i.e. u | b ~ N(B·b²/P, b²/P); b's marginal is
# q(b) ∝ P^(−1/2)·exp(B²b²/(2P) − γb²/2). Integrals over b on b = e^s (even in b; the trapezoid rule
# on a uniform s-grid converges geometrically, as in models/quadrature.py). Every per-observation
# moment needs E[u^k], k ≤ 4 (Gaussian given b), and E[p(y_i|u)] has a closed form given b.
SING_N, GAMMA = 2000, 1.0


def _b_grid(a_sum: float, num: int) -> np.ndarray:
    lo = math.log(min(math.sqrt(GAMMA / a_sum), 1.0)) - 40.0
    return np.linspace(lo, math.log(math.sqrt(90.0 / GAMMA)) + 0.5, num)


def _u_given_b(x, y, num):
    a_sum, b_sum = x @ x, x @ y
    s = _b_grid(a_sum, num)
    b = np.exp(s)
    prec = a_sum * b**2 + GAMMA
    log_q = -0.5 * np.log(prec) + b_sum**2 * b**2 / (2 * prec) - GAMMA * b**2 / 2 + s  # db = e^s ds
    weights = np.exp(log_q - log_q.max())
    return s, b, prec, b_sum * b**2 / prec, b**2 / prec, weights / weights.sum()


def exact_singular(x, y, num=4001, lppd=True):
    """(V_n, T_n or None) of the exact posterior for this data set."""
    _, _, _, m, v, w = _u_given_b(x, y, num)
    e1, e2 = w @ m, w @ (m**2 + v)
    e3, e4 = w @ (m**3 + 3 * m * v), w @ (m**4 + 6 * m**2 * v + 3 * v**2)
    c1, c2 = x * y, -(x**2) / 2  # ℓ_i(u) = c1·u + c2·u² + const
    var_i = c1**2 * (e2 - e1**2) + 2 * c1 * c2 * (e3 - e1 * e2) + c2**2 * (e4 - e2**2)
    if not lppd:
        return float(var_i.sum()), None
    spread = 1 + np.outer(x**2, v)
    p_i = spread**-0.5 * np.exp(-((y[:, None] - np.outer(x, m)) ** 2) / (2 * spread))
    return float(var_i.sum()), float(-np.mean(np.log(p_i @ w) - 0.5 * LOG_2PI))


def singular_draws(x, y, rng, shape, num=4001):
    """Exact draws: s from the grid's cells (inverse CDF, uniform within a cell), a | b Gaussian."""
    s, _, _, _, _, w = _u_given_b(x, y, num)
    ds = s[1] - s[0]
    cell = rng.choice(num, size=shape, p=w)
    b = np.exp(s[cell] + rng.uniform(-ds / 2, ds / 2, size=shape)) * rng.choice([-1, 1], shape)
    prec = (x @ x) * b**2 + GAMMA
    a = (x @ y) * b / prec + rng.normal(size=shape) / np.sqrt(prec)
    return a * b


def _singular_data(seed, orthogonal):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=SING_N), rng.normal(size=SING_N)
    if orthogonal:  # Σxy = 0: the data sit exactly at the singularity (the most singular case)
        y = y - x * (x @ y) / (x @ x)
    return x, y


def test_singular_quadrature_is_converged():
    x, y = _singular_data(1, orthogonal=False)
    coarse, fine = exact_singular(x, y, 2001), exact_singular(x, y, 4001)
    assert coarse == pytest.approx(fine, rel=1e-9)
    assert exact_singular(x, y, 16001, lppd=False)[0] == pytest.approx(fine[0], rel=1e-9)


def test_singular_model_nu_differs_from_lambda():
    x, y = _singular_data(7, orthogonal=True)
    exact_v, exact_t = exact_singular(x, y)
    rng = np.random.default_rng(11)
    u = singular_draws(x, y, rng, (CHAINS, DRAWS))
    loglik = -0.5 * (y - u[..., None] * x) ** 2 - 0.5 * LOG_2PI
    est = slt_ppl.waic(loglik)
    nu, nu_mcse = float(est["singular_fluctuation"]), float(est["singular_fluctuation_mcse"])
    # the estimator against the exact expectation (4 Monte Carlo se)
    assert abs(nu - exact_v / 2) <= 4 * nu_mcse, (nu, exact_v / 2, nu_mcse)
    t, t_mcse = float(est["training_loss"]), float(est["training_loss_mcse"])
    assert abs(t - exact_t) <= 4 * t_mcse
    # ν vs λ = 1/2: apart by more than the combined se (data spread and Monte Carlo)
    se = math.hypot(float(est["singular_fluctuation_se"]), nu_mcse)
    assert 0.5 - nu > 3 * se, (nu, se)  # measured: ν ≈ 0.41, se ≈ 0.03


def test_singular_fluctuation_average_over_data_sets_is_below_lambda():
    # E over data sets of the exact ν (no draws): Σxy fluctuates, and |Σxy|/√Σx² large moves the
    # posterior off the singularity (ν → 1/2), so one data set alone can land near 1/2; the mean
    # over 20 data sets is the population quantity ν(1) = E[V_n]/2 of Watanabe's theory.
    nus = [exact_singular(*_singular_data(s, False), num=801, lppd=False)[0] / 2 for s in range(20)]
    mean, se = float(np.mean(nus)), float(np.std(nus, ddof=1) / math.sqrt(len(nus)))
    assert 0.5 - mean > 3 * se, (mean, se)  # measured 0.439 ± 0.010


# ---------------------------------------------------------------- seam 3, end to end


def test_recorded_probe_losses_match_kept_draws():
    # sample(..., observe=...) records ℓ inside the compiled loop (float32); the same draws kept
    # and evaluated here in float64 must give the same WAIC up to float32 rounding
    from models import numpyro_zoo

    model, problem = numpyro_zoo.linear_regression(d=3, n=200)
    posterior = slt_ppl.localize(model, problem.data, problem.center, nbeta=200)  # β = 1
    result = slt_ppl.sample(
        posterior,
        num_draws=200,
        thin=2,
        keep_draws=True,
        observe={"train": problem.data},
        observe_every=2,
        progress=False,
    )
    from_records = slt_ppl.waic(result, "train")
    w = result["posterior"]["w"].values.astype(np.float64)[:, ::2]
    x = np.asarray(problem.data["x"], np.float64)
    y = np.asarray(problem.data["y"], np.float64)
    from_draws = slt_ppl.waic(-0.5 * (y - w @ x.T) ** 2 - 0.5 * LOG_2PI)
    assert from_records.attrs["num_draws"] == 100 and from_records.attrs["beta"] == 1.0
    for key in ("waic", "training_loss", "functional_variance"):
        assert float(from_records[key]) == pytest.approx(float(from_draws[key]), rel=1e-4), key
