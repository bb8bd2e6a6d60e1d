"""Several temperatures in one run: chains laid out temperature-major, split into a ``temperature``
dim afterwards.

``sample(posterior, ..., temperatures=(1.0, 2.0))`` runs C chains at every factor f_t, chain c of
temperature t at nβ·f_t with the same γ and center, all in one compiled program (the factors are a
per-chain argument of it, ``SegmentRunner.nbeta_factors``). Chain c uses the same random keys and
minibatches at every temperature (common random numbers): the chains of one index are coupled, so the
per-draw difference of their losses, which the two-temperature estimator averages, is much less noisy
than that of independent chains, and remains an exact Monte Carlo average per temperature.

Step sizes: chain c steps at ε/f_c (``STEP_RULE``, ``sampling.loop.chain_step_size``), ε being the
tuned or given step size. The first-order heating of λ̂_f = nβf·E_f[L_n − L_n(w*)] is
Δλ̂_f = (ε_f/8)·(tr ∇²(nβfL) + ν·tr Σ_B(nβfL)) (``estimators.bias``). At ε_f = ε/f its Laplacian
part, (ε/8)·tr ∇²(nβL), is the same relative heating at every temperature; its minibatch part,
(ε/8)·ν·f·tr Σ_B(nβL), is f times larger relative to λ̂_f (each temperature's verdict and the
user-ε warning check their own), but it shifts E_f[nL_n] by the same (ε/8)·ν·tr Σ_B(nβL)/β at every
f, so it cancels in the two-temperature difference; λ̂₂ keeps the Laplacian part only. With one
ε for all temperatures the tuner kept the coldest chains' heating at its target, which halved ε for
the β chains at factors (1, 2): on the DLN 4-3-3-4 at rank 1 (n = 5000) ε fell from 7.3e-7 to
3.4e-7, and under the step cap λ̂₂ read 16 % low, unmixed (docs/validation.md, session 6). Each
temperature's checks (bias, relaxation) use its own ε_f (``estimators._common.temperature_slices``).

Measured alternative (session 7): one ε for every temperature, tuned on the factor-1 chains only,
keeps the colder chains as fast along the flat directions (no larger step budget needed) and cancels
the Laplacian part instead, but leaves λ̂₂ the minibatch part twice, with the wrong sign: on the DLN
above, seeds 0-2, λ̂₂ 4.96 / 4.94 / 4.67 (the factor-2 chains heated 2-7 %; mean 6 % below the exact
5.17, 3.3 se), against 5.18 / 5.44 / 5.50 with ε/f.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError
from slt_ppl.estimators._common import STEP_RULE

__all__ = ["STEP_RULE", "chain_factors", "check_temperatures", "split_temperatures"]


def check_temperatures(temperatures: Any) -> tuple[float, ...] | None:
    """The factors as floats, or None; a SettingError for anything but distinct positive numbers."""
    if temperatures is None:
        return None
    if isinstance(temperatures, str | bytes) or not isinstance(temperatures, Sequence):
        raise SettingError(
            f"temperatures must be a sequence of nβ factors such as (1.0, 2.0), got {temperatures!r}"
        )
    try:
        factors = tuple(float(t) for t in temperatures)
    except (TypeError, ValueError) as err:
        raise SettingError(f"temperatures must be numbers, got {temperatures!r}") from err
    if len(factors) < 1 or not all(math.isfinite(f) and f > 0 for f in factors):
        raise SettingError(f"temperatures must be positive finite nβ factors, got {temperatures!r}")
    if len(set(factors)) != len(factors):
        raise SettingError(f"temperatures must be distinct, got {temperatures!r}")
    return factors


def chain_factors(factors: tuple[float, ...], num_chains: int) -> np.ndarray:
    """Per-chain nβ factors of the temperature-major layout (T·C,)."""
    return np.repeat(np.asarray(factors, np.float64), num_chains)


def split_temperatures(tree: xr.DataTree, factors: tuple[float, ...]) -> xr.DataTree:
    """Turn the (T·C)-chain result into dims (temperature, chain, ...), coordinate = factors."""
    num_t = len(factors)
    groups = {}
    for name, node in tree.children.items():
        ds = node.to_dataset()
        total = ds.sizes["chain"]
        per = total // num_t
        index = xr.DataArray(
            np.arange(total).reshape(num_t, per),
            dims=("temperature", "chain_"),
        )
        split = ds.drop_vars("chain").isel(chain=index).rename({"chain_": "chain"})
        split = split.assign_coords(temperature=list(factors), chain=np.arange(per))
        groups[name] = split.transpose("temperature", "chain", ...)
    out = xr.DataTree.from_dict(groups)
    out.attrs.update(tree.attrs)
    out.attrs["temperatures"] = json.dumps(list(factors))
    out.attrs["num_chains"] = int(tree.attrs.get("num_chains", 0))
    return out
