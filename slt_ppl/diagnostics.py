"""Chain health: the checks an LLC needs, with ESS / R-hat / se on quantities that reflect mixing.

Checks (each named in the verdict when it fails):
    finite       every chain stayed finite (a diverged chain is named with the step it failed at)
    rhat         split R-hat of the traced quantity ≤ ``max_rhat`` (Vehtari et al. 2021)
    ess          ESS ≥ ``min_ess``
    acceptance   mean MALA-acceptance diagnostic of SG chains ≥ 0.90 (Furman & Lau 2024, App. D target
                 0.90–0.95). Above 0.95 is reported, not failed: the diagnostic is blind to minibatch
                 noise and barely moves in low dimension, so the tuner may cap ε below the band for
                 accuracy (see ``sampling.stepsize``). MALA/HMC/NUTS: real acceptance ≥ 0.4
    trend        no drift after burn-in: the means of the first and last thirds of the pooled trace
                 differ by less than ``trend_z`` combined standard errors (a slow rise means λ̂ is
                 underestimated)
    bias         (when a bias estimate is passed) the first-order heating of λ̂ by the step is
                 below max(2·se, 5 %·|λ̂|) (``estimators.bias``; so halving ε would move λ̂ by
                 less than half that); fails when the estimate is unavailable for a
                 stochastic-gradient kernel
    tamed        (SG kernels) at most ``max_tamed_fraction`` of the sampling steps clipped their drift
                 (``kernels.base.tame_drift``: where the step is too large for the curvature the
                 chain reached, the Euler step would overshoot and, repeated, explode)
    relaxation   (when the result records ‖w − w*‖) the run was long enough for the directions that
                 only the localization holds (precision γ) to leave w*: fails when the theory says
                 they are still relaxing (:func:`relaxation_deficit` > 5 %) *and* the draws show it
                 (the trend of ‖w_t − w*‖² exceeds ``trend_z`` se). See :func:`relaxation_check`.

Which quantity (``estimators.error_bars``): ESS and R-hat are those of the slow signal of the loss
trace, from its block means (``signal_ess_rhat``). For minibatch traces L_B(w_t) − L_B(w*) the
minibatch noise is white and hides slow mixing (ESS 2102 where the full-data loss of the same draws
had 89); for the full-data loss (full-batch kernels, and tiny models, attrs ``loss_trace`` "full",
``sampling.defaults.choose_full_loss``) the fast fluctuation across a singular model's valleys does
the same (``mixing``; session 12). Standard errors
are ``honest_se`` = max(ArviZ MCSE, overlapping batch means of the chain-averaged trace,
replicated batch means scaled for the correlation between chains, and with ≥ 8 chains the
spread of the chain means).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from slt_ppl.estimators.error_bars import arviz_ess as ess
from slt_ppl.estimators.error_bars import arviz_mcse as mcse
from slt_ppl.estimators.error_bars import arviz_rhat as rhat
from slt_ppl.estimators.error_bars import honest_se, signal_ess_rhat

__all__ = [
    "HealthThresholds",
    "diagnose",
    "ess",
    "health_checks",
    "mcse",
    "relaxation_check",
    "relaxation_deficit",
    "rhat",
    "tamed_check",
    "trend_z",
]

SG_ACCEPTANCE_BAND = (0.90, 0.95)
EXACT_ACCEPTANCE_BAND = (0.40, 0.99)


@dataclass(frozen=True)
class HealthThresholds:
    """Limits of the checks. ``bias_share``: the share of the first-order heating Δλ̂ held to
    max(2·se, 5 %·|λ̂|) by the ``bias`` check. 1.0 (default): the whole heating, so a run biased by
    more than 2 se and 5 % fails; 0.5: only what halving ε would remove (issue 13's minimum rule),
    which passed SGLD at 3× the tuned ε on a d = 10 regression with λ̂ = 5.41 ± 0.14 for λ = 5.00
    (Δλ̂ = 0.43: Δλ̂/2 = 0.22 < 0.27 ≤ Δλ̂).

    ``max_tamed_fraction``: the share of sampling steps that may clip their drift
    (``kernels.base.tame_drift``). A clipped step is one where the Euler step is locally unstable
    (εh ≳ 4 for a typical noise draw). The heating this causes is the ``bias`` check's business
    (its Laplacian records include those regions); this check flags runs that spend a material
    share of their steps there. Measured at tuned ε: at most 1.1·10⁻⁴ over the 40 crossing and
    1-unit tanh runs of the singular suite, every λ̂ within tolerance of its exact value
    (|z| ≤ 2.2; session 9); 10× the tuned ε on x·w1²·w2³: 9.8·10⁻⁴ (the bias check flags that
    run); a quartic at 30× and 50× its ε: 2.6·10⁻³ and 1.4·10⁻². 10⁻⁴ (the first choice) failed
    an accurate run (x·w1·w2³, n = 1000, RMSprop-SGLD: 1.1·10⁻⁴, λ̂ 0.073 ± 0.006 for an exact
    0.067)."""

    max_rhat: float = 1.05
    min_ess: float = 100.0
    trend_z: float = 4.0
    bias_share: float = 1.0
    max_tamed_fraction: float = 1e-3


def trend_z(trace: xr.DataArray) -> float:
    """|mean(last third) − mean(first third)| / √(se₁² + se₂²) over the pooled chains (``honest_se``
    of each third)."""
    num = trace.sizes["draw"]
    if num < 12:
        return float("nan")
    third = num // 3
    first = trace.isel(draw=slice(0, third))
    last = trace.isel(draw=slice(num - third, None))
    se = np.hypot(honest_se(first), honest_se(last))
    diff = float(last.mean() - first.mean())
    return abs(diff) / se if se > 0 else (0.0 if diff == 0 else float("inf"))


RELAXATION_MAX_DEFICIT = 0.05
NO_RELAXATION_KERNELS = ("hmc", "nuts")  # their moves are not ε-sized Langevin steps


def relaxation_deficit(step_size: float, gamma: float, burnin_steps: int, kept_steps: int) -> float:
    """Mean, over the kept steps, of the fraction of its stationary variance that a direction of
    precision γ still lacks in a chain started at w*.

    A Langevin chain w ← w − (ε/2)·h·w + √ε·ξ started at 0 has variance v_t = (1 − a^t)/h·(1+O(εh))
    with a = (1 − εh/2)² ≈ e^{−εh}; the deficit e^{−εht} averaged over t ∈ [b, b + K] is

        D = (e^{−εγb} − e^{−εγ(b+K)}) / (εγK).

    Directions held only by the localization (h ≈ γ, the flat valleys at a singular center) are
    the slowest (``sampling.defaults.auto_thin`` uses the same time 2/(εγ)); a singular direction
    also carries part of λ̂, so D bounds the relative underestimate of that part. 0 when εγ = 0
    cannot be evaluated (NaN)."""
    rate = float(step_size) * float(gamma)
    if not (np.isfinite(rate) and rate > 0 and kept_steps > 0):
        return float("nan")
    b, k = float(burnin_steps), float(kept_steps)
    return float((np.exp(-rate * b) - np.exp(-rate * (b + k))) / (rate * k))


def relaxation_check(
    distance: xr.DataArray | None, attrs: dict, thresholds: HealthThresholds | None = None
) -> tuple[float, bool, str] | None:
    """(value, passed, detail) of the ``relaxation`` check, or None when it does not apply (no
    ``distance`` records; HMC/NUTS).

    Fails when both (i) :func:`relaxation_deficit` of the run (ε from attrs times the
    preconditioner's smallest diagonal ``precond_min`` when recorded (``precond_median`` in results
    written before session 13), γ, burn-in and thin·num_draws steps)
    exceeds 5 % and (ii) ‖w_t − w*‖² still drifts over the kept draws (:func:`trend_z` above
    ``trend_z``). ‖w − w*‖² is dominated by the slow, wide directions (variance 1/γ each against
    1/h for stiff ones), so it shows an unfinished relaxation long after the loss trace looks flat.
    Found on a tiny language model: a 200-step per-head LLC read 3.9 ± 0.4 "healthy" where 2 000
    steps gave 36.4 (ε·γ = 0.01: D = 0.23). Directions that do not enter L_n at all (unused
    parameters) also drift; they cost a false alarm, never a wrong number called healthy.
    """
    kernel = str(attrs.get("kernel", ""))
    if distance is None or kernel in NO_RELAXATION_KERNELS:
        return None
    th = thresholds or HealthThresholds()
    try:
        g = attrs.get("precond_min", attrs.get("precond_median", 1.0))
        eps = float(attrs["step_size"]) * float(g)
        gamma = float(attrs["gamma"])
        thin = int(attrs.get("thin", 1))
        burnin, kept = int(attrs.get("num_burnin", 0)), thin * int(distance.sizes["draw"])
    except (KeyError, TypeError, ValueError):
        return None
    deficit = relaxation_deficit(eps, gamma, burnin, kept)
    z = trend_z(distance**2)
    tau = 2.0 / (eps * gamma) if eps * gamma > 0 else float("inf")
    short = bool(np.isfinite(deficit) and deficit > RELAXATION_MAX_DEFICIT)
    drifting = bool(not np.isfinite(z) or z > th.trend_z)
    failed = short and drifting
    detail = (
        f"run {burnin} burn-in + {kept} kept steps against the slowest relaxation 2/(εγ) = "
        f"{tau:.3g} steps: deficit {deficit:.3f} (max {RELAXATION_MAX_DEFICIT}); "
        f"‖w − w*‖² trend {z:.1f} se (max {th.trend_z})"
    )
    if failed:
        detail += (
            ": the flat directions were still spreading out, so λ̂ is likely underestimated — "
            "run longer (num_burnin / thin) or leave thin automatic"
        )
    return deficit, not failed, detail


def mixing(trace: xr.DataArray, minibatch: bool) -> tuple[float, float, str]:
    """(ESS, R-hat, what they were computed on): those of the slow signal of the trace, from its
    block means (``error_bars.signal_ess_rhat``), for minibatch and full-data traces alike.

    Why the full-data trace too (session 12): at a singular center its per-draw spread is the
    fast fluctuation across the valleys, fresh at every thinned draw, and it hides a slow mode
    as minibatch noise does. On the crossing y = x·w1·w2 at n = 5000 (defaults, 16 chains, full
    loss trace, 5 seeds) ArviZ's R-hat on the draws read 1.002-1.006 while the se from the chain
    means was 1.1-1.8× the batch-based ones; the block means read 1.010-1.061, highest
    on the two seeds whose chains sat longest in the stiff arms of the valleys (λ̂ 0.410 and
    0.416 for the exact 0.387). Below 2·``SIGNAL_BLOCKS`` draws per chain the blocks are single
    draws, i.e. ArviZ's values on the trace. ``minibatch`` only names the trace."""
    e, r, basis = signal_ess_rhat(trace)
    return e, r, basis if minibatch else basis.replace("loss trace", "full-data loss trace")


