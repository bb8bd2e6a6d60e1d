"""Parameter distributions for the Monte Carlo integral over Θ in the effective dimensions.

E_θ[·] in Abbas et al. (2021, arXiv 2011.00027) and Datres et al. (2024, arXiv 2401.09184) is an
average over a distribution on parameter space; Abbas et al.'s code draws θ uniformly from a box.
Supported here:

* ``"prior"`` (default): latent sites drawn from the model's prior, through the model itself;
* :class:`Box` (or a bare positive number a): uniform on [-a, a]^d in unconstrained coordinates;
* :class:`Local`: uniform on the box w* + [-r, r]^d around a center w* (a local version of the
  integral);
* an ``xarray.DataTree`` from :func:`slt_ppl.sample` (group ``posterior``, one variable per latent
  site, dims (chain, draw, ...)) or a mapping site -> array with a leading draw axis: those draws
  are used;
* a NumPy array (num_theta, d) of flat unconstrained parameters.

All draws are returned as flat unconstrained vectors (num_theta, d), sites in trace order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from slt_ppl.errors import DataError, ResultError, SettingError


@dataclass(frozen=True)
class Box:
    """Uniform distribution on [-half_width, half_width]^d (unconstrained coordinates)."""

    half_width: float = 1.0


@dataclass(frozen=True)
class Local:
    """Uniform distribution on center + [-radius, radius]^d; center maps site -> constrained
    value."""

    center: Mapping[str, Any]
    radius: float = 0.1


class ModelInfo(Protocol):
    """What a backend adapter tells this module about the model's latent sites."""

    site_names: list[str]
    d: int

    def prior_draws(self, num: int, seed: int) -> np.ndarray:
        """``num`` prior draws as flat unconstrained rows, shape (num, d)."""
        ...

    def to_unconstrained(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Flat unconstrained rows for constrained draws ``{site: (num, *shape)}``."""
        ...


ThetaSpec = str | float | Box | Local | Mapping[str, Any] | np.ndarray | Any


def _thin(flat: np.ndarray, num_theta: int | None) -> np.ndarray:
    if num_theta is None or flat.shape[0] <= num_theta:
        return flat
    idx = np.linspace(0, flat.shape[0] - 1, num_theta).round().astype(int)
    return flat[idx]


def _posterior_mapping(tree: Any, site_names: list[str]) -> dict[str, np.ndarray]:
    try:
        post = tree["posterior"]
    except KeyError as err:
        raise ResultError("the DataTree has no 'posterior' group with parameter draws") from err
    out = {}
    for name in site_names:
        if name not in post:
            raise ResultError(f"the posterior group has no variable for latent site {name!r}")
        da = post[name]
        if hasattr(da, "to_dataarray"):
            da = da.to_dataarray()
        if "chain" not in da.dims or "draw" not in da.dims:
            raise ResultError(f"posterior variable {name!r} lacks dims (chain, draw): {da.dims}")
        stacked = da.transpose("chain", "draw", ...).values
        out[name] = stacked.reshape((-1, *stacked.shape[2:]))
    return out


def draw_theta(
    spec: ThetaSpec,
    info: ModelInfo,
    num_theta: int,
    seed: int,
) -> tuple[np.ndarray, str]:
    """Flat unconstrained draws (num_theta, d) and a one-line description of where they came
    from."""
    if num_theta < 1:
        raise SettingError(f"num_theta must be >= 1, got {num_theta}")
    rng = np.random.default_rng(seed)
    d = info.d
    if isinstance(spec, str):
        if spec != "prior":
            raise SettingError(f"theta={spec!r}: the only named distribution is 'prior'")
        return info.prior_draws(num_theta, seed), "prior"
    if isinstance(spec, bool):
        raise SettingError(
            "theta must be 'prior', a box half-width, Box, Local, draws or a DataTree"
        )
    if isinstance(spec, int | float):
        spec = Box(float(spec))
    if isinstance(spec, Box):
        if not spec.half_width > 0:
            raise SettingError(f"box half-width must be > 0, got {spec.half_width}")
        a = spec.half_width
        return rng.uniform(-a, a, size=(num_theta, d)), f"uniform box [-{a}, {a}]^d"
    if isinstance(spec, Local):
        if not spec.radius > 0:
            raise SettingError(f"local radius must be > 0, got {spec.radius}")
        center = {k: np.asarray(v)[None] for k, v in spec.center.items()}
        w = info.to_unconstrained(center)[0]
        r = spec.radius
        return w + rng.uniform(-r, r, size=(num_theta, d)), f"uniform box of radius {r} around w*"
    if isinstance(spec, np.ndarray):
        if spec.ndim != 2 or spec.shape[1] != d:
            raise DataError(f"flat theta draws must have shape (num_theta, {d}), got {spec.shape}")
        if not np.all(np.isfinite(spec)):
            raise DataError("non-finite values in theta draws")
        return _thin(spec.astype(np.float64), num_theta), "given flat draws"
    if hasattr(spec, "children") and hasattr(spec, "to_dict"):
        values = _posterior_mapping(spec, info.site_names)
        source = "posterior draws of a sampling result"
    elif isinstance(spec, Mapping):
        values = {k: np.asarray(v) for k, v in spec.items()}
        source = "given draws per site"
    else:
        raise SettingError(f"unsupported theta specification of type {type(spec).__name__}")
    flat = info.to_unconstrained(values)
    if not np.all(np.isfinite(flat)):
        raise DataError("non-finite values in theta draws (after the unconstrained transform)")
    return _thin(flat, num_theta), source
