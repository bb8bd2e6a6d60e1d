"""The verdict's ``relaxation`` check (slt_ppl.diagnostics.relaxation_check).

The situation it exists for (a per-head LLC of a tiny language model, benchmarks/RESULTS.md): a
user fixes thin and draws, the run is shorter than the time 2/(εγ) in which the directions held
only by the localization leave w*, the loss trace already looks flat, and λ̂ comes out far too
small yet "healthy". Here the same situation on a Gaussian posterior with a closed-form λ: a
linear regression whose inputs have a few stiff and many weak directions (nβ·s_weak ≈ γ/3), so
most of λ sits in directions that relax on the γ time scale.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import slt_ppl
from slt_ppl.diagnostics import relaxation_deficit

N, STIFF, WEAK = 1000, 4, 60
S_STIFF, S_WEAK = 1.0, 1e-3
GAMMA = 0.5
EPS = 2e-3  # 0.3 / (nβ·s_stiff + γ): the curvature bound of the tuner


def loss(w, batch):
    r = batch["y"] - batch["x"] @ w["w"]
    return 0.5 * jnp.mean(r**2)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    scale = np.r_[np.full(STIFF, S_STIFF), np.full(WEAK, S_WEAK)] ** 0.5
    x = rng.standard_normal((N, STIFF + WEAK)) * scale
    x -= x.mean(0)
    y = rng.standard_normal(N)
    center = {"w": np.linalg.lstsq(x, y, rcond=None)[0]}  # the MLE: L_n's exact minimum
    post = slt_ppl.localize(loss, {"x": x, "y": y}, center, gamma=GAMMA, backend="jax")
    h = np.linalg.eigvalsh(post.nbeta * x.T @ x / N)
    exact = 0.5 * float(np.sum(h / (h + GAMMA)))  # λ of the Gaussian posterior, closed form
    return post, exact


def run(post, burnin, draws, thin):
    result = slt_ppl.sample(post, kernel="sgld", batch_size=N, step_size=EPS, num_chains=4,
                            num_burnin=burnin, num_draws=draws, thin=thin, seed=0,
                            progress=False)  # fmt: skip
    est = slt_ppl.llc(result, warn=False)
    checks = dict(zip(est["check"].values, est["check_passed"].values, strict=True))
    return float(est["llc"]), float(est["llc_se"]), checks


def test_deficit_formula():
    # D = (e^{−rb} − e^{−r(b+K)})/(rK), r = εγ; limits: no burn-in, long window → 1/(rK)
    assert relaxation_deficit(1e-3, 1.0, 0, 10**7) == pytest.approx(1e-4, rel=1e-6)
    assert relaxation_deficit(1e-3, 1.0, 10**5, 10) < 1e-40
    assert relaxation_deficit(1e-2, 1.0, 100, 100) == pytest.approx(
        (np.exp(-1) - np.exp(-2)) / 1.0, rel=1e-9
    )


def test_short_run_is_flagged_and_long_run_passes(problem):
    post, exact = problem
    # 200 + 200 steps against 2/(εγ) = 2000: D = (e^{-0.2} − e^{-0.4})/0.2 = 0.74
    short, short_se, short_checks = run(post, 200, 200, 1)
    assert short < exact - 3 * short_se  # the short run is wrong (≈ half of λ) ...
    assert not short_checks["relaxation"]  # ... and the new check says so
    # 20 relaxation times of burn-in, 40 of draws: D ≈ 0, and λ̂ is right (3 se + 5 %: the
    # Euler–Maruyama heating of the stiff directions is (ε/8)·tr(nβH) ≈ 0.04)
    long, long_se, long_checks = run(post, 20_000, 400, 100)
    assert long_checks["relaxation"]
    assert abs(long - exact) <= 3 * long_se + 0.05 * exact, (long, long_se, exact)
