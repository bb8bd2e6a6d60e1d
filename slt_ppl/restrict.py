"""Weight restriction: sample only some coordinates of a local posterior, the rest stay at w*.

For a subset S of the coordinates (a layer, an attention head, ...) the restricted posterior is

    p(u) ∝ exp(−nβ·L_n(ι(u)) − (γ/2)·‖u − w*_S‖²),   ι(u) = w* with the coordinates in S set to u,

and its LLC, nβ·(E[L_n(ι(u))] − L_n(w*)), is the *weight-refined* LLC of S (Wang et al. 2024,
"Differentiation and specialization of attention heads via the refined local learning
coefficient", arXiv 2410.02984, eq. 3). :func:`restrict` builds it from any posterior as one
transformation: every callable that takes w (``loss_fn``, ``per_sample_loss``, ``unravel``) is
composed with the embedding ι, ``center`` becomes w*_S, and everything downstream (γ, ε tuning,
thinning, the kernels, the estimators) sees only the d_S sampled coordinates.

Selections name *unconstrained* flat coordinates (the vector the samplers move):

- a ``str``: a regular expression matched with ``re.fullmatch`` against every site name
  (``r"w1"``, ``r"layers\\.0\\..*"``);
- a list / tuple / set of site names: those sites entirely;
- a dict site name → boolean mask of the site's shape (True = sampled), or a Python bool for
  the whole site. A mask needs the site's unconstrained shape to equal its declared shape;
  constrained sites such as a simplex (K values, K − 1 unconstrained coordinates) take names only.

Site names are ``posterior.sites``' keys: NumPyro/Pyro site names, ``nn.Module`` parameter names
("0.weight"), Flax/Equinox parameter paths ("layers.0.attn.query.kernel", see
``backends.flax_backend``), or a plain JAX loss's pytree paths as ``jax.tree_util.keystr`` writes
them ("['w1']", "w" for a bare array).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from slt_ppl.errors import SettingError

Selection = str | list[str] | tuple[str, ...] | set[str] | Mapping[str, Any]

GAMMA_RULE_AUTO = "unit-information: beta*max(1, tr H/d)"


def restrict(posterior: Any, restrict_to: Selection, *, gamma: float | str | None = None) -> Any:
    """The posterior over the coordinates ``restrict_to`` selects (see the module docstring).

    Args:
        posterior: a :class:`~slt_ppl.posterior.LocalPosterior` or
            :class:`~slt_ppl.posterior_torch.TorchLocalPosterior`.
        restrict_to: a regular expression, a list of site names, or a dict site → boolean mask.
        gamma: None keeps the posterior's rule (a user γ stays; an automatic γ is recomputed on the
            sampled coordinates), ``"auto"`` recomputes the unit-information γ = β·max(1, h̄_S),
            h̄_S = tr ∇²_S L_n(w*)/d_S, a number sets γ.

    Returns:
        A posterior of the same class over the sampled coordinates, with ``info`` entries
        ``restricted_to`` (JSON: the selection and the sampled count per site), ``sampled_dim`` and
        ``full_dim``. A selection of every coordinate returns ``posterior`` itself (γ resolved
        first when ``gamma`` is given), so the run is bit for bit the unrestricted one.

    Raises:
        SettingError: unknown site names, a pattern that matches nothing, a mask of the wrong
            shape or dtype, a mask on a constrained site, an empty selection, or a posterior that
            is already restricted.
    """
    if "full_dim" in posterior.info:
        raise SettingError(
            f"the posterior is already restricted ({posterior.info.get('restricted_to')}); "
            "restrict the full posterior instead (one selection, e.g. a union of masks)"
        )
    layout = site_layout(posterior)
    flat_mask, per_site, spec = selection_mask(restrict_to, posterior.sites, layout)
    sampled = np.flatnonzero(flat_mask)
    full_dim = int(flat_mask.size)
    if sampled.size == full_dim:
        return posterior if gamma is None else _resolve_gamma(posterior, gamma)
    embed = make_embedding(posterior.center, sampled)
    changes: dict[str, Any] = {
        "loss_fn": _compose(posterior.loss_fn, embed),
        "unravel": _compose_unravel(posterior.unravel, embed),
        "center": posterior.center[_index(posterior.center, sampled)],
    }
    if getattr(posterior, "per_sample_loss", None) is not None:
        changes["per_sample_loss"] = _compose(posterior.per_sample_loss, embed)
    info = dict(posterior.info)
    info["restricted_to"] = json.dumps({**spec, "sampled": per_site})
    info["sampled_dim"] = int(sampled.size)
    info["full_dim"] = full_dim
    changes["info"] = info
    restricted = dataclasses.replace(posterior, **changes)
    auto = str(posterior.info.get("gamma_rule", "")).startswith("unit-information")
    if gamma is None and auto:
        gamma = "auto"
    return restricted if gamma is None else _resolve_gamma(restricted, gamma)


def site_layout(posterior: Any) -> dict[str, np.ndarray]:
    """Site name → the flat indices of its unconstrained coordinates, shaped like the site's
    unconstrained value (``posterior.unravel`` applied to 0, 1, ..., d − 1: exact for any order
    in which the backend concatenates the sites)."""
    d = int(posterior.center.shape[0])
    if posterior.backend == "pyro":
        import torch

        tree = posterior.unravel(torch.arange(d, device=posterior.center.device))
    else:
        import jax.numpy as jnp

        tree = posterior.unravel(jnp.arange(d, dtype=jnp.int32))
    if isinstance(tree, Mapping) and set(map(str, tree)) == set(posterior.sites):
        named = {str(k): v for k, v in tree.items()}
    else:  # a plain JAX loss: its pytree paths, named as backends.jax_loss names its sites
        import jax

        named = {
            jax.tree_util.keystr(path) or "w": leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }
    if set(named) != set(posterior.sites):
        raise SettingError(
            f"cannot map the sites {sorted(posterior.sites)} to coordinates: posterior.unravel "
            f"returns {sorted(named)}"
        )
    return {name: _to_numpy(named[name]).astype(np.int64) for name in posterior.sites}


def selection_mask(
    restrict_to: Selection,
    sites: Mapping[str, tuple[int, ...]],
    layout: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, dict[str, int], dict[str, Any]]:
    """(flat boolean mask over the d coordinates, sampled count per selected site, a JSON-able
    description of the selection)."""
    d = sum(int(idx.size) for idx in layout.values())
    flat = np.zeros(d, dtype=bool)
    per_site: dict[str, int] = {}
    for name, mask in _site_masks(restrict_to, sites, layout).items():
        flat[layout[name][mask]] = True
        per_site[name] = int(np.count_nonzero(mask))
    if not flat.any():
        raise SettingError(
            f"restrict_to={_short(restrict_to)} selects no coordinate; sites and shapes: "
            f"{dict(sites)}"
        )
    return flat, per_site, _describe(restrict_to)


def _site_masks(
    restrict_to: Selection,
    sites: Mapping[str, tuple[int, ...]],
    layout: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Selected site → boolean mask over its unconstrained coordinates."""
    if isinstance(restrict_to, str):
        try:
            pattern = re.compile(restrict_to)
        except re.error as err:
            raise SettingError(
                f"restrict_to={restrict_to!r} is not a regular expression: {err}"
            ) from err
        names = [name for name in sites if pattern.fullmatch(name)]
        if not names:
            raise SettingError(
                f"restrict_to={restrict_to!r} (re.fullmatch) matches no site; sites: {list(sites)}"
            )
        return {name: np.ones(layout[name].shape, dtype=bool) for name in names}
    if isinstance(restrict_to, Mapping):
        return {name: _site_mask(name, value, sites, layout) for name, value in restrict_to.items()}
    if isinstance(restrict_to, list | tuple | set | frozenset):
        _check_names(restrict_to, sites)
        return {name: np.ones(layout[name].shape, dtype=bool) for name in restrict_to}
    raise SettingError(
        "restrict_to must be a regular expression (str), a list of site names or a dict site → "
        f"boolean mask, got {type(restrict_to).__name__}"
    )


