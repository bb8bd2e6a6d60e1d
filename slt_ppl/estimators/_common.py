"""Shared plumbing of the sampling-based estimators: pick healthy chains, build the loss
difference."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from slt_ppl.errors import DivergenceError, DivergenceWarning, ResultError

# attrs["temperature_step_rule"] of multi-temperature runs whose chain at factor f steps at ε/f
# (``sampling.temperatures``); attrs["step_size"] is then ε, the step size of factor 1
STEP_RULE = "step_size / factor"

METHODS = ("paired", "unpaired")
TEMPERATURE = "temperature"
FULL_BATCH_KERNELS = ("mala", "hmc", "nuts")


def stats_of(result: xr.DataTree | xr.Dataset) -> tuple[xr.Dataset, dict]:
    """The ``sample_stats`` group and the root attrs of a sampling result."""
    if isinstance(result, xr.DataTree):
        if "sample_stats" not in result.children:
            raise ResultError(
                "result has no 'sample_stats' group; pass the DataTree returned by slt_ppl.sample"
            )
        stats, attrs = result["sample_stats"].to_dataset(), dict(result.attrs)
        _require(stats, attrs)
        return stats, attrs
    raise ResultError(
        f"expected the DataTree returned by slt_ppl.sample, got {type(result).__name__}"
    )


REQUIRED_STATS = ("loss", "loss_center", "diverged_at")
REQUIRED_ATTRS = ("nbeta", "loss_center_full")


def _require(stats: xr.Dataset, attrs: dict) -> None:
    """A result from slt_ppl.sample has these; a hand-made or truncated one may not."""
    missing = [f"sample_stats.{v}" for v in REQUIRED_STATS if v not in stats]
    missing += [f"attrs[{a!r}]" for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise ResultError(
            f"the result lacks {', '.join(missing)}; pass the DataTree returned by slt_ppl.sample "
            "(or read back with xarray.open_datatree) without dropping variables or attrs"
        )
    for a in REQUIRED_ATTRS:
        try:
            float(attrs[a])
        except (TypeError, ValueError) as err:
            raise ResultError(f"result attrs[{a!r}] = {attrs[a]!r} is not a number") from err


def loss_difference(stats: xr.Dataset, attrs: dict, method: str) -> xr.DataArray:
    """Paired: L_B(w_t) − L_B(w*) on the same minibatch (control variate, reference section 6);
    unpaired: L_B(w_t) − L_n(w*) with L_n(w*) on the full data (devinterp's form)."""
    if method == "paired":
        return stats["loss"] - stats["loss_center"]
    if method == "unpaired":
        return stats["loss"] - float(attrs["loss_center_full"])
    raise ResultError(f"method must be one of {METHODS}, got {method!r}")


def healthy_chains(stats: xr.Dataset, warn: bool = True) -> tuple[xr.DataArray, str]:
    """Boolean mask of chains that never diverged, and a sentence naming the dropped ones."""
    diverged_at = stats["diverged_at"]
    ok = diverged_at < 0
    dropped = [
        f"chain {int(c)} diverged at step {int(s)}"
        for c, s in zip(diverged_at["chain"].values, diverged_at.values, strict=True)
        if s >= 0
    ]
    if not bool(ok.any()):
        raise DivergenceError(
            "every chain diverged (" + "; ".join(dropped) + "): decrease the step size, "
            "strengthen the localization gamma, or check that the center is a local minimum"
        )
    note = "; ".join(dropped)
    if dropped and warn:
        warnings.warn(
            f"{len(dropped)} of {ok.size} chains dropped from the estimate: {note}",
            DivergenceWarning,
            stacklevel=3,
        )
    return ok, note


def temperature_slices(stats: xr.Dataset, attrs: dict) -> list[tuple[xr.Dataset, dict]]:
    """One (sample_stats, attrs) pair per temperature factor of a multi-temperature result (seam 3:
    dims temperature, chain, draw; coordinate temperature = the factors; attrs nbeta = base nβ),
    each with attrs ``nbeta`` = base nβ·factor and ``temperature_factor`` set, and ``step_size`` =
    the temperature's own ε/factor when the run stepped so (``sampling.temperatures.STEP_RULE``;
    earlier results used one ε for every temperature)."""
    factors = np.asarray(stats[TEMPERATURE].values, np.float64)
    if factors.ndim != 1 or not np.all(np.isfinite(factors) & (factors > 0)):
        raise ResultError(
            f"the result's temperature coordinate must hold positive finite factors, got {factors}"
        )
    base = float(attrs["nbeta"])
    per_temperature = attrs.get("temperature_step_rule") == STEP_RULE and "step_size" in attrs

    def attrs_at(f: float) -> dict:
        out = {**attrs, "nbeta": base * f, "temperature_factor": f}
        if per_temperature:
            out["step_size"] = float(attrs["step_size"]) / f
        return out

    return [(stats.isel({TEMPERATURE: i}), attrs_at(f)) for i, f in enumerate(factors)]


def is_minibatch(attrs: dict) -> bool:
    """Whether the loss trace carries minibatch noise: a stochastic-gradient kernel with
    batch_size < n that recorded the paired minibatch loss (attrs ``loss_trace`` "minibatch" or
    absent; "full": the full-data loss, ``sampling.defaults.choose_full_loss``); results without
    ``batch_size`` count as minibatch runs."""
    if str(attrs.get("kernel", "")) in FULL_BATCH_KERNELS or attrs.get("loss_trace") == "full":
        return False
    try:
        return int(attrs["batch_size"]) < int(attrs["n"])
    except (KeyError, TypeError, ValueError):
        return True


def per_chain_mean(x: xr.DataArray) -> xr.DataArray:
    return x.mean("draw", skipna=False)


def finite_or_nan(value: float) -> float:
    return float(value) if np.isfinite(value) else float("nan")
