"""First-order heating of λ̂ by the sampler's step: the estimate behind the verdict's ``bias`` check.

Derivation (quadratic approximation). Take one eigendirection of the potential
U(w) = nβ·L_n(w) + (γ/2)‖w − w*‖² with precision h = nβ·h_L + γ (h_L the curvature of L_n), and an
SGLD step w ← w − (ε/2)·(h·w + ζ) + √ε·ξ, ζ the minibatch-gradient noise of variance Σ, ξ ~ N(0, 1).
The stationary variance v solves v = (1 − εh/2)²·v + ε²Σ/4 + ε, so

    v = (1 + εΣ/4) / (h·(1 − εh/4)) = (1/h)·(1 + εh/4 + εΣ/4 + O(ε²)),

against 1/h for the exact posterior. The direction's share of λ̂ = nβ·E[L_n − L_n(w*)] is
½·nβh_L·v, so the step inflates it by ½·(nβh_L/h)·(εh/4 + εΣ/4) = (ε/8)·nβh_L + (ε/8)·ρ·Σ with
ρ = nβh_L/h ≤ 1. Summed over directions:

    Δλ̂ ≈ (ε/8)·tr(nβ·∇²L_n) + (ε/8)·Σ_i ρ_i·Σ_ii ≤ (ε/8)·E[tr(nβ∇²L_B)] + (ε/8)·E[tr Σ_B].

With a diagonal preconditioner G (RMSprop-SGLD) the same argument in the coordinates G^{-½}w gives
tr(G·nβ∇²L) and tr(G·Σ_B). The discretization term is exact to first order for Gaussian targets;
beyond them it is the local quadratic approximation averaged over the draws: on the 1-D target
U = w⁴/4 + w²/2 (Euler–Maruyama's invariant law computed on a grid, ε = 0.005–0.01) the true
first-order heating of E[U] was 0.62× the formula, of E[w²] 0.53×, of E[w⁴] 0.68× (conservative
there; third derivatives enter the exact first-order term). The noise term is an upper bound
(ρ_i ≤ 1; flat directions have ρ ≈ 0).
Momentum kernels: SGHMC's gradient noise heats (2 − f)/f times as much as SGLD's (f = friction),
SGNHT's thermostat absorbs it (:func:`noise_factor`);
Metropolis-corrected kernels (MALA, HMC, NUTS) sample the posterior exactly: Δλ̂ = 0.

The sampler records, every ``diag_every`` draws (seam 5), ``laplacian`` = a one-probe Hutchinson
estimate of tr(G·∇²(nβL_B))(w_t) and ``grad_noise`` = |G^½(g₁ − g₂)|²/4 from the gradients g₁, g₂ of
the two half batches, unbiased for tr(G·Σ_B)(w_t) (0 for full batches). Their means over the
diagnostic draws of the healthy chains give the two terms; the standard error is
:func:`~slt_ppl.estimators.error_bars.honest_se` of the per-draw term series.

The check: halving ε removes Δλ̂/2 to first order; issue 13 asks that a run whose λ̂ would move
by more than max(2·se(λ̂), 0.05·|λ̂|) under halving be unhealthy. The default holds the whole
|Δλ̂| to that limit (``HealthThresholds.bias_share = 1``; 0.5 is the issue's minimum rule),
because with Δλ̂/2 a run biased by up to twice the limit passes. Measured (SGLD, the sampler's
tuned ε, exact λ by closed form / quadrature):
  linear regression d = 10, n = 5000 (λ = 5.00): 1× λ̂ = 5.24 ± 0.23, Δλ̂ = 0.14; 3× 5.41 ± 0.14,
  Δλ̂ = 0.43 (passes with 0.5, fails with 1); 10× 6.50 ± 0.10, Δλ̂ = 1.43 (fails either way);
  crossing w1·w2², n = 2000, γ = 1 (λ_exact = 0.193): 1× 0.219 ± 0.018, Δλ̂ = 0.004; 10× 0.199 ±
  0.009, Δλ̂ = 0.024 (healthy, and right). With an earlier, larger tuned ε (9.4e-3) the crossing
  gave 0.291 ± 0.028 with Δλ̂ = 0.096: λ̂ − Δλ̂ = 0.195. ``llc_bias_corrected`` = λ̂ − Δλ̂ is reported
beside λ̂, not instead of it: the noise term is an upper bound.

At a singular center (session 5, issue 13): RRR 3-3-3 at rank 2, n = 5000, exact 3.57 ± 0.04
(NUTS), SGLD batch 256 at a fixed ε = 1.92e-6 given by the user (burn-in num_draws·thin steps):
λ̂ = 3.59 ± 0.11 and 3.62 ± 0.13 on two seeds with Δλ̂ = 0.17 (noise term 0.12); batch 128:
3.74 ± 0.11 with Δλ̂ = 0.26 (flagged); full batch 3.50 ± 0.05; 10× ε: 6.37 ± 0.19 with Δλ̂ = 2.09
(flagged). So the estimate held as a bound at 1× and 2× the noise and was 0.75× the heating at
10× ε (second order; flagged anyway). The earlier reading "minibatch heating 0.55, estimate
0.14" compared the default run (4.06) with user-ε runs: the defaults' excess came from the
adaptation windows (run at up to 1.5-2× the final ε) followed by a burn-in of only
num_draws·thin/4 steps at the frozen ε; the same seed with num_draws·thin steps read 3.63
(``sampling.stepsize.adapt_burnin`` now settles the chains that long). The records themselves
are unbiased (tests/test_heating_records.py: per-datum gradients and the full Hessian at an
off-center point). Not seen by this estimate, by design: a chain that has not forgotten an
earlier, hotter ε (non-stationarity; the verdict's mixing and relaxation checks).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

from slt_ppl.estimators.error_bars import honest_se

EXACT_KERNELS = ("mala", "hmc", "nuts")
MOMENTUM_KERNELS = ("sghmc", "sgnht")
BIAS_FIELDS = ("laplacian", "grad_noise")
RELATIVE_TOLERANCE = 0.05
SE_MULTIPLE = 2.0


@dataclass(frozen=True)
class BiasEstimate:
    """Δλ̂ = ``discretization`` + ``minibatch`` with standard error ``se`` (NaN when unavailable);
    ``available`` False when the result has no usable records, ``note`` says why or how it was
    obtained."""

    total: float
    discretization: float
    minibatch: float
    se: float
    available: bool
    note: str
    exact_kernel: bool = False


def noise_factor(kernel: str, kernel_params: str | dict | None) -> float:
    """Multiplier c of the gradient-noise term (seam 5), per kernel:

    - SGLD, RMSprop-SGLD and user kernels: 1 (the SGLD formula);
    - SGHMC (OBABO splitting, exact OU refresh p ← a·p + √(1 − a²)·ξ, a = 1 − friction): a
      gradient-noise variance Σ per step heats a Gaussian direction by (2 − f)/f times SGLD's
      εΣ/4 (f = friction; 19 at the default 0.1, 1 at f = 1, where a step is a Langevin step);
    - SGNHT: 0. Its thermostat adapts the damping until E|p|² equals the virial E[(w − w*)·∇U],
      which pins the temperature of the positions whatever the gradient noise (Ding et al. 2014;
      the derivation is in ``kernels.momentum``), so minibatch noise does not heat it to first
      order. Its discretization term is kept (conservative).
    """
    if kernel not in MOMENTUM_KERNELS:
        return 1.0
    if kernel == "sgnht":
        return 0.0
    params = json.loads(kernel_params) if isinstance(kernel_params, str) else kernel_params or {}
    friction = float(params.get("friction", 0.1))
    return (2.0 - friction) / friction


def unavailable(note: str) -> BiasEstimate:
    nan = math.nan
    return BiasEstimate(nan, nan, nan, nan, False, note)


def heating_estimate(stats: xr.Dataset, attrs: dict) -> BiasEstimate:
    """Δλ̂ from the ``laplacian`` and ``grad_noise`` records of ``stats`` (healthy chains only,
    dims chain, draw) and the run's ``step_size``, ``kernel`` and ``kernel_params`` attrs."""
    kernel = str(attrs.get("kernel", ""))
    if kernel in EXACT_KERNELS:
        note = f"{kernel} is Metropolis-corrected: it samples the posterior without step bias"
        return BiasEstimate(0.0, 0.0, 0.0, 0.0, True, note, exact_kernel=True)
    missing = [f for f in BIAS_FIELDS if f not in stats]
    if missing:
        return unavailable(
            f"the result has no sample_stats {'/'.join(missing)} (a torch run or a result written "
            "before slt_ppl recorded them)"
        )
    try:
        eps = float(attrs["step_size"])
    except (KeyError, TypeError, ValueError):
        return unavailable("the result has no numeric attrs['step_size']")
    factor = noise_factor(kernel, attrs.get("kernel_params"))
    lap, noise = stats["laplacian"], stats["grad_noise"]
    both = np.isfinite(lap) & np.isfinite(noise)
    diag_draws = both.any("chain")
    if int(diag_draws.sum()) < 2:
        return unavailable("fewer than two diagnostic draws carry laplacian/grad_noise records")
    lap = lap.sel(draw=diag_draws).where(both.sel(draw=diag_draws))
    noise = noise.sel(draw=diag_draws).where(both.sel(draw=diag_draws))
    term = (eps / 8.0) * (lap + factor * noise)
    disc = (eps / 8.0) * float(lap.mean())
    mini = (eps / 8.0) * factor * float(noise.mean())
    se = honest_se(term.fillna(term.mean()))
    note = (
        f"(ε/8)·E[laplacian] + {factor:.3g}·(ε/8)·E[grad_noise] over {int(diag_draws.sum())} "
        f"diagnostic draws, ε = {eps:.3g}"
    )
    return BiasEstimate(disc + mini, disc, mini, se, True, note)