def _check_names(names: Any, sites: Mapping[str, tuple[int, ...]]) -> None:
    unknown = [name for name in names if name not in sites]
    if unknown:
        raise SettingError(f"restrict_to names unknown site(s) {unknown}; sites: {list(sites)}")


def _site_mask(
    name: str,
    value: Any,
    sites: Mapping[str, tuple[int, ...]],
    layout: Mapping[str, np.ndarray],
) -> np.ndarray:
    _check_names([name], sites)
    shape = tuple(layout[name].shape)
    if isinstance(value, bool | np.bool_):
        return np.full(shape, bool(value))
    if tuple(sites[name]) != shape:
        raise SettingError(
            f"site {name!r} has shape {tuple(sites[name])} but {shape} unconstrained coordinates "
            "(a constrained site, e.g. a simplex): restrict it by name (True), not by a mask"
        )
    mask = _to_numpy(value)
    if mask.dtype != np.bool_:
        raise SettingError(
            f"the mask of site {name!r} has dtype {mask.dtype}; it must be boolean (True = sampled)"
        )
    if mask.shape != shape:
        raise SettingError(
            f"the mask of site {name!r} has shape {mask.shape}, the site has shape {shape}"
        )
    return mask


def make_embedding(center: Any, sampled: np.ndarray) -> Callable[[Any], Any]:
    """ι(u) = w* with the coordinates ``sampled`` replaced by u (also for a batch of u's, last
    axis), as one gather from [u, w*_fixed]: differentiable and batchable by ``jax.vmap`` and
    ``torch.func.vmap`` alike, and computed on the posterior's device."""
    d = int(center.shape[0])
    fixed = np.setdiff1d(np.arange(d), sampled)
    order = np.empty(d, dtype=np.int64)
    order[sampled] = np.arange(sampled.size)
    order[fixed] = sampled.size + np.arange(fixed.size)
    if hasattr(center, "detach"):  # torch
        import torch

        rest = center[torch.as_tensor(fixed, device=center.device)].detach()
        gather = torch.as_tensor(order, device=center.device)

        def embed_torch(u: Any) -> Any:
            parts = (u, rest.expand(*u.shape[:-1], rest.shape[0]))
            return torch.cat(parts, dim=-1).index_select(-1, gather)

        return embed_torch
    import jax.numpy as jnp

    rest_j = center[jnp.asarray(fixed, dtype=jnp.int32)]
    gather_j = jnp.asarray(order, dtype=jnp.int32)

    def embed_jax(u: Any) -> Any:
        both = jnp.concatenate([u, jnp.broadcast_to(rest_j, (*u.shape[:-1], rest_j.shape[0]))], -1)
        return jnp.take(both, gather_j, axis=-1)

    return embed_jax


