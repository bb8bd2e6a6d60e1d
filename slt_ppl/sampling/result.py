"""The result format shared by every backend: an ``xr.DataTree`` ArviZ reads directly.

Groups (dims ``chain``, ``draw``):
    sample_stats         loss (L_B(w_t), or L_n for full-batch kernels), loss_center (L_B(w*) on the
                         same minibatch), acceptance (MALA diagnostic for SG kernels, Metropolis
                         acceptance for MALA/HMC/NUTS), grad_norm ‖∇U_B(w_t)‖, distance ‖w_t − w*‖,
                         diverged_at (chain; step of the first bad step, −1 if healthy)
    warmup_sample_stats  the same over the burn-in
    posterior            (optional) parameter draws, one variable per site, constrained values
Root attrs: n, nbeta, gamma, dim, backend, model, loss_center_full (L_n(w*)), kernel, step_size, seed,
... and package versions. Dict-valued settings are JSON strings so the tree writes to NetCDF as is.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import jax
import numpy as np
import xarray as xr

from slt_ppl.posterior import LocalPosterior

STAT_FIELDS = ("loss", "loss_center", "acceptance", "grad_norm", "distance")
# heating statistics of SG kernels on diagnostic draws (sampling.loop.heating_statistics); a
# backend that does not record them yet leaves them out and the estimators say so
OPTIONAL_FIELDS = ("laplacian", "grad_noise")


def versions() -> dict[str, str]:
    out = {}
    for pkg in (
        "slt_ppl",
        "jax",
        "numpyro",
        "blackjax",
        "xarray",
        "arviz-stats",
        "torch",
        "pyro-ppl",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def posterior_attrs(posterior: LocalPosterior) -> dict[str, Any]:
    info = {k: v for k, v in posterior.info.items() if isinstance(v, str | int | float)}
    return {
        "n": int(posterior.n),
        "nbeta": float(posterior.nbeta),
        "beta": float(posterior.beta),
        "gamma": float(posterior.gamma),
        "dim": int(posterior.dim),
        "backend": posterior.backend,
        "sites": json.dumps({k: list(v) for k, v in posterior.sites.items()}),
        **info,
    }


def _stats_dataset(records: dict[str, np.ndarray], sl: slice, draw_offset: int) -> xr.Dataset:
    data = {}
    for name in STAT_FIELDS + tuple(f for f in OPTIONAL_FIELDS if f in records):
        arr = np.asarray(records[name])[:, sl]
        data[name] = (("chain", "draw"), arr)
    num_chains, num_draws = data["loss"][1].shape
    return xr.Dataset(
        data,
        coords={"chain": np.arange(num_chains), "draw": draw_offset + np.arange(num_draws)},
    )


def constrained_draws(posterior: LocalPosterior, positions: np.ndarray) -> xr.Dataset:
    """Flat unconstrained draws (C, D, d) → one constrained variable per site with dims
    (chain, draw, <site>_dim_k)."""
    num_chains, num_draws, _ = positions.shape
    flat = positions.reshape(num_chains * num_draws, -1)
    if hasattr(posterior, "constrain_flat"):  # torch posteriors constrain with torch, not JAX
        params = posterior.constrain_flat(flat)
    else:
        params = jax.vmap(lambda w: posterior.constrain(posterior.unravel(w)))(flat)
    if not isinstance(params, dict):  # a plain-loss posterior whose center is an array or pytree
        params = {
            (jax.tree_util.keystr(path) or "w"): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        }
    data = {}
    for name, value in params.items():
        value = np.asarray(value).reshape(num_chains, num_draws, *np.shape(value)[1:])
        dims = ("chain", "draw", *[f"{name}_dim_{k}" for k in range(value.ndim - 2)])
        data[name] = (dims, value)
    return xr.Dataset(data, coords={"chain": np.arange(num_chains), "draw": np.arange(num_draws)})


def build_result(
    posterior: LocalPosterior,
    records: dict[str, np.ndarray],
    *,
    num_burnin_draws: int,
    diverged_at: np.ndarray,
    attrs: dict[str, Any],
    keep_draws: bool,
) -> xr.DataTree:
    """Assemble the DataTree from per-draw records (arrays shaped (chain, total_draws, ...))."""
    warm = _stats_dataset(records, slice(0, num_burnin_draws), 0)
    stats = _stats_dataset(records, slice(num_burnin_draws, None), 0)
    stats["diverged_at"] = ("chain", np.asarray(diverged_at, dtype=np.int64))
    groups: dict[str, xr.Dataset] = {"sample_stats": stats, "warmup_sample_stats": warm}
    if keep_draws:
        positions = np.asarray(records["position"])[:, num_burnin_draws:]
        groups["posterior"] = constrained_draws(posterior, positions)
    tree = xr.DataTree.from_dict(groups)
    tree.attrs.update(posterior_attrs(posterior))
    tree.attrs.update(attrs)
    tree.attrs["versions"] = json.dumps(versions())
    tree.attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    return tree