def _finite_check(diverged_at: xr.DataArray) -> tuple[float, bool, str]:
    chains, steps = diverged_at["chain"].values, diverged_at.values
    bad = [(c, int(s)) for c, s in zip(chains, steps, strict=True) if s >= 0]
    if not bad:
        return 0, True, "all chains finite"
    return len(bad), False, "diverged chains (chain@step): " + ", ".join(f"{c}@{s}" for c, s in bad)


def _acceptance_check(acceptance: xr.DataArray, kernel: str) -> tuple[float, bool, str]:
    a = float(np.nanmean(acceptance.values))
    band = SG_ACCEPTANCE_BAND if kernel not in ("mala", "hmc", "nuts") else EXACT_ACCEPTANCE_BAND
    if a < band[0]:
        hint = " : decrease the step size"
    elif a > band[1]:
        hint = " : above the band (fine for accuracy; a larger step may save time)"
    else:
        hint = ""
    return a, a >= band[0], f"mean acceptance {a:.3f} (target {band[0]}-{band[1]}){hint}"


def tamed_check(
    tamed: xr.DataArray | None, thin: int, max_fraction: float
) -> tuple[float, bool, str] | None:
    """(fraction, passed, detail) of the ``tamed`` check from the per-draw counts of clipped steps
    (``sample_stats.tamed``, healthy chains; each draw stands for ``thin`` steps); None when the
    run has no such record (kernels that never clip, older results)."""
    if tamed is None or not np.isfinite(tamed.values).any():
        return None
    values = tamed.values[np.isfinite(tamed.values)]
    steps = values.size * max(1, int(thin))
    count = float(values.sum())
    fraction = count / steps
    detail = (
        f"{count:.0f} of {steps:.3g} steps clipped their drift (fraction {fraction:.2g}, max "
        f"{max_fraction:g})"
    )
    if fraction > max_fraction:
        detail += ": the chains reach curvature the step cannot integrate — decrease the step size"
    return fraction, fraction <= max_fraction, detail


