"""Weight restriction (slt_ppl.restrict): the restricted LLC of one DLN layer against its Gaussian
closed form on both backends, the all-sites restriction as the identical run, and the errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import slt_ppl
from models import numpyro_zoo, pyro_zoo
from slt_ppl.restrict import restrict, site_layout

WIDTHS = [3, 4, 4, 2]  # W0 (4×3), W1 (4×4) sampled, W2 (2×4): H = (W2ᵀW2) ⊗ ZᵀZ/n has rank 2·3
N = 400
GAMMA = 50.0
PROBLEM = dict(widths=WIDTHS, n=N, seed=3, input_range=3.0)


def middle_layer_llc(problem, nbeta: float, gamma: float, subset=None) -> tuple[float, float]:
    """(exact λ, top eigenvalue of the precision P) of the posterior restricted to W1 of
    y = W2·W1·W0·x + N(0, σ²).

    The model is linear in W1, so L_n(W1* + Δ) = L* + gᵀδ + ½δᵀHδ exactly (δ = vec Δ, row-major),
    with z_i = W0·x_i, J_i = ∂f_i/∂δ = W2 ⊗ z_iᵀ, H = Σ J_iᵀJ_i/(nσ²) = (W2ᵀW2) ⊗ (Σ z_i z_iᵀ)/(nσ²)
    and g = −Σ J_iᵀ r_i/(nσ²) = −vec(W2ᵀ Rᵀ Z)/(nσ²) (r_i the residuals at w*). The posterior
    ∝ exp(−nβ(gᵀδ + ½δᵀHδ) − γ/2‖δ‖²) is N(m, P⁻¹) with P = nβH + γI, m = −P⁻¹·nβg, hence
    λ = nβ·E[gᵀδ + ½δᵀHδ] = nβ·(gᵀm + ½ tr(H P⁻¹) + ½ mᵀHm). ``subset``: flat indices into
    vec W1 when only those are sampled (H and g restricted to them, the rest held at w*).
    """
    x = np.asarray(problem.data["x"], np.float64)
    y = np.asarray(problem.data["y"], np.float64)
    w0, w1, w2 = (np.asarray(problem.center[f"w{i}"], np.float64) for i in range(3))
    noise, n = problem.settings["noise"], x.shape[0]
    z = x @ w0.T
    resid = y - z @ w1.T @ w2.T
    hess = np.kron(w2.T @ w2, z.T @ z) / (n * noise**2)
    grad = -(w2.T @ resid.T @ z).reshape(-1) / (n * noise**2)
    if subset is not None:
        hess, grad = hess[np.ix_(subset, subset)], grad[subset]
    precision = nbeta * hess + gamma * np.eye(hess.shape[0])
    cov = np.linalg.inv(precision)
    mean = -cov @ (nbeta * grad)
    llc = nbeta * (grad @ mean + 0.5 * np.trace(hess @ cov) + 0.5 * mean @ hess @ mean)
    return float(llc), float(np.linalg.eigvalsh(precision)[-1])


def mala_run(step_size: float) -> dict:
    # MALA is exact for any ε; at ε·h_max = 1.5 the acceptance is ≈ 0.8 and the slowest mode that
    # moves the loss (precision nβ·h_min + γ ≈ 70) relaxes in ≈ 2/(ε·70) ≈ 13 steps ≪ 200.
    # Measured: numpyro 1.87 ± 0.07, pyro 1.84 ± 0.06 for λ = 1.80 (150 draws, 100 burn-in).
    return dict(
        kernel="mala",
        step_size=step_size,
        num_chains=4,
        num_draws=80,
        thin=2,
        num_burnin=40,
        progress=False,
    )


def sampled_llc(posterior, step_size: float) -> tuple[float, float, str]:
    result = slt_ppl.sample(posterior, **mala_run(step_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = slt_ppl.llc(result)
    assert result.attrs["dim"] == 16 and result.attrs["sampled_dim"] == 16
    assert result.attrs["full_dim"] == 3 * 4 + 4 * 4 + 4 * 2
    return float(est["llc"]), float(est["llc_se"]), str(est.attrs["verdict"])


def test_middle_layer_llc_matches_gaussian_closed_form_pyro():
    """The torch side; test_restrict_refined checks the NumPyro side (and a masked part of W1)."""
    model, problem = pyro_zoo.dln(**PROBLEM)
    post = slt_ppl.localize(
        model, problem.data, problem.center, restrict_to=["w1"], gamma=GAMMA, backend="pyro"
    )
    exact, top = middle_layer_llc(problem, post.nbeta, post.gamma)
    llc, se, verdict = sampled_llc(post, step_size=1.5 / top)
    # 3 se: the Monte Carlo error of a correct sampler; 5 %: the step-size bias budget
    assert abs(llc - exact) <= 3 * se + 0.05 * exact, (llc, se, exact, verdict)
    # rank H = 6 of 16: λ < 6/2, far below d_S/2 = 8 (a wrong embedding or γ would show)
    assert 1.5 < exact < 3.0, exact


def test_auto_gamma_uses_the_sampled_coordinates():
    model, problem = numpyro_zoo.dln(**PROBLEM)
    post = slt_ppl.localize(model, problem.data, problem.center, restrict_to=r"w1")
    assert post.info["gamma_rule"].startswith("unit-information")
    # h̄ over W1 alone: tr H_W1/16 = tr(W2ᵀW2)·tr(ZᵀZ/n)/16 (σ = 1), Hutchinson within 50 %
    x = np.asarray(problem.data["x"], np.float64)
    z = x @ np.asarray(problem.center["w0"], np.float64).T
    w2 = np.asarray(problem.center["w2"], np.float64)
    hbar = np.trace(w2.T @ w2) * np.trace(z.T @ z / N) / 16
    assert post.info["mean_hessian_diagonal"] == pytest.approx(hbar, rel=0.5)
    assert post.gamma == pytest.approx(post.beta * hbar, rel=0.5)
    # exactly the unit-information rule applied to the restricted loss (same probes)
    from slt_ppl.backends.common import unit_information_gamma

    again = unit_information_gamma(post.loss_fn, post.center, post.data, post.n, post.nbeta)
    assert again == (post.gamma, post.info["mean_hessian_diagonal"])


@pytest.mark.parametrize("zoo", [numpyro_zoo, pyro_zoo], ids=["numpyro", "pyro"])
def test_all_sites_is_the_identical_run(zoo):
    model, problem = zoo.dln(widths=[2, 3, 2], n=100, seed=1)
    backend = "pyro" if zoo is pyro_zoo else None
    full = slt_ppl.localize(model, problem.data, problem.center, backend=backend)
    assert restrict(full, ["w0", "w1"]) is full
    assert restrict(full, {"w0": np.ones((3, 2), bool), "w1": True}) is full
    everything = slt_ppl.localize(
        model, problem.data, problem.center, backend=backend, restrict_to=r"w\d"
    )
    assert everything.gamma == full.gamma and everything.info == full.info
    settings = dict(
        kernel="sgld", step_size=1e-4, num_chains=2, num_draws=10, num_burnin=10, thin=1
    )
    a = slt_ppl.sample(full, progress=False, **settings)["sample_stats"]["loss"].values
    b = slt_ppl.sample(everything, progress=False, **settings)["sample_stats"]["loss"].values
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("zoo", [numpyro_zoo, pyro_zoo], ids=["numpyro", "pyro"])
def test_mask_embeds_sampled_coordinates_and_records_attrs(zoo):
    model, problem = zoo.dln(widths=[2, 3, 2], n=200, seed=1)
    backend = "pyro" if zoo is pyro_zoo else None
    full = slt_ppl.localize(model, problem.data, problem.center, backend=backend, gamma=5.0)
    mask = np.zeros((2, 3), bool)
    mask[1, [0, 2]] = True
    post = restrict(full, {"w1": mask})
    assert post.dim == 2 and post.gamma == 5.0 and post.sites == full.sites
    assert json.loads(post.info["restricted_to"]) == {"masks": ["w1"], "sampled": {"w1": 2}}
    assert (post.info["sampled_dim"], post.info["full_dim"]) == (2, 12)
    center_w1 = np.asarray(problem.center["w1"])
    np.testing.assert_allclose(_np(post.center), center_w1[mask])
    shift = _like(post.center, [0.5, -1.0])
    params = post.unravel(post.center + shift)
    expected = center_w1.copy()
    expected[mask] += [0.5, -1.0]
    np.testing.assert_allclose(_np(params["w1"]), expected, rtol=1e-6)
    np.testing.assert_allclose(_np(params["w0"]), np.asarray(problem.center["w0"]))
    full_w = _np(full.center).copy()
    full_w[site_layout(full)["w1"][mask]] += [0.5, -1.0]
    assert float(post.full_loss(post.center + shift)) == pytest.approx(
        float(full.full_loss(_like(full.center, full_w))), rel=1e-6
    )


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _like(ref, values):
    if hasattr(ref, "detach"):
        import torch

        return torch.as_tensor(np.asarray(values), dtype=ref.dtype)
    return np.asarray(values, dtype=np.float32)


@pytest.fixture(scope="module")
def dln_posterior():
    model, problem = numpyro_zoo.dln(widths=[2, 3, 2], n=200, seed=1)
    return slt_ppl.localize(model, problem.data, problem.center, gamma=5.0)


@pytest.mark.parametrize(
    "selection, message",
    [
        (["w7"], "unknown site(s) ['w7']"),
        ("v.*", "matches no site"),
        ("w[", "not a regular expression"),
        ({"w1": np.ones((3, 2), bool)}, "site 'w1' has shape (3, 2), the site has shape (2, 3)"),
        ({"w1": np.ones((2, 3))}, "mask of site 'w1' has dtype float64"),
        ({"w1": np.zeros((2, 3), bool)}, "selects no coordinate"),
        ({"w9": True}, "unknown site(s) ['w9']"),
        (3, "got int"),
    ],
)
def test_bad_selections_name_the_problem(dln_posterior, selection, message):
    with pytest.raises(slt_ppl.SettingError) as err:
        restrict(dln_posterior, selection)
    assert message in str(err.value)


def test_a_restricted_posterior_is_not_restricted_again(dln_posterior):
    once = restrict(dln_posterior, ["w1"])
    with pytest.raises(slt_ppl.SettingError, match="already restricted"):
        restrict(once, ["w1"])


def test_constrained_site_takes_names_not_masks():
    import numpyro
    import numpyro.distributions as dist

    def mixture(y=None):
        probs = numpyro.sample("probs", dist.Dirichlet(np.ones(3, np.float32)))
        loc = numpyro.sample("loc", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample(
                "y", dist.MixtureSameFamily(dist.Categorical(probs), dist.Normal(loc)), obs=y
            )

    y = np.random.default_rng(0).normal(size=50).astype(np.float32)
    center = {"probs": np.full(3, 1 / 3, np.float32), "loc": np.array([-1.0, 0.0, 1.0], np.float32)}
    post = slt_ppl.localize(mixture, {"y": y}, center, gamma=1.0)
    with pytest.raises(slt_ppl.SettingError, match=r"site 'probs' has shape \(3,\) but \(2,\)"):
        restrict(post, {"probs": np.ones(3, bool)})
    assert restrict(post, ["probs"]).dim == 2
