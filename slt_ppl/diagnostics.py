"""Chain health: ArviZ's ESS / R-hat / MCSE on the loss trace plus the checks an LLC needs.

Checks (each named in the verdict when it fails):
    finite       every chain stayed finite (a diverged chain is named with the step it failed at)
    rhat         rank-normalized split R-hat of the traced quantity ≤ ``max_rhat`` (Vehtari et al. 2021)
    ess          bulk ESS ≥ ``min_ess``
    acceptance   mean MALA-acceptance diagnostic of SG chains ≥ 0.90 (Furman & Lau 2024, App. D target
                 0.90–0.95). Above 0.95 is reported, not failed: the diagnostic is blind to minibatch
                 noise and barely moves in low dimension, so the tuner may cap ε below the band for
                 accuracy (see ``sampling.stepsize``). MALA/HMC/NUTS: real acceptance ≥ 0.4
    trend        no drift after burn-in: the means of the first and last thirds of the pooled trace
                 differ by less than ``trend_z`` combined MCSEs (a slow rise means λ̂ is underestimated)
"""

from __future__ import annotations

from dataclasses import dataclass

import arviz_stats
import numpy as np
import xarray as xr

SG_ACCEPTANCE_BAND = (0.90, 0.95)
EXACT_ACCEPTANCE_BAND = (0.40, 0.99)


@dataclass(frozen=True)
class HealthThresholds:
    max_rhat: float = 1.05
    min_ess: float = 100.0
    trend_z: float = 4.0


def ess(trace: xr.DataArray) -> float:
    return float(arviz_stats.ess(trace.to_dataset(name="x"), sample_dims=["chain", "draw"])["x"])


def rhat(trace: xr.DataArray) -> float:
    if trace.sizes["chain"] < 2 and trace.sizes["draw"] < 4:
        return float("nan")
    return float(arviz_stats.rhat(trace.to_dataset(name="x"), sample_dims=["chain", "draw"])["x"])


def mcse(trace: xr.DataArray) -> float:
    return float(arviz_stats.mcse(trace.to_dataset(name="x"), sample_dims=["chain", "draw"])["x"])


def trend_z(trace: xr.DataArray) -> float:
    """|mean(last third) − mean(first third)| / √(mcse₁² + mcse₂²) over the pooled chains."""
    num = trace.sizes["draw"]
    if num < 12:
        return float("nan")
    third = num // 3
    first = trace.isel(draw=slice(0, third))
    last = trace.isel(draw=slice(num - third, None))
    se = np.hypot(mcse(first), mcse(last))
    diff = float(last.mean() - first.mean())
    return abs(diff) / se if se > 0 else (0.0 if diff == 0 else float("inf"))


def health_checks(
    trace: xr.DataArray,
    acceptance: xr.DataArray | None,
    diverged_at: xr.DataArray,
    kernel: str,
    thresholds: HealthThresholds | None = None,
) -> xr.Dataset:
    """Run every check on ``trace`` (dims chain, draw; healthy chains only) and return a Dataset with
    dim ``check``: value, passed, detail — and attrs ``healthy`` and ``verdict``."""
    th = thresholds or HealthThresholds()
    names, values, passed, details = [], [], [], []

    def add(name: str, value: float, ok: bool, detail: str) -> None:
        names.append(name)
        values.append(float(value))
        passed.append(bool(ok))
        details.append(detail)

    bad = [
        int(c)
        for c, s in zip(diverged_at["chain"].values, diverged_at.values, strict=True)
        if s >= 0
    ]
    add(
        "finite",
        len(bad),
        not bad,
        "all chains finite"
        if not bad
        else "diverged chains (chain@step): "
        + ", ".join(f"{c}@{int(diverged_at.sel(chain=c))}" for c in bad),
    )
    r = rhat(trace)
    add("rhat", r, bool(np.isfinite(r) and r <= th.max_rhat), f"R-hat {r:.3f} (max {th.max_rhat})")
    e = ess(trace)
    add("ess", e, bool(e >= th.min_ess), f"bulk ESS {e:.0f} (min {th.min_ess:.0f})")
    if acceptance is not None and np.isfinite(acceptance.values).any():
        a = float(np.nanmean(acceptance.values))
        band = (
            SG_ACCEPTANCE_BAND if kernel not in ("mala", "hmc", "nuts") else EXACT_ACCEPTANCE_BAND
        )
        ok = a >= band[0]
        hint = (
            " : decrease the step size"
            if a < band[0]
            else (
                " : above the band (fine for accuracy; a larger step may save time)"
                if a > band[1]
                else ""
            )
        )
        add("acceptance", a, ok, f"mean acceptance {a:.3f} (target {band[0]}-{band[1]}){hint}")
    z = trend_z(trace)
    add(
        "trend",
        z,
        bool(np.isfinite(z) and z <= th.trend_z),
        f"first vs last third differ by {z:.1f} MCSE (max {th.trend_z}); longer burn-in if it fails",
    )
    ds = xr.Dataset(
        {
            "check_value": ("check", np.asarray(values)),
            "check_passed": ("check", np.asarray(passed)),
            "check_detail": ("check", np.asarray(details, dtype=object).astype(str)),
        },
        coords={"check": names},
    )
    failed = [f"{n}: {d}" for n, p, d in zip(names, passed, details, strict=True) if not p]
    ds.attrs["healthy"] = int(not failed)
    ds.attrs["verdict"] = "healthy" if not failed else "unhealthy - " + "; ".join(failed)
    return ds


def diagnose(result: xr.DataTree) -> xr.Dataset:
    """Health checks of a sampling result on its paired loss difference L_B(w_t) − L_B(w*)."""
    stats = result["sample_stats"].to_dataset()
    diff = stats["loss"] - stats["loss_center"]
    healthy = stats["diverged_at"] < 0
    trace = diff.sel(chain=healthy) if bool(healthy.any()) else diff
    acc = stats["acceptance"].sel(chain=healthy) if bool(healthy.any()) else stats["acceptance"]
    return health_checks(trace, acc, stats["diverged_at"], str(result.attrs.get("kernel", "")))
