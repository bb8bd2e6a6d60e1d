"""Widely applicable Bayesian information criterion (Watanabe 2013, JMLR 14:867):

    WBIC = E_β[n·L_n(w)]  at  β = 1/log n,

which matches the Bayes free energy F_n = n·L_n(w0) + λ·log n − (m−1)·log log n + O_p(1) up to
O_p(√log n). At that temperature λ̂ = (WBIC − n·L_n(w*)) / log n. slt_ppl's posterior is localized, so
this is the local WBIC around w* (the localization replaces the prior); with γ → 0 and a global w* it is
Watanabe's. The expectation uses the same paired/unpaired loss difference as :func:`slt_ppl.llc`.
"""

from __future__ import annotations

import math
import warnings

import xarray as xr

from slt_ppl.diagnostics import HealthThresholds
from slt_ppl.errors import HealthWarning, SLTWarning
from slt_ppl.estimators._common import (
    TEMPERATURE,
    healthy_chains,
    loss_difference,
    per_chain_mean,
    stats_of,
    temperature_slices,
)
from slt_ppl.estimators.error_bars import honest_se
from slt_ppl.estimators.llc import _KEEP, checks_of


def wbic(
    result: xr.DataTree,
    *,
    method: str = "paired",
    thresholds: HealthThresholds | None = None,
    warn: bool = True,
) -> xr.Dataset:
    """WBIC from a sampling result run at nβ = n/log n (a warning says so if it was not).

    WBIC = E_β[n·L_n(w)] at β = 1/log n (Watanabe 2013, JMLR 14:867), estimated as
    n·(L_n(w*) + mean_t[L_B(w_t) − L_B(w*)]) (paired) or n·mean_t[L_B(w_t)] (unpaired), over the
    draws of the localized posterior; λ from WBIC = (WBIC − n·L_n(w*))/log n.

    Returns ``wbic``, ``wbic_se``, ``wbic_per_chain``, ``n_loss_center`` (n·L_n(w*)),
    ``llc_from_wbic`` = (WBIC − n·L_n(w*))/log n, and the health checks of :func:`slt_ppl.llc`.
    A multi-temperature result (a ``temperature`` dim) is read at the temperature whose nβ is
    closest to n/log n (attrs ``temperature_factor``).
    """
    stats, attrs = stats_of(result)
    n = int(attrs["n"])
    wbic_nbeta = n / math.log(n)
    if TEMPERATURE in stats.dims:
        stats, attrs = _closest_temperature(stats, attrs, wbic_nbeta)
    nbeta = float(attrs["nbeta"])
    if warn and not math.isclose(nbeta, wbic_nbeta, rel_tol=1e-6):
        warnings.warn(
            f"WBIC is defined at nβ = n/log n = {wbic_nbeta:.6g}; this run used nβ = {nbeta:.6g}, so "
            "the value is E_β[n L_n] at another temperature, not WBIC",
            SLTWarning,
            2,
        )
    diff = loss_difference(stats, attrs, method)
    ok, dropped = healthy_chains(stats, warn=warn)
    good = diff.sel(chain=ok)
    center = float(attrs["loss_center_full"])
    value = n * (center + float(good.mean()))
    se = n * honest_se(good)
    checks = checks_of(stats, attrs, thresholds)
    ds = xr.Dataset(
        {
            "wbic": value,
            "wbic_se": se,
            "wbic_per_chain": (n * (center + per_chain_mean(diff))).where(ok),
            "n_loss_center": n * center,
            "llc_from_wbic": (value - n * center) / math.log(n),
            **{k: checks[k] for k in ("check_value", "check_passed", "check_detail")},
        }
    )
    ds.attrs.update({k: v for k, v in attrs.items() if k in _KEEP})
    ds.attrs.update(
        {
            "estimator": "wbic",
            "method": method,
            "formula": "E_beta[n L_n(w)] at beta = 1/log n (Watanabe 2013)",
            "at_wbic_temperature": int(math.isclose(nbeta, wbic_nbeta, rel_tol=1e-6)),
            "temperature_factor": float(attrs.get("temperature_factor", 1.0)),
            "chains_used": int(ok.sum()),
            "chains_dropped": dropped or "none",
            "healthy": checks.attrs["healthy"],
            "verdict": checks.attrs["verdict"],
        }
    )
    if warn and not checks.attrs["healthy"]:
        warnings.warn(f"WBIC {value:.6g}: {checks.attrs['verdict']}", HealthWarning, 2)
    return ds


def _closest_temperature(stats: xr.Dataset, attrs: dict, target: float) -> tuple[xr.Dataset, dict]:
    """The temperature slice whose nβ·factor is closest to ``target`` in log scale."""
    slices = temperature_slices(stats, attrs)
    gaps = [abs(math.log(float(a["nbeta"]) / target)) for _, a in slices]
    return slices[gaps.index(min(gaps))]
