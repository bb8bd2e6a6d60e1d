"""``slt_ppl.sample``: run chains on a :class:`LocalPosterior` and return an xarray DataTree."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError
from slt_ppl.kernels import FULL_BATCH_KERNELS, KERNEL_NAMES, NUMPYRO_KERNELS, Kernel, get_kernel
from slt_ppl.posterior import LocalPosterior
from slt_ppl.preflight import check_step_size
from slt_ppl.sampling.checkpoint import checkpoint_path, load_for_resume
from slt_ppl.sampling.defaults import DEFAULT_BATCH_SIZE, choose_kernel
from slt_ppl.sampling.loop import DrawRecord, SegmentRunner
from slt_ppl.sampling.recovery import run_with_recovery
from slt_ppl.sampling.result import build_result
from slt_ppl.sampling.stepsize import tune_step_size, warn_minibatch_heating
from slt_ppl.sampling.temperatures import chain_factors, check_temperatures, split_temperatures


def sample(
    posterior: LocalPosterior,
    kernel: str | Kernel = "auto",
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
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    retry_on_divergence: int = 0,
    max_diverged_fraction: float = 0.0,
    devices: Any = None,
    stream_to: str | os.PathLike | None = None,
    temperatures: tuple[float, ...] | None = None,
) -> xr.DataTree:
    """Sample the local posterior with ``num_chains`` chains in one compiled loop.

    Args:
        posterior: from :func:`slt_ppl.localize`.
        kernel: "auto" (default: full-batch MALA where n·d is small, SGLD otherwise; see
            ``sampling.defaults``, the choice is in attrs["kernel_choice"]), "sgld", "rmsprop_sgld", "sghmc", "sgnht" (stochastic gradient), "mala"
            (full batch, Metropolis-corrected), "hmc"/"nuts" (NumPyro's kernels, full batch), or a
            :class:`~slt_ppl.kernels.Kernel`.
        step_size: ε in the Langevin convention w ← w − (ε/2)∇U + √ε ξ; "auto"/None (default)
            tunes it so the MALA-acceptance diagnostic lands in 0.90–0.95 (see
            ``sampling.stepsize``). An auto-tuned ε depends on all chains, so chain i's draws are
            independent of ``num_chains`` only for a given numeric ε.
        batch_size: minibatch size for SG kernels, default min(n, 256); indices are drawn with
            replacement on the device.
        num_chains, num_draws: chains and recorded draws per chain.
        num_burnin: steps discarded before the first recorded draw (still recorded in the
            ``warmup_sample_stats`` group); default = num_draws·thin, i.e. half the run.
        thin: steps per recorded draw.
        seed: chain i uses keys derived from (seed, i) only.
        diag_every: compute the MALA-acceptance diagnostic every this many draws (Furman & Lau
            use ~20).
        keep_draws: also keep parameter draws (group ``posterior``; memory C·D·d).
        shared_batches: all chains see the same minibatch at a step (one gather) or independent
            ones.
        init_jitter: chains start at w* + init_jitter·N(0, I) (default exactly at w*).
        explode: a chain whose L_B − L_B(w*) exceeds explode·(1 + |L_B(w*)|) counts as diverged.
        progress: show a progress bar (segment by segment; nothing syncs inside a segment).
        kernel_options: passed to the kernel builder (e.g. ``{"friction": 0.2}``).
        checkpoint: a file (``run.nc``) or directory (``<dir>/checkpoint.nc``) to write the sampler
            state, draws so far, settings and step size to, atomically, every ``checkpoint_every``
            segments and at the end (NetCDF, see ``slt_ppl.sampling.checkpoint``).
        checkpoint_every: segments between checkpoints (``num_segments`` sets the segment count).
        resume: continue from ``checkpoint`` if it exists (a fresh run otherwise): no retuning, and
            the result equals an uninterrupted run with the same settings bit for bit. The settings
            must match the checkpoint's (``SettingError`` names the ones that differ).
        retry_on_divergence: when more than ``max_diverged_fraction`` of the chains diverged, rerun
            from the start with ε halved, at most this many times (attrs ``divergence_retries``,
            ``retry_history``). Default 0: diverged chains are only dropped by the estimators.
        max_diverged_fraction: the fraction of diverged chains tolerated without a retry (default 0:
            any divergence triggers one when retries are allowed).
        devices: shard the chains over devices (``sampling.sharding``): None (default) uses all
            devices of the default backend when there are several, an int the first k, a list those
            devices, False none. Draws are the same as unsharded for the same seed.
        stream_to: a path: parameter draws (burn-in included) and the per-draw statistics are
            appended there segment by segment (``sampling.stream``, NetCDF4) instead of being held
            in memory; the returned tree then has no ``posterior`` group and names the file in
            attrs["draws_file"].
        temperatures: nβ factors, e.g. (1.0, 2.0): ``num_chains`` chains at each nβ·factor (same γ
            and center) in one compiled program, coupled by common random numbers
            (``sampling.temperatures``); the result gains a ``temperature`` dim and
            :func:`slt_ppl.llc` the two-temperature estimate. One step size serves every temperature
            (tuned on all chains together).

    Returns:
        ``xr.DataTree`` with groups ``sample_stats`` and ``warmup_sample_stats`` (dims chain, draw:
        loss, loss_center, acceptance, grad_norm, distance; diverged_at per chain) and, if kept,
        ``posterior`` (one variable per site, constrained values); attrs carry n, nβ, γ, ε, kernel,
        seed, backend and versions.
    """
    kernel, kernel_choice = choose_kernel(posterior, kernel, batch_size)
    if getattr(posterior, "backend", None) == "pyro":  # TorchLocalPosterior: same arguments
        import inspect

        from slt_ppl.sampling.torch_api import sample_torch

        given = dict(locals())
        accepted = inspect.signature(sample_torch).parameters
        unsupported = [
            k
            for k in ("checkpoint", "resume", "retry_on_divergence", "stream_to", "temperatures")
            if given.get(k)
        ]
        if unsupported:
            raise SettingError(
                f"{unsupported} are not supported by the torch backend yet; use the NumPyro/JAX path"
            )
        return sample_torch(**{k: v for k, v in given.items() if k in accepted})
    _check_settings(
        posterior, kernel, batch_size, num_chains, num_draws, num_burnin, thin, diag_every
    )
    _check_reliability_settings(
        checkpoint, checkpoint_every, resume, retry_on_divergence, max_diverged_fraction, kernel
    )
    _check_numbers(seed, init_jitter, explode, num_segments, kernel_options)
    factors = check_temperatures(temperatures)
    if num_burnin is None:
        num_burnin = num_draws * thin
    if factors is not None and isinstance(kernel, str) and kernel in NUMPYRO_KERNELS:
        raise SettingError(
            f"temperatures work with slt_ppl's own kernels, not NumPyro's {kernel!r}; run "
            "posterior.replace(nbeta=...) once per temperature instead"
        )
    per_temperature = num_chains
    if factors is not None:
        num_chains = num_chains * len(factors)
    if isinstance(kernel, str) and kernel in NUMPYRO_KERNELS:
        from slt_ppl.sampling.numpyro_mcmc import sample_numpyro

        return sample_numpyro(
            posterior, kernel, step_size, num_chains, num_draws, num_burnin, thin, seed,
            keep_draws=keep_draws, progress=progress, kernel_options=kernel_options or {},
        )  # fmt: skip
    options = dict(kernel_options or {})
    if kernel == "rmsprop_sgld":
        options.setdefault("freeze_after", num_burnin)
    kern = get_kernel(kernel, **options)
    batch = posterior.n if kern.full_batch else min(posterior.n, batch_size or DEFAULT_BATCH_SIZE)
    from slt_ppl.sampling import sharding

    shard_devices = sharding.resolve_devices(devices, num_chains)
    mesh = sharding.chain_mesh(shard_devices) if shard_devices else None
    record_draws = keep_draws or stream_to is not None
    runner = SegmentRunner(
        posterior, kern, batch, thin, diag_every, record_draws, shared_batches, float(explode),
        mesh=mesh,
        nbeta_factors=None if factors is None else jnp.asarray(chain_factors(factors, per_temperature)),
    )  # fmt: skip
    master = jax.random.PRNGKey(seed)
    # chain c has the same keys at every temperature (common random numbers, sampling.temperatures)
    chain_index = jnp.arange(num_chains) % per_temperature
    chain_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(master, 0), i))(
        chain_index
    )
    shared_key = jax.random.fold_in(master, 1)
    batch_keys = (
        shared_key
        if shared_batches
        else jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(chain_keys)
    )
    positions = jnp.broadcast_to(posterior.center, (num_chains, posterior.dim))
    if init_jitter > 0:
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 7), (posterior.dim,)))(
            chain_keys
        )
        positions = positions + init_jitter * noise
    if mesh is not None:
        chain_keys, positions = sharding.shard_chains((chain_keys, positions), mesh)
        if not shared_batches:
            batch_keys = sharding.shard_chains(batch_keys, mesh)
    state = runner.init(chain_keys, positions)

    num_burnin_draws = math.ceil(num_burnin / thin)
    total = num_burnin_draws + num_draws
    settings = {
        "sample_kwargs": {
            "kernel": kern.name if isinstance(kernel, Kernel) else kernel,
            "step_size": _setting_repr(step_size),
            "batch_size": batch_size, "num_chains": num_chains, "num_draws": num_draws,
            "num_burnin": num_burnin, "thin": thin, "seed": seed, "diag_every": diag_every,
            "keep_draws": keep_draws, "shared_batches": shared_batches,
            "init_jitter": float(init_jitter), "explode": float(explode),
            "num_segments": num_segments, "kernel_options": kernel_options,
            "retry_on_divergence": retry_on_divergence,
            "max_diverged_fraction": float(max_diverged_fraction),
            "temperatures": None if factors is None else list(factors),
        },
        "posterior": {
            "n": posterior.n, "dim": posterior.dim, "nbeta": posterior.nbeta,
            "gamma": posterior.gamma, "backend": posterior.backend,
            "model": str(posterior.info.get("model", "")),
            "loss_center_full": float(posterior.info.get("loss_center_full", math.nan)),
        },
        "kernel_params": kern.params,
        "batch": batch,
        "total_draws": total,
    }  # fmt: skip
    ckpt_file = checkpoint_path(checkpoint) if checkpoint is not None else None
    restored = load_for_resume(ckpt_file, settings) if resume and ckpt_file else None

    tuning: dict[str, Any] = {"method": "user"}
    if restored is not None:
        step_size, tuning = restored.step_size, restored.tuning
    elif step_size is None or step_size == "auto":
        tune_master = jax.random.fold_in(master, 2)
        tune_keys = jax.vmap(lambda k: jax.random.fold_in(tune_master, k))(chain_index)
        tune_batch = tune_master if shared_batches else tune_keys
        if mesh is not None:
            tune_keys = sharding.shard_chains(tune_keys, mesh)
            if not shared_batches:
                tune_batch = sharding.shard_chains(tune_batch, mesh)
        step_size, tuning, tuned_state = tune_step_size(
            runner.for_tuning(), state, tune_keys, tune_batch
        )
        if tuned_state is not None:  # the adaptation windows were burn-in: continue from them
            state = tuned_state
    else:
        try:
            step_size = float(step_size)
        except (TypeError, ValueError) as err:
            raise SettingError(
                f"step_size must be a positive number or 'auto', got {step_size!r}"
            ) from err
        if not (math.isfinite(step_size) and step_size > 0):
            raise SettingError(f"step_size must be a positive finite number, got {step_size}")
        check_step_size(posterior, step_size)

    stream = None
    if stream_to is not None:
        if ckpt_file is not None or retry_on_divergence:
            raise SettingError(
                "stream_to cannot be combined with checkpoint or retry_on_divergence yet: a "
                "resumed or retried run would append its draws to the stream twice"
            )
        from slt_ppl.sampling.stream import DrawStream

        stream = DrawStream(stream_to, posterior, num_chains, num_burnin_draws)
    compile_before = runner.stats.get("compile_time_s", 0.0)
    try:
        records, state, wall, outcome = run_with_recovery(
            functools.partial(_run_segments, stream=stream), runner, state, chain_keys, batch_keys,
            step_size, total, num_segments, progress, settings=settings, tuning=tuning,
            checkpoint_file=ckpt_file, checkpoint_every=checkpoint_every, restored=restored,
            retry_on_divergence=retry_on_divergence, max_diverged_fraction=max_diverged_fraction,
        )  # fmt: skip
    finally:
        if stream is not None:
            stream.close()
    step_size = outcome.step_size
    tree = build_result(
        posterior,
        records,
        num_burnin_draws=num_burnin_draws,
        diverged_at=np.asarray(state.diverged_at),
        attrs={
            "kernel": kern.name,
            "kernel_choice": kernel_choice,
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
            "slt_ppl_version": _library_version(),
            "explode": float(explode),
            "divergence_retries": int(outcome.attempt),
            "retry_history": json.dumps(outcome.history),
            "resumed_from_draw": -1
            if outcome.resumed_from_draw is None
            else outcome.resumed_from_draw,
            "checkpoint": "" if ckpt_file is None else str(ckpt_file),
            "sampling_time_s": float(
                wall - (runner.stats.get("compile_time_s", 0.0) - compile_before)
            ),
            "compile_time_s": float(runner.stats.get("compile_time_s", 0.0)),
            "num_devices": len(shard_devices) if shard_devices else 1,
            **({"draws_file": os.fspath(stream_to)} if stream_to is not None else {}),
        },
        keep_draws=keep_draws and stream is None,
    )
    if factors is not None:
        tree.attrs["num_chains"] = int(per_temperature)
        tree = split_temperatures(tree, factors)
    if tuning.get("method") == "user":
        warn_minibatch_heating(tree)
    return tree


def _run_segments(
    runner: SegmentRunner,
    state: Any,
    chain_keys: jax.Array,
    batch_keys: jax.Array,
    step_size: float,
    total: int,
    num_segments: int,
    progress: bool,
    *,
    start: int = 0,
    done: dict[str, np.ndarray] | None = None,
    on_segment: Callable[[Any, int, int, Callable[[], dict[str, np.ndarray]]], None] | None = None,
    stream: Any = None,
) -> tuple[dict[str, np.ndarray], Any, float]:
    """Run draws ``start..total`` segment by segment (``done``: records of draws before ``start``);
    ``on_segment(state, next_draw, segments_done, records)`` is called after each segment (the
    checkpoint hook; ``records()`` concatenates the draws so far)."""
    from tqdm.auto import tqdm

    seg = max(1, math.ceil(total / max(1, num_segments)))
    compiled: dict[int, Any] = {}
    pieces: list[DrawRecord] = [] if done is None else [DrawRecord(**done)]

    def concat() -> dict[str, np.ndarray]:
        return {
            field: np.concatenate([np.asarray(getattr(p, field)) for p in pieces], axis=1)
            for field in DrawRecord._fields
        }

    segments_done = 0
    t0 = time.perf_counter()
    with tqdm(
        total=total * runner.thin,
        initial=start * runner.thin,
        disable=not progress,
        desc=f"{runner.kernel.name} x{chain_keys.shape[0]} chains",
        unit="step",
    ) as bar:
        while start < total:
            length = min(seg, total - start)
            if length not in compiled:
                compiled[length] = runner.build(length)
            state, piece = compiled[length](
                state, chain_keys, batch_keys, jnp.asarray(step_size), start
            )
            if stream is not None:  # hand the draws to disk, keep only the statistics
                stream.append(piece)
                piece = piece._replace(position=np.zeros((*piece.loss.shape, 0), piece.loss.dtype))
            pieces.append(piece)
            start += length
            segments_done += 1
            bar.update(length * runner.thin)
            if on_segment is not None:
                on_segment(state, start, segments_done, concat)
    wall = time.perf_counter() - t0
    return concat(), state, wall


def _setting_repr(step_size: Any) -> str | None:
    """The step-size setting as stored in checkpoints: "auto"/None as is, numbers as repr(float)."""
    if step_size is None or isinstance(step_size, str):
        return step_size
    try:
        return repr(float(step_size))
    except (TypeError, ValueError):
        return repr(step_size)


def _library_version() -> str:
    from slt_ppl import __version__

    return __version__


def _check_numbers(
    seed: Any, init_jitter: Any, explode: Any, num_segments: Any, kernel_options: Any
) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise SettingError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if isinstance(num_segments, bool) or not isinstance(num_segments, int | np.integer):
        raise SettingError(f"num_segments must be a positive integer, got {num_segments!r}")
    if num_segments < 1:
        raise SettingError(f"num_segments must be a positive integer, got {num_segments!r}")
    for name, value in [("init_jitter", init_jitter), ("explode", explode)]:
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise SettingError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise SettingError(f"{name} must be a non-negative finite number, got {value!r}")
    if explode == 0:
        raise SettingError("explode must be positive (0 would flag every step as diverged)")
    if kernel_options is not None and not isinstance(kernel_options, dict):
        raise SettingError(f"kernel_options must be a dict, got {type(kernel_options).__name__}")


def _check_reliability_settings(
    checkpoint: Any,
    checkpoint_every: Any,
    resume: Any,
    retry_on_divergence: Any,
    max_diverged_fraction: Any,
    kernel: Any,
) -> None:
    if checkpoint is not None and not isinstance(checkpoint, str | os.PathLike):
        raise SettingError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    if resume and checkpoint is None:
        raise SettingError("resume=True needs checkpoint=<the path the interrupted run wrote>")
    numpyro_kernel = isinstance(kernel, str) and kernel in NUMPYRO_KERNELS
    if numpyro_kernel and (checkpoint is not None or resume or retry_on_divergence):
        raise SettingError(
            "checkpoint, resume and retry_on_divergence work with slt_ppl's own kernels, not "
            f"NumPyro's {kernel!r}"
        )
    for name, value, minimum in [
        ("checkpoint_every", checkpoint_every, 1),
        ("retry_on_divergence", retry_on_divergence, 0),
    ]:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            raise SettingError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if not isinstance(max_diverged_fraction, int | float) or not (0 <= max_diverged_fraction < 1):
        raise SettingError(
            f"max_diverged_fraction must be a number in [0, 1), got {max_diverged_fraction!r}"
        )


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
            "sample() needs a LocalPosterior from slt_ppl.localize(...), got "
            f"{type(posterior).__name__}"
        )
    check_run_settings(
        posterior.n, kernel, KERNEL_NAMES, FULL_BATCH_KERNELS, batch_size, num_chains, num_draws,
        num_burnin, thin, diag_every,
    )  # fmt: skip


def check_run_settings(
    n: int,
    kernel: Any,
    kernel_names: tuple[str, ...],
    full_batch_kernels: Any,
    batch_size: int | None,
    num_chains: int,
    num_draws: int,
    num_burnin: int | None,
    thin: int,
    diag_every: int,
) -> None:
    """The settings checks shared by the JAX and torch samplers (same messages in both)."""
    if isinstance(kernel, str) and kernel not in kernel_names:
        raise SettingError(f"unknown kernel {kernel!r}; choose one of {kernel_names}")
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
        if batch_size > n:
            raise SettingError(
                f"batch_size = {batch_size} exceeds the number of data points n = {n}"
            )
    if isinstance(kernel, str) and kernel in full_batch_kernels and batch_size not in (None, n):
        raise SettingError(f"kernel {kernel!r} is full batch; batch_size must be None or n")