def _compose(fn: Callable, embed: Callable) -> Callable:
    def restricted(u: Any, batch: Any) -> Any:
        return fn(embed(u), batch)

    return restricted


def _compose_unravel(unravel: Callable, embed: Callable) -> Callable:
    def restricted_unravel(u: Any) -> Any:
        return unravel(embed(u))

    return restricted_unravel


def _resolve_gamma(posterior: Any, gamma: float | str) -> Any:
    """``posterior`` with γ set (a number) or recomputed on its own coordinates ("auto"), its info
    updated as the backends record the rule."""
    info = dict(posterior.info)
    if gamma == "auto":
        if posterior.backend == "pyro":
            from slt_ppl.backends.torch_common import unit_information_gamma
        else:
            from slt_ppl.backends.common import unit_information_gamma
        value, hbar = unit_information_gamma(
            posterior.loss_fn, posterior.center, posterior.data, posterior.n, posterior.nbeta
        )
        info["gamma_rule"] = GAMMA_RULE_AUTO
        info["mean_hessian_diagonal"] = hbar
    else:
        try:
            value = float(gamma)
        except (TypeError, ValueError) as err:
            raise SettingError(f"gamma must be a number or 'auto', got {gamma!r}") from err
        info["gamma_rule"] = "user"
        info.pop("mean_hessian_diagonal", None)
    return posterior.replace(gamma=value, info=info)


def _index(center: Any, sampled: np.ndarray) -> Any:
    if hasattr(center, "detach"):
        import torch

        return torch.as_tensor(sampled, device=center.device)
    return np.asarray(sampled, dtype=np.int32)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    return np.asarray(value)


def _describe(restrict_to: Selection) -> dict[str, Any]:
    if isinstance(restrict_to, str):
        return {"pattern": restrict_to}
    if isinstance(restrict_to, Mapping):
        return {"masks": sorted(restrict_to)}
    return {"sites": sorted(restrict_to)}


def _short(restrict_to: Selection) -> str:
    text = repr(_describe(restrict_to))
    return text if len(text) < 200 else text[:197] + "..."
