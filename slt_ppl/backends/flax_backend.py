"""Flax (NNX and Linen) and Equinox adapter: a trained network and a per-sample loss become a
plain-JAX-loss :class:`~slt_ppl.posterior.LocalPosterior`.

The user supplies ``loss_fn(output, batch) -> ℓ``, the per-sample negative log-likelihood of each
row, shape (b,), or per token, shape (b, T); ``output`` is the network applied to the batch's
inputs. The posterior's loss is the mean of every entry,

    L_B(w) = mean_{i ∈ B} ℓ_i(w)          (b rows; (b, T): mean over rows and tokens),

so n counts rows (sequences for token data). The default nβ is n/log n for per-row losses and
T·n/log n for per-token losses (T tokens per row), so that nβ·L_n = β·Σ_rows NLL(row) with
β = 1/log n: the convention of the torch ``nn.Module`` path (docs/observables.md); attrs record
``tokens_per_row`` (0 for per-row losses). The parameters are one
flat vector; each array of the network is one site named by its path in the parameter tree,
components joined by dots: ``"layers.0.attn.query.kernel"`` (NNX attribute / list index paths;
Linen's ``params`` collection without the leading ``"params"``; Equinox field names). These names
are what :func:`slt_ppl.restrict.restrict` and :mod:`slt_ppl.masks` select.

- NNX: ``localize_flax(module, data, loss_fn)``; the center is the module's current
  ``nnx.Param`` values, any other state (batch statistics, RNG counters) stays fixed.
- Linen: ``localize_flax(module, data, loss_fn, variables=variables)`` with ``variables`` the
  dict ``module.init`` (or training) returned; only ``variables["params"]`` is sampled.
- Equinox: ``localize_equinox(module, data, loss_fn)``; the sampled leaves are the module's
  inexact (floating-point) arrays (``eqx.is_inexact_array``). Equinox layers act on one example,
  so the module is ``jax.vmap``-ed over the batch unless ``vmap=False``.

The network is called with ``batch[input_key]`` (or ``*[batch[k] for k in input_key]`` for a tuple
of keys). ``slt_ppl.localize`` detects these modules and forwards ``loss_fn``, ``input_key``,
``variables`` (Linen: or pass them as ``center``) and ``vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from slt_ppl.backends.common import validate_data
from slt_ppl.backends.jax_loss import localize_loss
from slt_ppl.errors import CenterError, ModelError, SettingError
from slt_ppl.posterior import LocalPosterior

PerSampleLoss = Callable[[Any, Mapping[str, jax.Array]], jax.Array]


def localize_flax(
    module: Any,
    data: Mapping[str, Any],
    loss_fn: PerSampleLoss,
    *,
    variables: Mapping[str, Any] | None = None,
    input_key: str | Sequence[str] = "x",
    nbeta: float | None = None,
    gamma: float | str | None = "auto",
) -> LocalPosterior:
    """Local posterior of a Flax NNX module (center: its current parameters) or a Linen module
    (center: ``variables["params"]``); see the module docstring."""
    center, apply = module_parts(module, variables=variables)
    return _localize_parts(
        center, apply, data, loss_fn, input_key, type(module).__name__, nbeta, gamma
    )


def localize_equinox(
    module: Any,
    data: Mapping[str, Any],
    loss_fn: PerSampleLoss,
    *,
    input_key: str | Sequence[str] = "x",
    vmap: bool = True,
    nbeta: float | None = None,
    gamma: float | str | None = "auto",
) -> LocalPosterior:
    """Local posterior of an Equinox module at its current inexact arrays (see the module
    docstring); ``vmap``: apply the module to one row at a time (Equinox's convention)."""
    center, apply = module_parts(module, vmap=vmap)
    return _localize_parts(
        center, apply, data, loss_fn, input_key, type(module).__name__, nbeta, gamma
    )


def module_sites(
    module: Any, variables: Mapping[str, Any] | None = None
) -> dict[str, tuple[int, ...]]:
    """Site name → shape of a Flax or Equinox module's sampled parameters (the names
    :mod:`slt_ppl.masks` and ``restrict_to`` use), without localizing it."""
    center, _ = module_parts(module, variables=variables)
    return {name: tuple(value.shape) for name, value in center.items()}


def module_parts(
    module: Any, *, variables: Mapping[str, Any] | None = None, vmap: bool = True
) -> tuple[dict[str, jax.Array], Callable[..., Any]]:
    """(w* as a dict dotted site name → array in sorted name order, ``apply(params, *inputs)``:
    the network evaluated at such a dict). NNX and Equinox modules carry their parameters; a
    Linen module needs ``variables``."""
    framework = module_framework(module)
    if framework == "equinox":
        tree, apply = _equinox_parts(module, vmap)
    elif framework == "flax" and _is_nnx(module):
        if variables is not None:
            raise SettingError("variables= is for Linen modules; an NNX module carries its own")
        tree, apply = _nnx_parts(module)
    elif framework == "flax":
        if variables is None:
            raise CenterError(
                "a Linen module needs its variables (the dict module.init or training returned): "
                "localize(module, data, center=variables, loss_fn=...)"
            )
        tree, apply = _linen_parts(module, variables)
    else:
        raise SettingError(f"expected a Flax or Equinox module, got {type(module).__name__}")
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    name = type(module).__name__
    if not leaves_with_paths:
        raise ModelError(f"the {name} module has no parameters: there is nothing to sample")
    names = [_site_name(path, framework == "flax") for path, _ in leaves_with_paths]
    if len(set(names)) != len(names):
        raise ModelError(f"parameter paths of {name} collide after joining with dots: {names}")
    center = {n: jnp.asarray(leaf) for n, (_, leaf) in zip(names, leaves_with_paths, strict=True)}

    def apply_flat(params: Mapping[str, jax.Array], *inputs: jax.Array) -> Any:
        return apply(jax.tree_util.tree_unflatten(treedef, [params[n] for n in names]), *inputs)

    return dict(sorted(center.items())), apply_flat


def _equinox_parts(module: Any, vmap: bool) -> tuple[Any, Callable[..., Any]]:
    import equinox as eqx

    params, static = eqx.partition(module, eqx.is_inexact_array)

    def apply(p: Any, *inputs: jax.Array) -> Any:
        model = eqx.combine(p, static)
        return jax.vmap(model)(*inputs) if vmap else model(*inputs)

    return params, apply


def _nnx_parts(module: Any) -> tuple[Any, Callable[..., Any]]:
    from flax import nnx

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply(p: Any, *inputs: jax.Array) -> Any:
        return nnx.merge(graphdef, p, rest)(*inputs)

    return params, apply


def _linen_parts(module: Any, variables: Mapping[str, Any]) -> tuple[Any, Callable[..., Any]]:
    if "params" not in variables:
        raise CenterError(
            f"the Linen variables have collections {sorted(variables)}; expected a 'params' "
            "collection (the dict module.init returns)"
        )
    others = {k: v for k, v in variables.items() if k != "params"}

    def apply(p: Any, *inputs: jax.Array) -> Any:
        return module.apply({"params": p, **others}, *inputs)

    return variables["params"], apply


def _localize_parts(
    center: dict[str, jax.Array],
    apply: Callable[..., Any],
    data: Mapping[str, Any],
    loss_fn: PerSampleLoss,
    input_key: str | Sequence[str],
    name: str,
    nbeta: float | None,
    gamma: float | str | None,
) -> LocalPosterior:
    """The mean of ``loss_fn`` as a plain JAX loss of the flat parameter dict, through
    :func:`~slt_ppl.backends.jax_loss.localize_loss`, with dotted site names."""
    if not callable(loss_fn):
        raise SettingError(
            "loss_fn must be a callable loss_fn(output, batch) -> per-sample losses of shape (b,) "
            f"or (b, T), got {type(loss_fn).__name__}"
        )
    keys = (input_key,) if isinstance(input_key, str) else tuple(input_key)
    missing = [k for k in keys if k not in data]
    if missing:
        raise SettingError(f"input_key {missing} not in the data keys {sorted(data)}")

    def per_sample(params: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> Any:
        losses = jnp.asarray(loss_fn(apply(params, *(batch[k] for k in keys)), batch))
        rows = next(iter(batch.values())).shape[0]
        if losses.ndim not in (1, 2) or losses.shape[0] != rows:
            raise ModelError(
                f"loss_fn(output, batch) must return per-sample losses of shape ({rows},) or "
                f"({rows}, T) for a batch of {rows} rows, got shape {losses.shape}"
            )
        return losses

    def mean_loss(params: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> Any:
        return jnp.mean(per_sample(params, batch))

    mean_loss.__name__ = name
    arrays, n = validate_data(data)
    tokens = _tokens_per_row(per_sample, center, arrays)
    info = {"tokens_per_row": tokens}
    if nbeta is None and tokens:  # the torch nn.Module convention (docs/observables.md)
        nbeta = tokens * n / math.log(n)
        info["nbeta_rule"] = "T*n/log n (n rows of T tokens; docs/observables.md)"
    posterior = localize_loss(mean_loss, arrays, center, nbeta=nbeta, gamma=gamma)
    changes: dict[str, Any] = {
        "sites": {k: tuple(v.shape) for k, v in center.items()},
        "info": {**posterior.info, **info},
    }
    if "per_sample_loss" in LocalPosterior.__dataclass_fields__:  # seam 1, after the merge
        unravel = posterior.unravel
        changes["per_sample_loss"] = lambda w, batch: per_sample(unravel(w), batch)
    return posterior.replace(**changes)


def _tokens_per_row(
    per_sample: Callable[..., Any], center: Mapping[str, jax.Array], data: Mapping[str, Any]
) -> int:
    """T of per-token losses (b, T), 0 for per-row losses (b,), from the output shape on two
    rows (``jax.eval_shape``: nothing is computed)."""
    rows = {k: jnp.asarray(v[:2]) for k, v in data.items()}
    try:
        shape = jax.eval_shape(per_sample, center, rows).shape
    except ModelError:
        raise
    except Exception as err:  # the user's module or loss failed: say which call
        raise ModelError(
            f"loss_fn(module(batch[input_key]), batch) failed on 2 rows with "
            f"{type(err).__name__}: {err}"
        ) from err
    return int(shape[1]) if len(shape) == 2 else 0


def _site_name(path: tuple[Any, ...], strip_value: bool = False) -> str:
    """("layers", 0, "attn", "query", "kernel") → "layers.0.attn.query.kernel" (``strip_value``:
    drop an NNX Variable's trailing ``.value``)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        else:  # FlattenedIndexKey and custom keys
            parts.append(str(getattr(key, "key", key)))
    last_is_attr = isinstance(path[-1], jax.tree_util.GetAttrKey)
    if strip_value and len(parts) > 1 and last_is_attr and parts[-1] == "value":
        parts.pop()
    return ".".join(parts)


def _is_nnx(module: Any) -> bool:
    return any(c.__module__.startswith("flax.nnx") for c in type(module).__mro__)


def module_framework(model: Any) -> str | None:
    """ "flax" for an NNX or Linen module, "equinox" for an Equinox module, else None (checked
    by class ancestry, without importing either library)."""
    modules = [c.__module__ for c in type(model).__mro__]
    if any(m.startswith("flax.") for m in modules):
        return "flax"
    if any(m.startswith("equinox") for m in modules):
        return "equinox"
    return None
