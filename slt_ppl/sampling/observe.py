"""Probe sets observed while sampling (seam 3): ``sample(..., observe={"name": data}, observe_every=k)``.

At every k-th recorded draw after burn-in the per-row (per-token) losses ℓ_i(w_t) of each probe set
are evaluated inside the compiled loop (JAX: a ``lax.cond`` branch of the scanned draw; torch: one
batched evaluation of all chains) and come back as ``sample_stats["loss_<name>"]``. This module
checks the probe sets against the sampling data, converts them to the backend's arrays, builds the
per-row loss function (the posterior's ``per_sample_loss``, else ``loss_fn`` on one-row batches,
vmapped) and evaluates it once at w* (``loss_<name>_center``). Which draws are observed:

    draw i (global index, burn-in included) with i ≥ b and (i − b) mod k = 0,   b = burn-in draws,

so the kept sample draws are 0, k, 2k, ... of the ``draw`` dim. Host records carry the observed
draws only, under the key ``observe_<name>`` with shape (chain, observed draws, rows[, tokens]).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from slt_ppl.errors import DataError, ModelError, SettingError

RECORD_PREFIX = "observe_"
NEVER = 2**31 - 1  # observe_from of runs that observe nothing (the tuner's probes)


@dataclass(frozen=True)
class Probes:
    """Checked probe sets of one run.

    every: k, observe every k-th recorded sample draw.
    sets: name → dict of backend arrays (rows on the leading axis), keys as the sampling data's.
    shapes: name → shape of ℓ per draw and chain, (rows,) or (rows, tokens).
    center: name → ℓ(w*) as a NumPy array of that shape.
    digests: name → SHA-1 of the probe arrays (checkpoints must see the same probes).
    """

    every: int
    sets: dict[str, dict[str, Any]]
    shapes: dict[str, tuple[int, ...]]
    center: dict[str, np.ndarray]
    digests: dict[str, str]

    def settings(self) -> dict[str, Any]:
        """What a checkpoint must match: k, and every probe's shape and content digest."""
        return {
            "every": self.every,
            "sets": {n: [list(self.shapes[n]), self.digests[n]] for n in self.sets},
        }

    def observed(self, start: int, length: int, observe_from: int) -> np.ndarray:
        """Local indices j in [0, length) of the observed draws among global draws start + j."""
        i = start + np.arange(length)
        return np.flatnonzero((i >= observe_from) & ((i - observe_from) % self.every == 0))


def check_observe(observe: Any, every: Any, data: Mapping[str, Any]) -> None:
    """Validate ``observe`` and ``observe_every`` against the sampling data (host side, before any
    compilation); the error names the probe set and the key."""
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise SettingError(f"observe_every must be an integer >= 1, got {every!r}")
    if observe is None:
        return
    if not isinstance(observe, Mapping) or not observe:
        raise SettingError(
            "observe must be a non-empty dict {name: probe data dict}, got "
            f"{type(observe).__name__}"
        )
    for name, probe in observe.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SettingError(
                f"observe: probe name {name!r} must be an identifier (it names the variable "
                f"loss_<name> and its dims)"
            )
        _check_probe(name, probe, data)


def _check_probe(name: str, probe: Any, data: Mapping[str, Any]) -> None:
    if not isinstance(probe, Mapping):
        raise DataError(
            f"observe[{name!r}] must be a dict of arrays with the sampling data's keys "
            f"{sorted(data)}, got {type(probe).__name__}"
        )
    missing, extra = sorted(set(data) - set(probe)), sorted(set(probe) - set(data))
    if missing or extra:
        raise DataError(
            f"observe[{name!r}] keys {sorted(probe)} do not match the sampling data's "
            f"{sorted(data)} (missing {missing}, unknown {extra})"
        )
    rows = None
    for key in data:
        value = _host(probe[key])
        want = tuple(_host_shape(data[key])[1:])
        if value.ndim < 1 or tuple(value.shape[1:]) != want:
            raise DataError(
                f"observe[{name!r}][{key!r}] has shape {tuple(value.shape)}; rows of the "
                f"sampling data's {key!r} have shape {want}, so it needs shape (rows, *{want})"
            )
        if rows is not None and value.shape[0] != rows:
            raise DataError(
                f"observe[{name!r}]: {key!r} has {value.shape[0]} rows, the other keys {rows}"
            )
        rows = value.shape[0]
        if value.shape[0] < 1:
            raise DataError(f"observe[{name!r}][{key!r}] has no rows")
        if _is_integer(data[key]) and not np.issubdtype(value.dtype, np.integer):
            raise DataError(
                f"observe[{name!r}][{key!r}] has dtype {value.dtype}; the sampling data's "
                f"{key!r} holds integers (e.g. class labels or tokens)"
            )
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise DataError(f"observe[{name!r}][{key!r}] holds non-finite values")


