"""Checks and defaults shared by every backend: data validation, nβ and the default γ."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_ppl.compile_cache import cached_call
from slt_ppl.errors import DataError, SettingError


def validate_data(
    data: Mapping[str, Any], *, framework: str = "jax"
) -> tuple[dict[str, np.ndarray], int]:
    """Check that ``data`` is a non-empty dict of finite arrays with one common leading length n.

    Returns the data as NumPy arrays and n. Integer and boolean arrays are allowed (labels, counts);
    float arrays must be finite everywhere. With ``framework="jax"`` (the NumPyro and JAX backends)
    torch tensors must live on the CPU, and values must fit JAX's default 32-bit types unless
    ``jax_enable_x64`` is on (JAX would otherwise wrap large integers and turn large floats into inf
    silently).
    """
    if not isinstance(data, Mapping) or len(data) == 0:
        raise DataError(
            "data must be a non-empty dict of arrays whose leading axis indexes the n data points, "
            f"got {type(data).__name__}"
        )
    arrays: dict[str, np.ndarray] = {}
    lengths: dict[str, int] = {}
    for name, value in data.items():
        if not isinstance(name, str):
            raise DataError(f"data keys must be strings (model keyword names), got {name!r}")
        if framework == "jax":
            _check_device(value, name)
        arr = _to_numpy(value, name)
        if arr.ndim == 0:
            raise DataError(
                f"data[{name!r}] is a scalar; every data array needs a leading axis of length n "
                "(pass constants to the model through functools.partial instead)"
            )
        if arr.dtype.kind not in "biuf":
            raise DataError(f"data[{name!r}] has dtype {arr.dtype}, expected a numeric array")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise DataError(f"data[{name!r}] holds {bad} non-finite value(s) (NaN or inf)")
        if framework == "jax":
            _check_fits_32_bits(arr, name)
        arrays[name] = arr
        lengths[name] = int(arr.shape[0])
    if len(set(lengths.values())) != 1:
        raise DataError(
            "data arrays must share their leading length n (one row per data point), got "
            + ", ".join(f"{k}: {v}" for k, v in lengths.items())
        )
    n = next(iter(lengths.values()))
    if n < 2:
        raise DataError(f"need at least 2 data points, got n = {n}")
    return arrays, n


def _check_device(value: Any, name: str) -> None:
    """A torch tensor on an accelerator cannot feed the JAX backends: say so instead of copying
    it."""
    device = getattr(value, "device", None)
    kind = getattr(device, "type", None)
    if hasattr(value, "detach") and isinstance(kind, str) and kind != "cpu":
        raise DataError(
            f"data[{name!r}] is a torch tensor on device {device}; the NumPyro/JAX backends take "
            f"host arrays: pass data[{name!r}].cpu().numpy(), or use backend='pyro' for torch "
            "models"
        )


def _check_fits_32_bits(arr: np.ndarray, name: str) -> None:
    if jax.config.jax_enable_x64 or arr.size == 0:
        return
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 4:
        info = np.iinfo(np.int32)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise DataError(
                f"data[{name!r}] ({arr.dtype}) holds values in [{lo}, {hi}] outside int32, JAX's "
                "default integer type; they would wrap around. Rescale them, store them as floats, "
                "or enable 64-bit JAX (jax.config.update('jax_enable_x64', True))"
            )
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        big = float(np.max(np.abs(arr)))
        if big > float(np.finfo(np.float32).max):
            raise DataError(
                f"data[{name!r}] holds values up to {big:.3g}, beyond float32 (JAX's default float "
                "type), where they become inf; rescale them or enable 64-bit JAX"
            )


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # pragma: no cover - exotic array types
        raise DataError(f"data[{name!r}] cannot be converted to an array: {err}") from err


def resolve_nbeta(nbeta: float | None, n: int) -> float:
    """nβ = n/log n unless given (Watanabe 2013)."""
    if nbeta is None:
        return n / math.log(n)
    try:
        nbeta = float(nbeta)
    except (TypeError, ValueError) as err:
        raise SettingError(f"nbeta must be a positive finite number, got {nbeta!r}") from err
    if not (math.isfinite(nbeta) and nbeta > 0):
        raise SettingError(f"nbeta must be a positive finite number, got {nbeta!r}")
    return nbeta


def unit_information_gamma(
    loss_fn: Callable[[jax.Array, Any], jax.Array],
    center: jax.Array,
    data: Mapping[str, jax.Array],
    n: int,
    nbeta: float,
    *,
    num_probes: int = 8,
    max_points: int = 4096,
    seed: int = 0,
) -> tuple[float, float]:
    """Default localization: γ = β·max(1, h̄), h̄ = tr ∇²L_n(w*) / d (Hutchinson estimate).

    The Gaussian localization then weighs as much as one tempered observation of average curvature
    (a unit-information choice, cf. Kass & Wasserman 1995). In a regular direction of curvature h
    it biases λ̂ by about h̄/(2n·h), i.e. O(1/n); in flat (singular) directions it is weak enough
    not to erase them, the failure reference section 6 measured for a fixed γ = 100 (λ = 1/4
    estimated as 0.001). The floor of 1 keeps γ positive where the Hessian vanishes
    (normal-crossing models at w* = 0).

    Returns (γ, h̄). The trace uses at most ``max_points`` data points.
    """
    beta = nbeta / n
    m = min(n, max_points)
    sub = {k: v[:m] for k, v in data.items()}
    d = center.shape[0]

    def quad_form(v: jax.Array, w: jax.Array, batch: Any) -> jax.Array:
        # w* and the data are arguments, not constants XLA would fold at compile time
        hv = jax.jvp(lambda u: jax.grad(loss_fn)(u, batch), (w,), (v,))[1]
        return jnp.vdot(v, hv)

    key = jax.random.PRNGKey(seed)
    probes = jax.random.rademacher(key, (num_probes, d), dtype=center.dtype)
    quad = cached_call(jax.vmap(quad_form, in_axes=(0, None, None)), probes, center, sub)
    hbar = float(jnp.mean(quad)) / d
    if not math.isfinite(hbar):
        hbar = 1.0
    return beta * max(1.0, hbar), hbar


# Subsampling plates and log-density scales (both PPLs). slt_ppl needs the model to score every row
# it is handed, unweighted: L_n(w*), the unpaired estimator, WBIC and the full-batch kernels (MALA,
# NUTS) use all n rows, and the SG kernels minibatch by slicing the data themselves. A plate that
# subsamples would make every one of those a fixed (NumPyro: seed 0) or random (Pyro) subsample
# scaled by size/subsample_size; a scale would multiply L_n, i.e. change the temperature unnoticed.
# Both are rejected rather than undone: the subsample indices may index arrays the data dict does
# not hold (slt_ppl could not tell), and Pyro checks len(subsample) against subsample_size, so the
# full index set cannot be substituted without patching Pyro.


def subsample_error(plate: str, subsample: str, framework: str) -> Exception:
    """The :class:`~slt_ppl.errors.ModelError` for a plate that subsamples its data
    (``subsample`` says how, e.g. "subsample_size=100")."""
    from slt_ppl.errors import ModelError

    call = "numpyro.plate" if framework == "numpyro" else "pyro.plate"
    return ModelError(
        f"{call}({plate!r}, ..., {subsample}) subsamples the data: slt_ppl "
        "evaluates L_n(w*), WBIC and the full-batch kernels on every data point and minibatches "
        "the stochastic-gradient kernels itself (sample(..., batch_size=k)), so a subsampling "
        f"plate would silently replace them by a scaled subsample. Drop subsample_size (and "
        f"subsample=) from plate {plate!r}, keep its size the length of the data passed "
        "(e.g. len(x)), and pass batch_size to slt_ppl.sample instead"
    )


def check_observed_scale(name: str, scale: Any, framework: str) -> None:
    """Raise :class:`~slt_ppl.errors.ModelError` when an observed site's log-density is scaled
    (``handlers.scale`` / ``poutine.scale``, a subsampling plate): L_n must be the plain mean
    per-datum negative log-likelihood (reference section 1)."""
    from slt_ppl.errors import ModelError

    if scale is None:
        return
    values = np.asarray(scale.detach().cpu() if hasattr(scale, "detach") else scale, np.float64)
    if values.size and np.all(values == 1.0):
        return
    handler = "numpyro.handlers.scale" if framework == "numpyro" else "pyro.poutine.scale"
    shown = (
        f"{values.reshape(-1)[0]:.6g}" if values.size == 1 else f"an array of shape {values.shape}"
    )
    raise ModelError(
        f"observed site {name!r} has its log-likelihood scaled by {shown} ({handler} or a "
        "subsampling plate): slt_ppl's L_n is the unweighted mean per-datum negative "
        "log-likelihood, and a scale would multiply it (for a constant c the posterior is then "
        "tempered at nβ·c instead of nβ, and L_n(w*) and WBIC come out c times too large). "
        f"Remove the scale around site {name!r}; to change the temperature pass nbeta= to "
        "slt_ppl.localize; for a weighted loss write it as a plain JAX loss (backend='jax')"
    )
