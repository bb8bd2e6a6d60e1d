"""LLC from runs at several temperatures (Watanabe 2013, JMLR 14:867; reference section 1):

    λ̂₂ = (E_β₁[n·L_n] − E_β₂[n·L_n]) / (1/β₁ − 1/β₂).

E_β[n·L_n] = n·L_n(w0) + λ/β + O(1) terms that do not depend on β to leading order, so the
difference cancels the O(1) term that biases the single-temperature λ̂ = nβ·(E_β[L_n] − L_n(w*))
below λ at singular centers (reference section 8: y = w1·w2²·x, 0.18–0.23 single vs 0.227–0.237
two-temperature for λ = 1/4).

A result of ``sample(posterior, ..., temperatures=(f_1, f_2, ...))`` (seam 3) holds chains at
nβ_i = nβ·f_i with the same γ; with m_i the mean paired loss difference L_B(w) − L_B(w*) at
temperature i and x_i = 1/f_i, 1/β_i = (n/nβ)·x_i and the formula is

    λ̂₂ = nβ·(m_1 − m_2)/(x_1 − x_2)  (two temperatures),

and with more temperatures the least-squares slope of nβ·m_i on x_i (which reduces to the above for
two): λ̂₂ = nβ·Σ_i a_i·m_i, a_i = (x_i − x̄)/Σ_j (x_j − x̄)².

Standard error. The temperatures run in one program and, with shared minibatches, see the same
batch at the same step, so m_1 and m_2 are positively correlated and treating them as independent
would overstate the se (or, with common random numbers, misstate it either way). The combination
is therefore formed draw by draw before any averaging over time, D_{c,t} = nβ·Σ_i a_i·y_{i,c,t}
(chain c at every temperature; chains that diverged at any temperature are left out), and its
standard error is ``error_bars.honest_se`` of D: the batch means of the chain-averaged D see every
correlation between temperatures and chains at equal or nearby steps.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from slt_ppl.diagnostics import HealthThresholds
from slt_ppl.errors import DivergenceError
from slt_ppl.estimators._common import TEMPERATURE, loss_difference, temperature_slices
from slt_ppl.estimators.error_bars import honest_se
from slt_ppl.estimators.llc import estimate_llc

PER_TEMPERATURE = ("llc", "llc_se", "rhat", "ess", "acceptance", "llc_bias_estimate")


def slope_weights(factors: np.ndarray) -> np.ndarray:
    """a_i with Σ a_i·nβ·m_i the least-squares slope of nβ·m_i on x_i = 1/f_i (module docstring)."""
    x = 1.0 / np.asarray(factors, np.float64)
    centered = x - x.mean()
    return centered / np.sum(centered**2)


def two_temperature_trace(stats: xr.Dataset, attrs: dict, method: str) -> xr.DataArray:
    """D_{c,t} = nβ·Σ_i a_i·(loss difference at temperature i)_{c,t} over the chains healthy at
    every temperature (dims chain, draw)."""
    factors = stats[TEMPERATURE].values
    weights = xr.DataArray(slope_weights(factors), dims=TEMPERATURE)
    diff = loss_difference(stats, attrs, method)
    healthy = (stats["diverged_at"] < 0).all(TEMPERATURE)
    if not bool(healthy.any()):
        raise DivergenceError(
            "no chain stayed finite at every temperature: the two-temperature estimate needs at "
            "least one chain index that is healthy at all of them; decrease the step size"
        )
    return float(attrs["nbeta"]) * (weights * diff.sel(chain=healthy)).sum(TEMPERATURE)


def temperature_llc(
    stats: xr.Dataset,
    attrs: dict,
    method: str = "paired",
    thresholds: HealthThresholds | None = None,
    warn: bool = True,
) -> xr.Dataset:
    """``slt_ppl.llc`` of a multi-temperature result: the single-temperature estimate at the first
    factor (``llc``, ``llc_se`` and its checks), per-temperature values (dim temperature), and
    ``llc_two_temperature`` ± ``llc_two_temperature_se`` with its first-order heating
    ``llc_two_temperature_bias_estimate`` = Σ_i a_i·Δλ̂_i/f_i. attrs ``healthy`` is 1 only when
    every temperature is healthy (the two-temperature value uses them all)."""
    factors = np.asarray(stats[TEMPERATURE].values, np.float64)
    parts = [
        estimate_llc(s, a, method, thresholds, warn) for s, a in temperature_slices(stats, attrs)
    ]
    coord = {TEMPERATURE: factors}
    ds = parts[0].copy()
    for name in PER_TEMPERATURE:
        values = np.asarray([float(p[name]) for p in parts])
        ds[f"{name}_per_temperature"] = xr.DataArray(values, dims=TEMPERATURE, coords=coord)
    ds["healthy_per_temperature"] = xr.DataArray(
        np.asarray([p.attrs["healthy"] for p in parts]), dims=TEMPERATURE, coords=coord
    )
    if factors.size > 1:  # one factor: nothing to difference
        trace = two_temperature_trace(stats, attrs, method)
        weights = slope_weights(factors)
        bias = np.asarray([float(p["llc_bias_estimate"]) for p in parts]) / factors
        ds["llc_two_temperature"] = float(trace.mean())
        ds["llc_two_temperature_se"] = honest_se(trace)
        ds["llc_two_temperature_bias_estimate"] = float(np.sum(weights * bias))
    ds.attrs["healthy"] = int(all(p.attrs["healthy"] for p in parts))
    if not ds.attrs["healthy"]:
        ds.attrs["verdict"] = "unhealthy - " + "; ".join(
            f"temperature {f:g}: {p.attrs['verdict']}"
            for f, p in zip(factors, parts, strict=True)
            if not p.attrs["healthy"]
        )
    ds.attrs["nbeta"] = float(attrs["nbeta"]) * factors[0]
    ds.attrs["nbeta_base"] = float(attrs["nbeta"])
    ds.attrs["two_temperature_formula"] = (
        "nbeta * sum_i a_i m_i, a_i = least-squares slope weights in 1/factor_i (Watanabe 2013: "
        "(E_b1[n L_n] - E_b2[n L_n]) / (1/b1 - 1/b2) for two temperatures)"
    )
    return ds
