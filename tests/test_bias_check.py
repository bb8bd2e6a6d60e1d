"""The verdict's ``bias`` check and ``llc_bias_estimate`` (slt_ppl.estimators.bias).

Fabricated runs: exact SGLD chains on a Gaussian target (tests/_fabricated_results.py), where the
heated LLC λ_ε is known in closed form, with the records the sampler writes (laplacian = tr(nβ∇²L),
grad_noise = Σ_i Σ_i·χ²₁, what |g₁ − g₂|²/4 of two half-batch gradients gives). Real runs: minibatch
SGLD on the regular linear-Gaussian regression of tests/test_calibration.py at 3× and 10× the tuned ε.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _fabricated_results import (
    diagnostic_records,
    exact_llc,
    fabricated_result,
    heated_llc,
    simulate_losses,
)

import slt_ppl
from slt_ppl.diagnostics import HealthThresholds
from slt_ppl.errors import DivergenceError

NBETA, GAMMA = 100.0, 1.0
CURV = np.array([20.0, 50.0, 100.0, 200.0, 400.0])  # nβ·h_L per direction
SIGMA = 2.0 * CURV  # minibatch-gradient noise variance per direction
EPS = 2e-4  # ε·h_max/4 = 0.02: first order is accurate to ~2 %


def gaussian_run(eps, seed=0, kernel="sgld", records=True, kernel_params=None, thresholds=None):
    rng = np.random.default_rng(seed)
    diff = simulate_losses(CURV, GAMMA, SIGMA, eps, chains=8, draws=4000, thin=50, rng=rng,
                           nbeta=NBETA)  # fmt: skip
    extra = {}
    if records:
        extra["laplacian"] = diagnostic_records(diff.shape, CURV.sum(), 0.1 * CURV.sum(), rng)
        noise = diagnostic_records(diff.shape, 0.0, 0.0, rng)
        on = np.isfinite(noise)
        chi2 = rng.standard_normal((int(on.sum()), CURV.size)) ** 2
        noise[on] = chi2 @ SIGMA
        extra["grad_noise"] = noise
    tree = fabricated_result(diff, nbeta=NBETA, eps=eps, kernel=kernel, rng=rng,
                             minibatch_sd=2.0 * float(diff.std()), kernel_params=kernel_params,
                             **extra)  # fmt: skip
    return slt_ppl.llc(tree, warn=False, thresholds=thresholds)


def check(ds, name):
    i = list(ds["check"].values).index(name)
    return bool(ds["check_passed"].values[i]), str(ds["check_detail"].values[i])


def test_gaussian_heating_matches_closed_form():
    ds = gaussian_run(EPS)
    exact, heated = exact_llc(CURV, GAMMA), heated_llc(CURV, GAMMA, SIGMA, EPS)
    # the fabricated chains sample the heated law: λ̂ within 3 se of λ_ε
    assert abs(float(ds["llc"]) - heated) <= 3 * float(ds["llc_se"]), (float(ds["llc"]), heated)
    # first-order estimate vs the exact heating λ_ε − λ: second order is ≈ εh/4 ≤ 2 % here, and
    # the noise term's upper bound overshoots by (ε/8)·Σ(1 − ρ_i)Σ_i ≈ 1 % (γ ≪ c_i)
    true = heated - exact
    est, se = float(ds["llc_bias_estimate"]), float(ds["llc_bias_se"])
    assert abs(est - true) <= 0.05 * true + 3 * se, (est, se, true)
    assert float(ds["llc_bias_discretization"]) == pytest.approx(EPS / 8 * CURV.sum(), rel=0.05)
    assert float(ds["llc_bias_minibatch"]) == pytest.approx(EPS / 8 * SIGMA.sum(), rel=0.05)
    # what halving ε removes, from the closed form, is Δλ̂/2 to first order
    halved = heated - heated_llc(CURV, GAMMA, SIGMA, EPS / 2)
    assert abs(est / 2 - halved) <= 0.05 * halved + 3 * se / 2, (est / 2, halved)
    passed, _ = check(ds, "bias")
    assert passed and ds.attrs["healthy"] == 1, ds.attrs["verdict"]


def test_ten_times_the_step_is_not_healthy():
    ds = gaussian_run(10 * EPS)
    passed, detail = check(ds, "bias")
    assert not passed and "decrease the step size" in detail, detail
    assert ds.attrs["healthy"] == 0 and "bias" in ds.attrs["verdict"]
    # the closed form agrees that halving ε would move λ̂ by more than the limit
    heated = heated_llc(CURV, GAMMA, SIGMA, 10 * EPS)
    moved = heated - heated_llc(CURV, GAMMA, SIGMA, 5 * EPS)
    assert moved > max(2 * float(ds["llc_se"]), 0.05 * heated)


def test_missing_records_fail_for_sg_kernels_and_not_for_exact_ones():
    sg = gaussian_run(EPS, records=False)
    passed, detail = check(sg, "bias")
    assert not passed and "not available" in detail, detail
    assert sg.attrs["healthy"] == 0 and np.isnan(float(sg["llc_bias_estimate"]))
    exact = gaussian_run(EPS, records=False, kernel="mala")
    passed, detail = check(exact, "bias")
    assert passed and "Metropolis" in detail and float(exact["llc_bias_estimate"]) == 0.0


def test_momentum_kernels_scale_the_noise_term():
    """SGHMC's exact-OU refresh with friction f: (2 − f)/f = 9 at f = 0.2 (Gaussian closed form in
    ``estimators.bias.noise_factor``); SGNHT's thermostat absorbs the noise: 0."""
    sgld = gaussian_run(EPS)
    sghmc = gaussian_run(EPS, kernel="sghmc", kernel_params={"friction": 0.2})
    assert float(sghmc["llc_bias_minibatch"]) == pytest.approx(
        9.0 * float(sgld["llc_bias_minibatch"]), rel=1e-9
    )
    assert float(sghmc["llc_bias_discretization"]) == float(sgld["llc_bias_discretization"])
    sgnht = gaussian_run(EPS, kernel="sgnht", kernel_params={"friction": 0.2})
    assert float(sgnht["llc_bias_minibatch"]) == 0.0


