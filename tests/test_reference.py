"""``slt_ppl.reference.exact_llc`` against closed forms and independent methods.

Closed form (linear-Gaussian regression, any center w* and γ): with the plain-JAX loss
L_n(w) = (1/n)·Σ ½(y_i − x_iᵀw)²/σ² + c, E(w) = nβ·(L_n(w) − L_n(w*)) = ½wᵀAw − bᵀw − E₀ with
A = β·XᵀX/σ², b = β·Xᵀy/σ², E₀ = ½w*ᵀAw* − bᵀw*. At temperature factor f the posterior
∝ exp(−f·E − γ/2‖w − w*‖²) is Gaussian with precision P = f·A + γI and mean μ = P⁻¹(f·b + γ·w*), so

    λ_f = f·E[E] = f·(½·tr(A·P⁻¹) + ½·μᵀAμ − bᵀμ − E₀).

Tolerances: quadrature reports a numerical error estimate; it must agree with closed forms to
1e-6 relative (its refinement tolerance is 1e-4 on the change from half the resolution, and the
rule converges geometrically, so the actual error is orders below; measured ~1e-12). NUTS values
are Monte Carlo estimates: a test asserts |λ̂ − truth| ≤ 4·se (a correct sampler fails that with
probability 6e-5 per assertion if se is right; ArviZ's MCSE from ESS ≥ 400 is accurate to ~10 %).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

import slt_ppl
from models import numpyro_zoo as zoo
from models.quadrature import crossing_llc_from_data
from slt_ppl.errors import SettingError
from slt_ppl.reference import ReferenceConvergenceError, exact_llc, two_temperature


def gaussian_problem(d: int, n: int, seed: int = 0, noise: float = 0.7):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w_true = rng.normal(size=d)
    y = (x @ w_true + noise * rng.normal(size=n)).astype(np.float32)

    def loss(w, batch):
        r = batch["y"] - batch["x"] @ w
        return jnp.mean(0.5 * r * r) / noise**2 + math.log(noise)

    # a center off the least-squares point, so the center term of the closed form is exercised
    center = (w_true + 0.05).astype(np.float32)
    return loss, {"x": x, "y": y}, center, noise


def closed_form(post, noise: float, factor: float = 1.0) -> float:
    x = np.asarray(post.data["x"], np.float64)
    y = np.asarray(post.data["y"], np.float64)
    beta, gamma = post.nbeta / post.n, post.gamma
    w_star = np.asarray(post.center, np.float64)
    a = beta * x.T @ x / noise**2
    b = beta * x.T @ y / noise**2
    e0 = 0.5 * w_star @ a @ w_star - b @ w_star
    prec = factor * a + gamma * np.eye(len(w_star))
    mu = np.linalg.solve(prec, factor * b + gamma * w_star)
    mean_e = 0.5 * np.trace(np.linalg.solve(prec, a)) + 0.5 * mu @ a @ mu - b @ mu - e0
    return float(factor * mean_e)


@pytest.fixture(scope="module")
def gaussian_2d():
    loss, data, center, noise = gaussian_problem(2, 300)
    post = slt_ppl.localize(loss, data, center, gamma=0.7, backend="jax")
    return post, noise


def test_quadrature_matches_gaussian_closed_form_with_two_temperatures(gaussian_2d):
    post, noise = gaussian_2d
    ds = exact_llc(post, "quadrature", temperatures=(1.0, 2.0))
    truth = [closed_form(post, noise, f) for f in (1.0, 2.0)]
    np.testing.assert_allclose(ds["llc_at_temperature"].values, truth, rtol=1e-6)
    assert float(ds["llc"]) == pytest.approx(truth[0], rel=1e-6)
    assert float(ds["llc_se"]) < 1e-4 * truth[0]  # the error estimate is reported and small
    # λ̂₂ from its definition (E_β1[nL] − E_β2[nL])/(1/β1 − 1/β2), E_f[nL] − nL* = λ_f/(f·β)
    beta = post.nbeta / post.n
    e_nl = [lam / (f * beta) for lam, f in zip(truth, (1.0, 2.0), strict=True)]
    definition = (e_nl[0] - e_nl[1]) / (1 / beta - 1 / (2 * beta))
    assert float(ds["llc_two_temperature"]) == pytest.approx(definition, rel=1e-6)
    assert ds.attrs["method"] == "quadrature" and ds.attrs["converged"] == 1


def test_nuts_matches_gaussian_closed_form(gaussian_2d):
    post, noise = gaussian_2d
    ds = exact_llc(post, "nuts", num_draws=500, num_burnin=300)
    assert ds.attrs["method"] == "nuts" and ds.attrs["converged"] == 1
    truth = closed_form(post, noise)
    assert abs(float(ds["llc"]) - truth) <= 4 * float(ds["llc_se"]), (float(ds["llc"]), truth)
    assert float(ds["rhat"]) <= 1.01 and float(ds["ess"]) >= 400


@pytest.fixture(scope="module")
def crossing():
    model, problem = zoo.normal_crossing(powers=(1, 2), n=200, seed=3, noise=0.25, x_std=2.0)
    return slt_ppl.localize(model, problem.data, problem.center), problem


def test_quadrature_matches_the_one_dimensional_crossing_integral(crossing):
    """An independent method: ``models.quadrature`` integrates w1 analytically (σ = 0.25 enters
    as x/σ, y/σ)."""
    post, problem = crossing
    ds = exact_llc(post)  # auto: d = 2 → quadrature
    x = np.asarray(problem.data["x"], np.float64) / 0.25
    y = np.asarray(problem.data["y"], np.float64) / 0.25
    truth = crossing_llc_from_data(x, y, (1, 2), post.gamma, post.nbeta)
    assert ds.attrs["method"] == "quadrature"
    assert float(ds["llc"]) == pytest.approx(truth, rel=1e-8)


def test_nuts_and_quadrature_agree_on_a_crossing():
    """NUTS vs quadrature on y = x·w1·w2² + noise at w* = 0, strongly localized (γ = 20, n = 100):
    γ holds w2 within ≈ 0.5, where the valley around w1 = 0 is wide enough for NUTS (measured:
    z = −1.1 and −0.8 at seeds 0 and 1, no divergent transitions).

    At the default γ NUTS is *not* a reliable reference for crossings: the valley narrows like
    1/(√a·w2²) far out (a funnel), NUTS under-visits it and comes out low (n = 400, default γ,
    4 × 4000 draws at target_accept 0.99: 0.1423 ± 0.0061 and 0.1248 ± 0.0055 for the exact
    0.1451, i.e. −0.5 and −3.7 se), and every such run had 37–154 divergent transitions, which
    ``exact_llc`` reports as not converged. Hence quadrature for d ≤ 2."""
    model, problem = zoo.normal_crossing(powers=(1, 2), n=100, seed=3, noise=0.25, x_std=2.0)
    post = slt_ppl.localize(model, problem.data, problem.center, gamma=20.0)
    quad = exact_llc(post, "quadrature")
    nuts = exact_llc(post, "nuts", num_draws=800, num_burnin=400, target_accept=0.99)
    assert nuts.attrs["converged"] == 1  # strict=True would have raised otherwise
    combined = math.hypot(float(nuts["llc_se"]), float(quad["llc_se"]))
    assert abs(float(nuts["llc"]) - float(quad["llc"])) <= 4 * combined


def test_torch_posterior_quadrature_matches_jax(crossing):
    torch = pytest.importorskip("torch")
    from models import pyro_zoo

    post, problem = crossing
    model, _ = pyro_zoo.normal_crossing(powers=(1, 2), n=200, seed=3, noise=0.25, x_std=2.0)
    tpost = slt_ppl.localize(
        model, {k: torch.as_tensor(v) for k, v in problem.data.items()},
        {k: torch.as_tensor(v) for k, v in problem.center.items()}, gamma=post.gamma,
        backend="pyro", device="cpu",
    )  # fmt: skip
    a, b = exact_llc(post), exact_llc(tpost)
    assert b.attrs["backend"] == "pyro"
    assert float(b["llc"]) == pytest.approx(float(a["llc"]), rel=1e-7)


def test_two_temperature_formula():
    # E_f[nL_n] − nL_n(w*) = λ/(fβ) + c (an O(1) term) gives λ_f = fβ·(…) = λ + cβ·f, which the
    # two-temperature estimator cancels exactly: λ̂₂ = λ (c < 0: λ_1 below λ, λ_2 further below)
    lam, cb = 3.0, -0.6
    value, se = two_temperature((1.0, 2.0), (lam + cb, lam + 2 * cb), (0.1, 0.2))
    assert value == pytest.approx(lam)
    assert se == pytest.approx(math.hypot(0.1, 0.1) / 0.5)


def test_error_paths(gaussian_2d, crossing):
    post, _ = gaussian_2d
    with pytest.raises(SettingError, match="method must be one of"):
        exact_llc(post, "mcmc")
    for bad in [(1.0,), (1.0, 2.0, 3.0), (1.0, -2.0), (2.0, 2.0), ("a", "b")]:
        with pytest.raises(SettingError, match="temperature"):
            exact_llc(post, temperatures=bad)
    loss, data, center, _ = gaussian_problem(3, 50)
    post3 = slt_ppl.localize(loss, data, center, gamma=0.7, backend="jax")
    with pytest.raises(SettingError, match="quadrature handles d"):
        exact_llc(post3, "quadrature")
    loss, data, center, _ = gaussian_problem(101, 50)
    big = slt_ppl.localize(loss, data, center, gamma=0.7, backend="jax")
    with pytest.raises(SettingError, match="no automatic exact reference for d = 101"):
        exact_llc(big)
    with pytest.raises(SettingError, match="num_chains"):
        exact_llc(post3, "nuts", num_chains=1)
    # γ = 0 at a crossing: the w1 integral at fixed w2 falls like 1/|w2|, the posterior is improper
    model, problem = zoo.normal_crossing(powers=(1, 1), n=20, seed=0)
    improper = slt_ppl.localize(model, problem.data, problem.center, gamma=0.0)
    with pytest.raises(SettingError, match="does not decay"):
        exact_llc(improper)


def test_unconverged_nuts_raises(crossing):
    post, _ = crossing
    # two chains of 100 draws with one leapfrog step per tree cannot reach ESS 400
    kwargs = {"num_chains": 2, "num_draws": 100, "num_burnin": 100, "max_tree_depth": 1}
    with pytest.raises(ReferenceConvergenceError, match=r"ESS .* < 400"):
        exact_llc(post, "nuts", **kwargs)


def test_compare_against_exact(gaussian_2d):
    post, noise = gaussian_2d
    ds = slt_ppl.compare(post, kernels=("mala",), reference="exact", num_draws=1000,
                         num_chains=4, progress=False)  # fmt: skip
    assert ds.attrs["reference"] == "exact" and ds.attrs["reference_method"] == "quadrature"
    assert ds.attrs["reference_llc"] == pytest.approx(closed_form(post, noise), rel=1e-6)
    # MALA is exact up to Monte Carlo error: agreement within 3 combined se (compare's own rule)
    assert bool(ds["agrees_with_reference"].sel(kernel="mala"))
    with pytest.raises(SettingError, match="reference_options apply only"):
        slt_ppl.compare(post, kernels=("mala",), reference="mala", reference_options={"seed": 1})
