"""``slt_ppl.sample``: run chains on a :class:`LocalPosterior` and return an xarray DataTree."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError
from slt_ppl.kernels import FULL_BATCH_KERNELS, KERNEL_NAMES, NUMPYRO_KERNELS, Kernel, get_kernel
from slt_ppl.posterior import LocalPosterior
from slt_ppl.sampling.loop import DrawRecord, SegmentRunner
from slt_ppl.sampling.result import build_result
from slt_ppl.sampling.stepsize import tune_step_size

DEFAULT_BATCH_SIZE = 256


def sample(
    posterior: LocalPosterior,
    kernel: str | Kernel = "sgld",
    step_size: float | str | None = "auto",
    batch_size: int | None = None,
    num_chains: int = 4,
    num_draws: int = 1000,
    num_burnin: int | None = None,
    thin: int = 1,
    seed: int = 0,
    *,
    diag_every: int = 20,
    keep_draws: bool = False,
    shared_batches: bool = True,
    init_jitter: float = 0.0,
    explode: float = 1e3,
    progress: bool = True,
    num_segments: int = 20,
    kernel_options: dict[str, Any] | None = None,
    devices: Any = None,
    stream_to: str | os.PathLike | None = None,
) -> xr.DataTree:
    """Sample the local posterior with ``num_chains`` chains in one compiled loop.

    Args:
        posterior: from :func:`slt_ppl.localize`.
        kernel: "sgld" (default), "rmsprop_sgld", "sghmc", "sgnht" (stochastic gradient), "mala"
            (full batch, Metropolis-corrected), "hmc"/"nuts" (NumPyro's kernels, full batch), or a
            :class:`~slt_ppl.kernels.Kernel`.
        step_size: ε in the Langevin convention w ← w − (ε/2)∇U + √ε ξ; "auto"/None (default) tunes it
            so the MALA-acceptance diagnostic lands in 0.90–0.95 (see ``sampling.stepsize``).
        batch_size: minibatch size for SG kernels, default min(n, 256); indices are drawn with
            replacement on the device.
        num_chains, num_draws: chains and recorded draws per chain.
        num_burnin: steps discarded before the first recorded draw (still recorded in the
            ``warmup_sample_stats`` group); default = num_draws·thin, i.e. half the run.
        thin: steps per recorded draw.
        seed: chain i uses keys derived from (seed, i) only.
        diag_every: compute the MALA-acceptance diagnostic every this many draws (Furman & Lau use ~20).
        keep_draws: also keep parameter draws (group ``posterior``; memory C·D·d).
        shared_batches: all chains see the same minibatch at a step (one gather) or independent ones.
        init_jitter: chains start at w* + init_jitter·N(0, I) (default exactly at w*).
        explode: a chain whose L_B − L_B(w*) exceeds explode·(1 + |L_B(w*)|) counts as diverged.
        progress: show a progress bar (segment by segment; nothing syncs inside a segment).
        kernel_options: passed to the kernel builder (e.g. ``{"friction": 0.2}``).
        devices: shard the chains over devices (``sampling.sharding``): None (default) uses all
            devices of the default backend when there are several, an int the first k, a list those
            devices, False none. Draws are the same as unsharded for the same seed.
        stream_to: a path: parameter draws (burn-in included) and the per-draw statistics are
            appended there segment by segment (``sampling.stream``, NetCDF4) instead of being held
            in memory; the returned tree then has no ``posterior`` group and names the file in
            attrs["draws_file"].

    Returns:
        ``xr.DataTree`` with groups ``sample_stats`` and ``warmup_sample_stats`` (dims chain, draw:
        loss, loss_center, acceptance, grad_norm, distance; diverged_at per chain) and, if kept,
        ``posterior`` (one variable per site, constrained values); attrs carry n, nβ, γ, ε, kernel,
        seed, backend and versions.
    """
    _check_settings(posterior, kernel, batch_size, num_chains, num_draws, num_burnin, thin, diag_every)
    if num_burnin is None:
        num_burnin = num_draws * thin
    if isinstance(kernel, str) and kernel in NUMPYRO_KERNELS:
        from slt_ppl.sampling.numpyro_mcmc import sample_numpyro

        return sample_numpyro(
            posterior, kernel, step_size, num_chains, num_draws, num_burnin, thin, seed,
            keep_draws=keep_draws, progress=progress, kernel_options=kernel_options or {},
        )  # fmt: skip
    kern = get_kernel(kernel, **(kernel_options or {}))
    batch = posterior.n if kern.full_batch else min(posterior.n, batch_size or DEFAULT_BATCH_SIZE)
    from slt_ppl.sampling import sharding

    shard_devices = sharding.resolve_devices(devices, num_chains)
    mesh = sharding.chain_mesh(shard_devices) if shard_devices else None
    record_draws = keep_draws or stream_to is not None
    runner = SegmentRunner(
        posterior, kern, batch, thin, diag_every, record_draws, shared_batches, float(explode),
        mesh=mesh,
    )  # fmt: skip
    master = jax.random.PRNGKey(seed)
    chain_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(master, 0), i))(
        jnp.arange(num_chains)
    )
    shared_key = jax.random.fold_in(master, 1)
    batch_keys = (
        shared_key
        if shared_batches
        else jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(chain_keys)
    )
    positions = jnp.broadcast_to(posterior.center, (num_chains, posterior.dim))
    if init_jitter > 0:
        noise = jax.vmap(
            lambda k: jax.random.normal(jax.random.fold_in(k, 7), (posterior.dim,))
        )(chain_keys)
        positions = positions + init_jitter * noise
    if mesh is not None:
        chain_keys, positions = sharding.shard_chains((chain_keys, positions), mesh)
        if not shared_batches:
            batch_keys = sharding.shard_chains(batch_keys, mesh)
    state = runner.init(chain_keys, positions)

    tuning: dict[str, Any] = {"method": "user"}
    if step_size is None or step_size == "auto":
        tune_master = jax.random.fold_in(master, 2)
        tune_keys = jax.vmap(lambda k: jax.random.fold_in(tune_master, k))(jnp.arange(num_chains))
        tune_batch = tune_master if shared_batches else tune_keys
        tuner = SegmentRunner(posterior, kern, batch, 1, 1, False, shared_batches, float(explode))
        step_size, tuning = tune_step_size(tuner, state, tune_keys, tune_batch)
    else:
        try:
            step_size = float(step_size)
        except (TypeError, ValueError) as err:
            raise SettingError(f"step_size must be a positive number or 'auto', got {step_size!r}") from err
        if not (math.isfinite(step_size) and step_size > 0):
            raise SettingError(f"step_size must be a positive finite number, got {step_size}")

    num_burnin_draws = math.ceil(num_burnin / thin)
    total = num_burnin_draws + num_draws
    stream = None
    if stream_to is not None:
        from slt_ppl.sampling.stream import DrawStream

        stream = DrawStream(stream_to, posterior, num_chains, num_burnin_draws)
    try:
        records, state, wall = _run_segments(
            runner, state, chain_keys, batch_keys, step_size, total, num_segments, progress,
            stream=stream,
        )  # fmt: skip
    finally:
        if stream is not None:
            stream.close()
    return build_result(
        posterior,
        records,
        num_burnin_draws=num_burnin_draws,
        diverged_at=np.asarray(state.diverged_at),
        attrs={
            "kernel": kern.name,
            "kernel_params": json.dumps(kern.params),
            "step_size": float(step_size),
            "step_size_tuning": json.dumps(tuning),
            "batch_size": int(batch),
            "num_chains": int(num_chains),
            "num_draws": int(num_draws),
            "num_burnin": int(num_burnin_draws * thin),
            "thin": int(thin),
            "diag_every": int(diag_every),
            "shared_batches": int(bool(shared_batches)),
            "init_jitter": float(init_jitter),
            "seed": int(seed),
            "sampling_time_s": float(wall - runner.stats.get("compile_time_s", 0.0)),
            "compile_time_s": float(runner.stats.get("compile_time_s", 0.0)),
            "num_devices": len(shard_devices) if shard_devices else 1,
            **({"draws_file": os.fspath(stream_to)} if stream_to is not None else {}),
        },
        keep_draws=keep_draws and stream is None,
    )


def _run_segments(
    runner: SegmentRunner,
    state: Any,
    chain_keys: jax.Array,
    batch_keys: jax.Array,
    step_size: float,
    total: int,
    num_segments: int,
    progress: bool,
    stream: Any = None,
) -> tuple[dict[str, np.ndarray], Any, float]:
    from tqdm.auto import tqdm

    seg = max(1, math.ceil(total / max(1, num_segments)))
    compiled: dict[int, Any] = {}
    pieces: list[DrawRecord] = []
    start = 0
    t0 = time.perf_counter()
    with tqdm(
        total=total * runner.thin,
        disable=not progress,
        desc=f"{runner.kernel.name} x{chain_keys.shape[0]} chains",
        unit="step",
    ) as bar:
        while start < total:
            length = min(seg, total - start)
            if length not in compiled:
                compiled[length] = runner.build(length)
            state, rec = compiled[length](
                state, chain_keys, batch_keys, jnp.asarray(step_size), start
            )
            piece = jax.device_get(rec)
            if stream is not None:  # hand the draws to disk, keep only the statistics
                stream.append(piece)
                piece = piece._replace(position=np.zeros((*piece.loss.shape, 0), piece.loss.dtype))
            pieces.append(piece)
            start += length
            bar.update(length * runner.thin)
    wall = time.perf_counter() - t0
    records = {
        field: np.concatenate([np.asarray(getattr(p, field)) for p in pieces], axis=1)
        for field in DrawRecord._fields
    }
    return records, state, wall


def _check_settings(
    posterior: LocalPosterior,
    kernel: Any,
    batch_size: int | None,
    num_chains: int,
    num_draws: int,
    num_burnin: int | None,
    thin: int,
    diag_every: int,
) -> None:
    if not isinstance(posterior, LocalPosterior):
        raise SettingError(
            f"sample() needs a LocalPosterior from slt_ppl.localize(...), got {type(posterior).__name__}"
        )
    if isinstance(kernel, str) and kernel not in KERNEL_NAMES:
        raise SettingError(f"unknown kernel {kernel!r}; choose one of {KERNEL_NAMES}")
    for name, value, minimum in [
        ("num_chains", num_chains, 1),
        ("num_draws", num_draws, 1),
        ("thin", thin, 1),
        ("diag_every", diag_every, 1),
    ]:
        if not isinstance(value, int | np.integer) or value < minimum:
            raise SettingError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if num_burnin is not None and (not isinstance(num_burnin, int | np.integer) or num_burnin < 0):
        raise SettingError(f"num_burnin must be a non-negative integer, got {num_burnin!r}")
    if batch_size is not None:
        if not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise SettingError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size > posterior.n:
            raise SettingError(
                f"batch_size = {batch_size} exceeds the number of data points n = {posterior.n}"
            )
    if isinstance(kernel, str) and kernel in FULL_BATCH_KERNELS and batch_size not in (None, posterior.n):
        raise SettingError(f"kernel {kernel!r} is full batch; batch_size must be None or n")
