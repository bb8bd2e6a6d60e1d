"""Widely applicable Bayesian information criterion (Watanabe 2013, JMLR 14:867):

    WBIC = E_β[n·L_n(w)]  at  β = 1/log n,

which matches the Bayes free energy F_n = n·L_n(w0) + λ·log n − (m−1)·log log n + O_p(1) up to
O_p(√log n). At that temperature λ̂ = (WBIC − n·L_n(w*)) / log n. slt_ppl's posterior is localized, so
this is the local WBIC around w* (the localization replaces the prior); with γ → 0 and a global w* it is
Watanabe's. The expectation uses the same paired/unpaired loss difference as :func:`slt_ppl.llc`.

**Token losses.** Watanabe's n·L_n is the negative log-likelihood of the whole sample,
−Σ_i log p(x_i | w), over n i.i.d. units, and β = 1/log n is in those units. For a per-token loss
(result attr ``tokens_per_row`` = T > 0: an ``nn.Module`` or Flax model whose ``loss_fn`` returns
(b, T)) slt_ppl counts the rows (sequences) as the n units and L_n as the mean per-token NLL
(docs/observables.md, "How n and nβ are counted for token data"): a sequence's NLL is the sum over
its T tokens, so −Σ_i log p(x_i | w) = n·T·L_n. Watanabe's definition in these units reads

    WBIC = E_β[n·T·L_n(w)]  at  β = 1/log n, i.e. the posterior exp(−β·n·T·L_n) = exp(−nβ·L_n)
    with nβ = T·n/log n (the default nβ of token posteriors),

and λ̂ = (WBIC − n·T·L_n(w*)) / log n = nβ·(E[L_n] − L_n(w*)), the LLC of :func:`slt_ppl.llc`.
Per-row losses are the case T = 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import xarray as xr

from slt_ppl.diagnostics import HealthThresholds
from slt_ppl.errors import HealthWarning, ResultError, SLTWarning
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
    """WBIC from a sampling result run at nβ = T·n/log n (a warning says so if it was not).

    WBIC = E_β[n·T·L_n(w)] at β = 1/log n (Watanabe 2013, JMLR 14:867; T = tokens per row of a
    per-token loss, 1 for per-row losses: module docstring), estimated as
    n·T·(L_n(w*) + mean_t[L_B(w_t) − L_B(w*)]) (paired) or n·T·mean_t[L_B(w_t)] (unpaired), over
    the draws of the localized posterior; λ from WBIC = (WBIC − n·T·L_n(w*))/log n.

    Returns ``wbic``, ``wbic_se``, ``wbic_per_chain``, ``n_loss_center`` (n·T·L_n(w*)),
    ``llc_from_wbic`` = (WBIC − n·T·L_n(w*))/log n, and the health checks of :func:`slt_ppl.llc`;
    attrs ``tokens_per_row`` = T. A multi-temperature result (a ``temperature`` dim) is read at the
    temperature whose nβ is closest to T·n/log n (attrs ``temperature_factor``).
    """
    stats, attrs = stats_of(result)
    n = int(attrs["n"])
    tokens = _tokens_per_row(attrs)
    units = n * tokens  # n·T·L_n = the negative log-likelihood of the whole sample
    wbic_nbeta = units / math.log(n)
    if TEMPERATURE in stats.dims:
        stats, attrs = _closest_temperature(stats, attrs, wbic_nbeta)
    nbeta = float(attrs["nbeta"])
    if warn and not math.isclose(nbeta, wbic_nbeta, rel_tol=1e-6):
        warnings.warn(
            f"WBIC is defined at nβ = {'T·' if tokens > 1 else ''}n/log n = {wbic_nbeta:.6g}; this "
            f"run used nβ = {nbeta:.6g}, so the value is E_β[n{'·T' if tokens > 1 else ''}·L_n] "
            "at another temperature, not WBIC",
            SLTWarning,
            2,
        )
    diff = loss_difference(stats, attrs, method)
    ok, dropped = healthy_chains(stats, warn=warn)
    good = diff.sel(chain=ok)
    center = float(attrs["loss_center_full"])
    value = units * (center + float(good.mean()))
    se = units * honest_se(good)
    checks = checks_of(stats, attrs, thresholds)
    ds = xr.Dataset(
        {
            "wbic": value,
            "wbic_se": se,
            "wbic_per_chain": (units * (center + per_chain_mean(diff))).where(ok),
            "n_loss_center": units * center,
            "llc_from_wbic": (value - units * center) / math.log(n),
            **{k: checks[k] for k in ("check_value", "check_passed", "check_detail")},
        }
    )
    ds.attrs.update({k: v for k, v in attrs.items() if k in _KEEP})
    ds.attrs.update(
        {
            "estimator": "wbic",
            "method": method,
            "formula": "E_beta[n T L_n(w)] at beta = 1/log n, T = tokens per row (1: per-row "
            "losses) (Watanabe 2013)",
            "tokens_per_row": tokens,
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


def _tokens_per_row(attrs: Mapping[str, Any]) -> int:
    """T of a per-token loss from the result attrs (0 or absent: per-row losses, T = 1)."""
    raw = attrs.get("tokens_per_row", 0)
    try:
        tokens = int(raw)
    except (TypeError, ValueError):
        raise ResultError(f"result attr tokens_per_row must be an integer, got {raw!r}") from None
    if tokens < 0:
        raise ResultError(f"result attr tokens_per_row must be >= 0, got {tokens}")
    return max(tokens, 1)


def _closest_temperature(stats: xr.Dataset, attrs: dict, target: float) -> tuple[xr.Dataset, dict]:
    """The temperature slice whose nβ·factor is closest to ``target`` in log scale."""
    slices = temperature_slices(stats, attrs)
    gaps = [abs(math.log(float(a["nbeta"]) / target)) for _, a in slices]
    return slices[gaps.index(min(gaps))]