def health_checks(
    trace: xr.DataArray,
    acceptance: xr.DataArray | None,
    diverged_at: xr.DataArray,
    kernel: str,
    thresholds: HealthThresholds | None = None,
    *,
    minibatch: bool = False,
    bias: tuple[float, bool, str] | None = None,
    center: tuple[float, bool, str] | None = None,
    relaxation: tuple[float, bool, str] | None = None,
    tamed: tuple[float, bool, str] | None = None,
) -> xr.Dataset:
    """Run every check on ``trace`` (dims chain, draw; healthy chains only) and return a Dataset with
    dim ``check``: value, passed, detail — and attrs ``healthy``, ``verdict`` and ``mixing_on``.

    ``minibatch``: the trace carries minibatch noise (ESS / R-hat of its signal, see ``mixing``);
    ``bias``: (value, passed, detail) of the ``bias`` check (``estimators.bias.bias_check``);
    ``center``: (value, passed, detail) of the ``center`` check (``estimators.llc.center_check``);
    ``relaxation``: (value, passed, detail) of the ``relaxation`` check (:func:`relaxation_check`);
    ``tamed``: (value, passed, detail) of the ``tamed`` check (:func:`tamed_check`)."""
    th = thresholds or HealthThresholds()
    rows = [("finite", *_finite_check(diverged_at))]
    e, r, basis = mixing(trace, minibatch)
    rows.append(("rhat", r, bool(np.isfinite(r) and r <= th.max_rhat),
                 f"R-hat {r:.3f} of the {basis} (max {th.max_rhat})"))  # fmt: skip
    rows.append(
        ("ess", e, bool(e >= th.min_ess), f"ESS {e:.0f} of the {basis} (min {th.min_ess:.0f})")
    )
    if acceptance is not None and np.isfinite(acceptance.values).any():
        rows.append(("acceptance", *_acceptance_check(acceptance, kernel)))
    z = trend_z(trace)
    rows.append(("trend", z, bool(np.isfinite(z) and z <= th.trend_z),
                 f"first vs last third differ by {z:.1f} se (max {th.trend_z}); longer burn-in if "
                 "it fails"))  # fmt: skip
    if bias is not None:
        rows.append(("bias", *bias))
    if center is not None:
        rows.append(("center", *center))
    if relaxation is not None:
        rows.append(("relaxation", *relaxation))
    if tamed is not None:
        rows.append(("tamed", *tamed))
    names, values, passed, details = zip(*rows, strict=True)
    ds = xr.Dataset(
        {
            "check_value": ("check", np.asarray(values, float)),
            "check_passed": ("check", np.asarray(passed, bool)),
            "check_detail": ("check", np.asarray(details, dtype=object).astype(str)),
        },
        coords={"check": list(names)},
    )
    failed = [f"{n}: {d}" for n, p, d in zip(names, passed, details, strict=True) if not p]
    ds.attrs["healthy"] = int(not failed)
    ds.attrs["verdict"] = "healthy" if not failed else "unhealthy - " + "; ".join(failed)
    ds.attrs["mixing_on"] = basis
    return ds