def prepare(posterior: Any, observe: Any, every: int) -> Probes | None:
    """Check the probe sets, put them on the posterior's device and evaluate ℓ at w*."""
    check_observe(observe, every, posterior.data)
    if observe is None:
        return None
    torch_backend = posterior.backend == "pyro"
    sets, shapes, center, digests = {}, {}, {}, {}
    for name, probe in observe.items():
        host = {key: _host(probe[key]) for key in posterior.data}
        sets[name] = (_to_torch if torch_backend else _to_jax)(host, posterior.data)
        digests[name] = _digest({k: _host(v) for k, v in sets[name].items()})  # as sampled
        values = _center_losses(posterior, name, sets[name])
        shapes[name], center[name] = tuple(values.shape), values
    return Probes(int(every), sets, shapes, center, digests)


def row_loss_fn(posterior: Any) -> Callable[[Any, Mapping[str, Any]], Any]:
    """``(w, batch) -> ℓ`` (b,) or (b, T): the posterior's ``per_sample_loss``, else ``loss_fn``
    on one-row batches vmapped over the rows (the rule of seam 1)."""
    if posterior.per_sample_loss is not None:
        return posterior.per_sample_loss
    loss_fn = posterior.loss_fn
    if posterior.backend == "pyro":
        import torch

        def per_row_torch(w: Any, batch: Mapping[str, Any]) -> Any:
            def one(row: Mapping[str, Any]) -> Any:
                return loss_fn(w, {k: v.unsqueeze(0) for k, v in row.items()})

            return torch.func.vmap(one)(dict(batch))

        return per_row_torch
    import jax

    def per_row(w: Any, batch: Mapping[str, Any]) -> Any:
        return jax.vmap(lambda row: loss_fn(w, {k: v[None] for k, v in row.items()}))(dict(batch))

    return per_row


def _center_losses(posterior: Any, name: str, probe: dict[str, Any]) -> np.ndarray:
    """ℓ(w*) on the probe set, checked: shape (rows,) or (rows, tokens), finite."""
    fn = row_loss_fn(posterior)
    rows = int(next(iter(probe.values())).shape[0])
    try:
        if posterior.backend == "pyro":
            import torch

            with torch.no_grad():
                values = fn(posterior.center, probe).detach().cpu().numpy()
        else:
            import jax

            values = np.asarray(jax.jit(fn)(posterior.center, probe))
    except Exception as err:  # user code failing on the probe rows: say which probe set
        raise ModelError(
            f"evaluating the per-sample losses of observe[{name!r}] at the center failed with "
            f"{type(err).__name__}: {err}"
        ) from err
    if values.ndim not in (1, 2) or values.shape[0] != rows:
        raise ModelError(
            f"per-sample losses of observe[{name!r}] have shape {values.shape}; expected "
            f"({rows},) per row or ({rows}, tokens) per token"
        )
    if not np.all(np.isfinite(values)):
        raise ModelError(f"per-sample losses of observe[{name!r}] at the center are not finite")
    return values


def _host(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _host_shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _is_integer(value: Any) -> bool:
    dtype = value.dtype
    if hasattr(dtype, "is_floating_point"):  # torch dtype
        return not dtype.is_floating_point and not dtype.is_complex and str(dtype) != "torch.bool"
    return bool(np.issubdtype(np.dtype(dtype), np.integer))


def _digest(host: dict[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for key in sorted(host):
        h.update(key.encode())
        h.update(np.ascontiguousarray(host[key]).tobytes())
    return h.hexdigest()


def _to_jax(host: dict[str, np.ndarray], data: Mapping[str, Any]) -> dict[str, Any]:
    import jax.numpy as jnp

    return {k: jnp.asarray(v, dtype=data[k].dtype) for k, v in host.items()}


def _to_torch(host: dict[str, np.ndarray], data: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {
        k: torch.as_tensor(v).to(dtype=data[k].dtype, device=data[k].device)
        for k, v in host.items()
    }


def record_key(name: str) -> str:
    """The host-record key of a probe set's losses."""
    return RECORD_PREFIX + name
