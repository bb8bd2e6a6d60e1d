"""The result format shared by every backend: an ``xr.DataTree`` ArviZ reads directly.

Groups (dims ``chain``, ``draw``):
    sample_stats         loss (L_B(w_t), or L_n for full-batch kernels), loss_center (L_B(w*) on the
                         same minibatch), acceptance (MALA diagnostic for SG kernels, Metropolis
                         acceptance for MALA/HMC/NUTS), grad_norm ‖∇U_B(w_t)‖, distance ‖w_t − w*‖,
                         diverged_at (chain; step of the first bad step, −1 if healthy),
                         and for SG kernels laplacian, grad_noise (heating statistics on
                         diagnostic draws) and tamed (steps of the draw whose drift was clipped,
                         ``kernels.base.tame_drift``)
    warmup_sample_stats  the same over the burn-in
    posterior            (optional) parameter draws, one variable per site, constrained values

Probe sets observed with ``sample(..., observe={name: data}, observe_every=k)`` add to sample_stats

    loss_<name>          (chain, draw, <name>[, <name>_token]) per-row (per-token) NLL ℓ_i(w_t);
                         for k > 1 the draw dim is ``observed_draw``, whose coordinate is the
                         ``draw`` index of each observed draw (0, k, 2k, ...)
    loss_<name>_center   (<name>[, <name>_token]) ℓ_i(w*)

and sample_stats.attrs ``observe_every`` (k) and ``observed`` (JSON {name: shape of ℓ per draw}).
Temperature runs put a ``temperature`` dim first (``sampling.temperatures``).
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
OPTIONAL_FIELDS = ("laplacian", "grad_noise", "tamed")


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
    probes: Any = None,
) -> xr.DataTree:
    """Assemble the DataTree from per-draw records (arrays shaped (chain, total_draws, ...);
    probe losses (chain, observed draws, ...) under ``observe_<name>``)."""
    warm = _stats_dataset(records, slice(0, num_burnin_draws), 0)
    stats = _stats_dataset(records, slice(num_burnin_draws, None), 0)
    stats["diverged_at"] = ("chain", np.asarray(diverged_at, dtype=np.int64))
    if probes is not None:
        add_observations(stats, records, probes)
        attrs = {**attrs, "observe_every": int(probes.every)}
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


def add_observations(stats: xr.Dataset, records: dict[str, np.ndarray], probes: Any) -> None:
    """Put each probe set's losses and their values at w* into ``stats`` (layout: module
    docstring)."""
    from slt_ppl.sampling.observe import record_key

    every = int(probes.every)
    draw_dim = "draw" if every == 1 else "observed_draw"
    for name, shape in probes.shapes.items():
        values = np.asarray(records[record_key(name)])
        item_dims = (name, f"{name}_token")[: len(shape)]
        if every > 1:
            stats.coords["observed_draw"] = every * np.arange(values.shape[1])
        stats[f"loss_{name}"] = (("chain", draw_dim, *item_dims), values)
        stats[f"loss_{name}_center"] = (item_dims, np.asarray(probes.center[name], values.dtype))
        stats.coords[name] = np.arange(shape[0])
    stats.attrs["observe_every"] = every
    stats.attrs["observed"] = json.dumps({n: list(v) for n, v in probes.shapes.items()})


def external_mcmc_result(
    posterior: Any,
    s: Any,
    positions: np.ndarray,
    loss: np.ndarray,
    acceptance: np.ndarray,
    grad_norm: np.ndarray,
    *,
    step_size: float,
    options: dict[str, Any],
    method: str,
    attrs: dict[str, Any],
) -> xr.DataTree:
    """The result of the PPLs' own HMC/NUTS (NumPyro or Pyro; ``s`` the run's ``RunSettings``):
    draws (C, D, d) with L_n, acceptance and ‖∇U‖ at each draw; the first non-finite loss of a
    chain marks it diverged. Shared by ``numpyro_mcmc`` and ``pyro_mcmc``."""
    bad = ~np.isfinite(loss)
    records = {
        "loss": loss,
        "loss_center": np.full_like(loss, posterior.info["loss_center_full"]),
        "acceptance": np.asarray(acceptance, dtype=loss.dtype),
        "grad_norm": grad_norm,
        "distance": np.linalg.norm(positions - _host_center(posterior), axis=-1),
        "position": positions,
    }
    return build_result(
        posterior,
        records,
        num_burnin_draws=0,
        diverged_at=np.where(bad.any(axis=1), bad.argmax(axis=1), -1),
        attrs={
            "kernel": s.kernel,
            "kernel_params": json.dumps({k: str(v) for k, v in options.items()}),
            "step_size": float(step_size),
            "step_size_tuning": json.dumps({"method": method}),
            "batch_size": int(posterior.n),
            "num_chains": int(s.num_chains),
            "num_draws": int(s.num_draws),
            "num_burnin": int(s.burnin_steps),
            "thin": int(s.thin),
            "seed": int(s.seed),
            **attrs,
        },
        keep_draws=s.keep_draws,
    )


def _host_center(posterior: Any) -> np.ndarray:
    center = posterior.center
    return center.detach().cpu().numpy() if hasattr(center, "detach") else np.asarray(center)


def mcmc_options(step_size: Any, kernel_options: dict[str, Any] | None) -> dict[str, Any]:
    """Options of a PPL's HMC/NUTS: a numeric ``step_size`` is fixed (no adaptation)."""
    options = dict(kernel_options or {})
    if step_size not in (None, "auto"):
        options.setdefault("step_size", float(step_size))
        options.setdefault("adapt_step_size", False)
    return options