def bias_check(
    estimate: BiasEstimate, llc: float, llc_se: float, share: float = 1.0
) -> tuple[float, bool, str]:
    """(value, passed, detail) of the verdict's ``bias`` check (module docstring): passes when
    ``share``·|Δλ̂| ≤ max(2·se, 5 %·|λ̂|); share 0.5 = what halving ε removes.

    Not available (no records) fails the check for stochastic-gradient kernels: absent evidence
    is not evidence of health, and those kernels are the ones that heat. Exact kernels pass with
    Δλ̂ = 0.
    """
    if not estimate.available:
        return (
            math.nan,
            False,
            f"not available: {estimate.note}; the step's heating of λ̂ is unmeasured (rerun at "
            "ε/2 and compare, or use the JAX sampler, which records it)",
        )
    if estimate.exact_kernel:
        return 0.0, True, estimate.note
    part = share * abs(estimate.total)
    limit = max(SE_MULTIPLE * llc_se, RELATIVE_TOLERANCE * abs(llc))
    ok = bool(np.isfinite(part) and part <= limit)
    what = {0.5: "halving ε would move λ̂ by", 1.0: "the step heats λ̂ by"}.get(
        share, f"{share:g}·|Δλ̂| ="
    )
    detail = (
        f"{what} ≈ {part:.3g} (Δλ̂ = {estimate.total:.3g} ± "
        f"{estimate.se:.2g}: discretization {estimate.discretization:.3g}, minibatch "
        f"{estimate.minibatch:.3g}); limit max({SE_MULTIPLE:g}·se, "
        f"{RELATIVE_TOLERANCE:.0%}·|λ̂|) = {limit:.3g}"
    )
    if not ok:
        detail += ": decrease the step size"
    return part, ok, detail