@pytest.mark.slow
def test_real_sgld_step_sweep():
    """Minibatch SGLD (batch 50) on the d = 4 linear-Gaussian regression with the exact LLC in
    closed form: at 3× the tuned ε the first-order estimate predicts the measured shift λ̂ − λ
    (tolerance: 3 combined se plus 30 % for the second order, εh/4 reaches ≈ 0.2 there); at 10× the
    verdict is unhealthy, or every chain diverges (a clear error)."""
    from test_calibration import regular_problem

    loss, data, center, exact_fn = regular_problem()
    post = slt_ppl.localize(loss, data, center, gamma=1.0, backend="jax")
    exact = exact_fn(post)
    kw = {"kernel": "sgld", "batch_size": 50, "num_draws": 1000, "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = slt_ppl.llc(slt_ppl.sample(post, **kw), warn=False)
        tuned = float(one.attrs["step_size"])
        passed, detail = check(one, "bias")
        assert passed, detail  # the sampler's own ε keeps the heating inside the limit
        # the adaptation aims at stepsize.HEATING_TARGET = 1.5 % first-order relative heating and
        # stops when its rescaling factor stayed within ×0.8-1.25: measured 1.56 % / 1.82 % on seeds 0 / 1
        # (the 3 % target of session 4 landed at 3.05 / 2.47 / 2.63 %, and at 4.7 % on the RRR
        # 3-3-3 r = 2 run that read 4.06 for 3.57); 2.25 % = 1.5 × the target
        rel = float(one["llc_bias_estimate"]) / float(one["llc"])
        assert rel <= 0.0225, (rel, tuned)
        three = slt_ppl.llc(slt_ppl.sample(post, step_size=3 * tuned, **kw), warn=False)
        shift = float(three["llc"]) - exact
        pred, se = float(three["llc_bias_estimate"]), float(three["llc_se"])
        assert abs(shift - pred) <= 3 * np.hypot(se, float(three["llc_bias_se"])) + 0.3 * pred, (
            shift, pred, se)  # fmt: skip
        ten = slt_ppl.sample(post, step_size=10 * tuned, **kw)
        try:
            est = slt_ppl.llc(ten, warn=False)
        except DivergenceError:
            return
    assert est.attrs["healthy"] == 0, (float(est["llc"]), exact, est.attrs["verdict"])


def test_default_holds_the_whole_heating_to_the_limit():
    # at 3ε: Δλ̂ ≈ 0.17, Δλ̂/2 ≈ 0.09 < limit 5 %·λ̂ ≈ 0.13 < Δλ̂: the halving rule
    # (bias_share 0.5) passes a run whose λ̂ is heated by more than the limit; the default fails it
    halving = gaussian_run(3 * EPS, thresholds=HealthThresholds(bias_share=0.5))
    default = gaussian_run(3 * EPS)
    assert check(halving, "bias")[0], check(halving, "bias")[1]
    assert not check(default, "bias")[0], check(default, "bias")[1]