def diagnose(result: xr.DataTree, thresholds: HealthThresholds | None = None) -> xr.Dataset:
    """The health checks of :func:`slt_ppl.llc` on a sampling result (paired loss difference,
    healthy chains, bias check included): R-hat ≤ 1.05 and ESS ≥ 100 of block means of the
    trace (rank-normalized split R-hat and bulk ESS, Vehtari et al. 2021), mean MALA-diagnostic
    acceptance ≥ 0.90 (Furman & Lau 2024, App. D), trend z ≤ 4, and the first-order heating
    (ε/8)·(E[tr ∇²(nβL_B)] + c·E[tr Σ_B]) ≤ max(2 se, 5 % of λ̂) (``estimators/bias.py``). With a ``temperature`` dim the checks are computed per
    temperature (dims temperature, check; attrs ``healthy``: all temperatures healthy)."""
    from slt_ppl.estimators._common import TEMPERATURE, stats_of, temperature_slices
    from slt_ppl.estimators.llc import checks_of

    stats, attrs = stats_of(result)
    if TEMPERATURE not in stats.dims:
        return checks_of(stats, attrs, thresholds)
    parts = [checks_of(s, a, thresholds) for s, a in temperature_slices(stats, attrs)]
    out = xr.concat(parts, dim=stats[TEMPERATURE])
    out.attrs["healthy"] = int(all(p.attrs["healthy"] for p in parts))
    out.attrs["verdict"] = "; ".join(
        f"temperature {f:g}: {p.attrs['verdict']}"
        for f, p in zip(stats[TEMPERATURE].values, parts, strict=True)
    )
    return out
