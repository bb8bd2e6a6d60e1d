"""Plain-JAX adapter: ``loss(params, batch) -> mean per-datum NLL``, for users without a NumPyro
model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_ppl.backends.common import validate_data
from slt_ppl.backends.numpyro_backend import finish_posterior
from slt_ppl.errors import CenterError, ModelError
from slt_ppl.posterior import LocalPosterior


def localize_loss(
    loss: Callable[[Any, Mapping[str, jax.Array]], jax.Array],
    data: Mapping[str, Any],
    center: Any,
    *,
    nbeta: float | None = None,
    gamma: float | str | None = None,
) -> LocalPosterior:
    """Local posterior of a user loss: ``loss(params, batch)`` must return the *mean* per-datum NLL
    L_B over the rows of ``batch`` (same pytree structure as ``center``)."""
    arrays, n = validate_data(data)
    jdata = {k: jnp.asarray(v) for k, v in arrays.items()}
    leaves = jax.tree_util.tree_leaves(center)
    if not leaves:
        raise CenterError(
            "center is empty: pass the parameters w* as an array or a pytree of arrays"
        )
    for path, leaf in jax.tree_util.tree_leaves_with_path(center):
        arr = np.asarray(leaf)
        if arr.dtype.kind != "f":
            raise CenterError(
                f"center leaf {jax.tree_util.keystr(path)} has dtype {arr.dtype}; parameters "
                "must be floats"
            )
        if not np.all(np.isfinite(arr)):
            raise CenterError(f"center leaf {jax.tree_util.keystr(path)} holds non-finite values")
    center = jax.tree_util.tree_map(jnp.asarray, center)
    flat, unravel = ravel_pytree(center)

    def loss_fn(w: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        return jnp.asarray(loss(unravel(w), batch)).reshape(())

    try:
        value = loss(center, {k: v[:2] for k, v in jdata.items()})
    except Exception as err:
        raise ModelError(
            f"calling loss(center, batch) failed: {type(err).__name__}: {err}"
        ) from err
    if np.shape(value) not in ((), (1,)):
        raise ModelError(
            f"loss(params, batch) must return a scalar mean NLL, got shape {np.shape(value)}"
        )
    sites = {
        jax.tree_util.keystr(p) or "w": tuple(np.shape(x))
        for p, x in jax.tree_util.tree_leaves_with_path(center)
    }
    return finish_posterior(
        loss_fn=loss_fn,
        data=jdata,
        n=n,
        center=flat,
        unravel=unravel,
        sites=sites,
        backend="jax",
        constrain=None,
        nbeta=nbeta,
        gamma=gamma,
        info={"model": getattr(loss, "__name__", type(loss).__name__)},
    )
