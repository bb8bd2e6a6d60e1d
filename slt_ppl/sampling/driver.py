"""The sampling driver, written once for every backend.

``sample()`` checks the settings (``sampling.options``) and hands them here with a *backend*
(``sampling.jax_backend`` or ``sampling.torch_backend``). Everything that is not array math lives
in this module:

1. the run plan: thinning and burn-in (chosen after tuning when not given), total draws, segment
   length (``options.RunSettings``), and the chain layout of several temperatures
   (``sampling.temperatures``);
2. the step size: the user's (checked by the preflight) or the tuner's
   (``sampling.stepsize.tune_step_size``, the same search for both backends; the backend supplies
   only the accuracy-cap statistics);
3. the segment loop with progress, streaming (``sampling.stream``), checkpoints and divergence
   retries (``sampling.recovery``, ``sampling.checkpoint``);
4. result assembly and attrs (``sampling.result``).

A backend supplies what must differ (the :class:`Backend` protocol): the posterior type and kernel
registry, the runner (the compiled "advance all chains by k draws" program: JAX vmap + scan + jit,
torch batched ``torch.func`` steps), counter-based keys (chain i's draws depend only on (seed, i)),
initial positions, the host transfer of states for checkpoints, and the PPL's own HMC/NUTS.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple, Protocol

import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError
from slt_ppl.kernels.preconditioners import localized_delta, pool_chains
from slt_ppl.sampling.checkpoint import checkpoint_path, load_for_resume
from slt_ppl.sampling.defaults import (
    DEFAULT_BATCH_SIZE,
    auto_thin,
    choose_full_loss,
    choose_kernel,
    choose_num_chains,
    is_tiny,
    slowest_preconditioner,
)
from slt_ppl.sampling.loop import DrawRecord
from slt_ppl.sampling.observe import NEVER, prepare, record_key
from slt_ppl.sampling.options import RunSettings, check_settings, checkpoint_settings
from slt_ppl.sampling.program_key import forget_loss_digests
from slt_ppl.sampling.recovery import run_with_recovery
from slt_ppl.sampling.result import build_result
from slt_ppl.sampling.stepsize import adapt_burnin, tune_step_size, warn_minibatch_heating
from slt_ppl.sampling.temperatures import (
    STEP_RULE,
    chain_factors,
    check_temperatures,
    split_temperatures,
)

#: key streams: 0 chains (and their jitter), 1 shared minibatches, 2 the step-size tuner
CHAIN_STREAM, TUNING_STREAM = 0, 2


class Backend(Protocol):
    """What a backend supplies to the driver (see the module docstring)."""

    name: str
    kernel_names: tuple[str, ...]
    full_batch_kernels: Any
    external_kernels: tuple[str, ...]  # the PPL's own HMC/NUTS, run by :meth:`sample_external`
    caps_fn: Callable[..., Any] | None  # the tuner's accuracy-cap statistics (None: JAX's)

    def check_posterior(self, posterior: Any) -> None: ...

    def sample_external(self, posterior: Any, s: RunSettings) -> xr.DataTree: ...

    def get_kernel(self, kernel: Any, options: dict[str, Any]) -> Any: ...

    def runner(
        self, posterior: Any, kernel: Any, batch: int, s: RunSettings, num_chains: int,
        nbeta_factors: np.ndarray | None, probes: Any = None,
    ) -> Any: ...  # fmt: skip

    def keys(
        self, seed: int, stream: int, chain_index: np.ndarray, shared: bool
    ) -> tuple[Any, Any]: ...

    def initial_positions(self, posterior: Any, chain_keys: Any, jitter: float) -> Any: ...

    def state_to_host(self, state: Any) -> list[np.ndarray]: ...

    def state_from_host(self, leaves: list[np.ndarray], template: Any) -> Any: ...

    def diverged_at(self, state: Any) -> np.ndarray: ...

    def check_step_size(self, posterior: Any, step_size: float) -> None: ...

    def attrs(self) -> dict[str, Any]: ...


class Setup(NamedTuple):
    """A run's fixed parts: kernel, minibatch size, chain layout, step program, keys, start."""

    kernel: Any
    batch: int
    factors: tuple[float, ...] | None  # temperatures (nβ factors), None for one temperature
    chain_index: np.ndarray  # chain c's key index (the same at every temperature)
    runner: Any
    chain_keys: Any
    batch_keys: Any
    state: Any  # the initial state of every chain
    settings: dict[str, Any]  # what a checkpoint must match to be resumed
    num_chains: int  # chains per temperature (``defaults.choose_num_chains``)
    num_chains_choice: str  # why that many


def run(backend: Backend, posterior: Any, s: RunSettings) -> xr.DataTree:
    """Check ``s``, sample ``posterior`` with ``backend`` and return the result tree."""
    forget_loss_digests()  # the loss is traced afresh once per call (sampling.program_key)
    backend.check_posterior(posterior)
    size = s.batch_size if isinstance(s.batch_size, int | np.integer) else None  # checked below
    kernel, kernel_choice = choose_kernel(posterior, s.kernel, size)
    s = replace(s, kernel=kernel)
    check_settings(
        s, posterior.n, backend.kernel_names, backend.full_batch_kernels, backend.external_kernels
    )
    external = isinstance(s.kernel, str) and s.kernel in backend.external_kernels
    if external and s.observe is not None:
        raise SettingError(
            f"observe works with slt_ppl's own kernels, not the PPL's {s.kernel!r}; sample with "
            "keep_draws=True and evaluate the probe losses on the draws instead"
        )
    if external:
        chains = choose_num_chains(s.num_chains, posterior.n, int(posterior.dim), external=True)[0]
        s = replace(s, thin=1 if s.thin is None else s.thin, num_chains=chains)
        return backend.sample_external(posterior, s)
    probes = prepare(posterior, s.observe, s.observe_every)
    setup = _setup(backend, posterior, s, probes)
    s = replace(s, num_chains=setup.num_chains)
    ckpt_file = checkpoint_path(s.checkpoint.path) if s.checkpoint is not None else None
    resume = s.checkpoint is not None and s.checkpoint.resume
    restored = load_for_resume(ckpt_file, setup.settings) if resume else None
    tune_keys = backend.keys(s.seed, TUNING_STREAM, setup.chain_index, s.plan.shared_batches)
    if restored is not None:
        step_size, tuning = restored.step_size, restored.tuning
    else:
        step_size, tuning, tuned = _step_size(backend, posterior, setup, s, tune_keys)
        if tuned is not None:  # the tuner's adaptation windows were burn-in: continue from them
            setup = setup._replace(state=_pooled(setup, tuned))
            if setup.state is not tuned:  # ε was adapted on per-chain G: adapt it again below
                tuning["preconditioner"] = (
                    "pooled over each temperature's chains (mean V̂, ⌊C/8⌋ chains trimmed at "
                    "each end of each coordinate) and frozen after the ε adaptation"
                )
    setup, s, step_size = _run_length(
        posterior, setup, s, step_size, tuning, tune_keys,
        getattr(backend, "max_auto_steps", None),
    )  # fmt: skip
    stream = _open_stream(posterior, s, len(setup.chain_index))
    compile_before = setup.runner.stats.get("compile_time_s", 0.0)
    try:
        records, state, wall, outcome = run_with_recovery(
            lambda *a, **kw: run_segments(*a, **kw, stream=stream, observe_from=s.burnin_draws),
            setup.runner, setup.state,
            setup.chain_keys, setup.batch_keys, step_size, s.total_draws, s.plan.num_segments,
            s.progress, settings=setup.settings, tuning=tuning, checkpoint_file=ckpt_file,
            checkpoint_every=s.checkpoint.every if s.checkpoint else 1, restored=restored,
            retry_on_divergence=s.divergence.retries,
            max_diverged_fraction=s.divergence.max_fraction, host=backend,
        )  # fmt: skip
    finally:
        if stream is not None:
            stream.close()
    compile_time = setup.runner.stats.get("compile_time_s", 0.0)
    attrs = {
        **_run_attrs(s, setup.kernel, setup.batch, outcome.step_size, tuning),
        "kernel_choice": kernel_choice,
        "num_chains_choice": setup.num_chains_choice,
        "divergence_retries": int(outcome.attempt),
        "retry_history": json.dumps(outcome.history),
        "resumed_from_draw": -1 if outcome.resumed_from_draw is None else outcome.resumed_from_draw,
        "checkpoint": "" if ckpt_file is None else str(ckpt_file),
        "sampling_time_s": float(wall - (compile_time - compile_before)),
        "compile_time_s": float(compile_time),
        # the relaxation check's ε·G (``diagnostics.relaxation_check``): G's minimum, final state
        "precond_min": slowest_preconditioner(
            getattr(state, "kernel_state", state), setup.kernel.params
        ),
        **backend.attrs(),
        **({"draws_file": os.fspath(s.stream_to)} if s.stream_to is not None else {}),
    }
    tree = build_result(
        posterior, records, num_burnin_draws=s.burnin_draws,
        diverged_at=backend.diverged_at(state), attrs=attrs,
        keep_draws=s.keep_draws and stream is None, probes=probes,
    )  # fmt: skip
    if setup.factors is not None:
        tree = split_temperatures(tree, setup.factors)
    if tuning.get("method") == "user":
        warn_minibatch_heating(tree)
    return tree


def _pooled(setup: Setup, state: Any) -> Any:
    """``state`` with an adaptive preconditioner (RMSprop) pooled over the chains of each
    temperature and frozen (``kernels.preconditioners.pool_chains``): every chain then samples
    with the same G, estimated from all of them, for the rest of the run."""
    kernel_state = getattr(state, "kernel_state", None)
    factors = getattr(setup.runner, "nbeta_factors", None)
    groups = np.zeros(len(setup.chain_index)) if factors is None else np.asarray(factors)
    pooled = None if kernel_state is None else pool_chains(setup.kernel, kernel_state, groups)
    if pooled is None or pooled is kernel_state:
        return state
    return state._replace(kernel_state=pooled)


def _setup(backend: Backend, posterior: Any, s: RunSettings, probes: Any = None) -> Setup:
    """Kernel, minibatch size, chain layout (temperature-major; chain c has the same keys at every
    temperature: common random numbers, ``sampling.temperatures``), step program, keys and the
    initial state."""
    options = dict(s.kernel_options or {})
    if s.kernel == "rmsprop_sgld":  # freeze the preconditioner after burn-in (thin not known yet)
        options.setdefault("freeze_after", s.num_draws if s.num_burnin is None else s.num_burnin)
        options.setdefault("delta", localized_delta(float(posterior.gamma)))
    kern = backend.get_kernel(s.kernel, options)
    batch = posterior.n if kern.full_batch else min(posterior.n, s.batch_size or DEFAULT_BATCH_SIZE)
    num_chains, chains_choice = choose_num_chains(s.num_chains, batch, int(posterior.dim))
    s = replace(s, num_chains=num_chains)
    factors = check_temperatures(s.temperatures)
    chain_index = np.arange(s.num_chains * (1 if factors is None else len(factors))) % s.num_chains
    per_chain_factors = None if factors is None else chain_factors(factors, s.num_chains)
    runner = backend.runner(
        posterior,
        kern,
        batch,
        replace(s, thin=s.thin or 1),
        len(chain_index),
        per_chain_factors,
        probes,
    )
    chain_keys, batch_keys = backend.keys(s.seed, CHAIN_STREAM, chain_index, s.plan.shared_batches)
    positions = backend.initial_positions(posterior, chain_keys, float(s.init_jitter))
    settings = {
        "sample_kwargs": checkpoint_settings(s),
        "posterior": _posterior_settings(posterior),
        "kernel_params": kern.params,
        "batch": batch,
        **({} if probes is None else {"observe": probes.settings()}),
    }
    return Setup(
        kern, batch, factors, chain_index, runner, chain_keys, batch_keys,
        runner.init(chain_keys, positions), settings, num_chains, chains_choice,
    )  # fmt: skip


def _step_size(
    backend: Backend, posterior: Any, setup: Setup, s: RunSettings, tune_keys: tuple[Any, Any]
) -> tuple[float, dict[str, Any], Any]:
    """(ε, tuning record, tuned state or None): the user's number, checked, or the tuner's choice
    from the initial state (its own key stream, so tuning never shifts the sampling draws); a
    tuner that adapts along the chains returns their state, and the run continues from it."""
    step_size = s.step_size
    if step_size is None or step_size == "auto":
        runner = setup.runner.for_tuning()
        return tune_step_size(runner, setup.state, *tune_keys, caps_fn=backend.caps_fn)
    try:
        step_size = float(step_size)
    except (TypeError, ValueError) as err:
        raise SettingError(
            f"step_size must be a positive number or 'auto', got {step_size!r}"
        ) from err
    if not (math.isfinite(step_size) and step_size > 0):
        raise SettingError(f"step_size must be a positive finite number, got {step_size}")
    backend.check_step_size(posterior, step_size)
    return step_size, {"method": "user"}, None


def _run_length(
    posterior: Any,
    setup: Setup,
    s: RunSettings,
    step_size: float,
    tuning: dict[str, Any],
    tune_keys: tuple[Any, Any],
    max_steps: int | None = None,
) -> tuple[Setup, RunSettings, float]:
    """Resolve ``thin`` and the default burn-in once ε is known: ``thin=None`` is chosen by
    ``defaults.auto_thin`` (recorded in the tuning record, so a resumed run reuses it); when it
    thins and ε was adapted along the chains, the burn-in adapts ε again on the thinned chains
    (``stepsize.adapt_burnin``; for tiny models, ``defaults.is_tiny``, its final ε is the pooled
    estimate of all windows and thin is chosen again at that ε, since the draws relax at it: on
    y = x·w1·w2² the burn-in cut ε 2.5× below the first stage's, and the draws of the thin chosen
    before spanned 1.8 relaxation times instead of 10) and the default burn-in is then a quarter of
    num_draws·thin."""
    thin, burnin_adapted = s.thin, False
    if thin is None:
        if "thin" not in tuning:
            tuning["thin"], tuning["thin_reason"] = auto_thin(
                posterior, step_size, setup.batch, len(setup.chain_index), s.num_draws,
                setup.state.kernel_state, max_steps=max_steps, kernel_params=setup.kernel.params,
                coldest=1.0 if setup.factors is None else max(setup.factors),
            )  # fmt: skip
            adapted = tuning.get("windows") or tuning.get("along_chains")
            if adapted and (tuning["thin"] > 1 or "preconditioner" in tuning):
                full = _full_loss(posterior, setup, s, int(tuning["thin"]))[0]
                runner = setup.runner.for_tuning().with_thin(int(tuning["thin"]))
                runner = runner.with_full_loss(full)
                tiny = max_steps is None and is_tiny(setup.batch, int(posterior.dim))
                step_size, tuning["burnin_adaptation"], state = adapt_burnin(
                    runner, setup.state, *tune_keys, step_size, s.num_draws, pooled=tiny
                )
                tuning["chosen"] = step_size
                setup = setup._replace(state=state)
                if tiny:  # the draws relax at the burn-in's ε: thin for that one
                    tuning["thin_before_burnin"] = tuning["thin"]
                    thin, reason = auto_thin(
                        posterior, step_size, setup.batch, len(setup.chain_index),
                        s.num_draws, state.kernel_state, kernel_params=setup.kernel.params,
                        coldest=1.0 if setup.factors is None else max(setup.factors),
                    )  # fmt: skip
                    tuning["thin"], tuning["thin_reason"] = thin, reason + " (at the burn-in's ε)"
        burnin_adapted = "burnin_adaptation" in tuning
        thin = int(tuning["thin"])
        setup = setup._replace(runner=setup.runner.with_thin(thin))
    full, tuning["loss_trace_choice"] = _full_loss(posterior, setup, s, thin)
    minibatch = not setup.kernel.full_batch and setup.batch < posterior.n
    tuning["loss_trace"] = "full" if full or not minibatch else "minibatch"
    setup = setup._replace(runner=setup.runner.with_full_loss(full))
    num_burnin = s.num_burnin
    if num_burnin is None:
        num_burnin = s.num_draws * thin // (4 if burnin_adapted else 1)
    plan = replace(s.plan, full_loss=full)
    return setup, replace(s, thin=thin, num_burnin=num_burnin, plan=plan), step_size


def _full_loss(posterior: Any, setup: Setup, s: RunSettings, thin: int) -> tuple[bool, str]:
    """Whether the draws record the full-data loss (``defaults.choose_full_loss``)."""
    minibatch = not setup.kernel.full_batch and setup.batch < posterior.n
    return choose_full_loss(
        s.plan.full_loss, minibatch, setup.batch, int(posterior.dim), int(posterior.n), thin
    )


def _open_stream(posterior: Any, s: RunSettings, num_chains: int) -> Any:
    if s.stream_to is None:
        return None
    from slt_ppl.sampling.stream import DrawStream

    return DrawStream(s.stream_to, posterior, num_chains, s.burnin_draws)


def run_segments(
    runner: Any,
    state: Any,
    chain_keys: Any,
    batch_keys: Any,
    step_size: float,
    total: int,
    num_segments: int,
    progress: bool,
    *,
    start: int = 0,
    done: dict[str, np.ndarray] | None = None,
    on_segment: Callable[[Any, int, int, Callable[[], dict[str, np.ndarray]]], None] | None = None,
    stream: Any = None,
    observe_from: int = NEVER,
) -> tuple[dict[str, np.ndarray], Any, float]:
    """Run draws ``start..total`` segment by segment (``done``: records of draws before
    ``start``); ``on_segment(state, next_draw, segments_done, records)`` is called after each
    segment (the checkpoint hook; ``records()`` concatenates the draws so far). Segments have
    ceil(total / num_segments) draws; the keys are counters, so the cut changes nothing. Probe
    sets (if the runner has any) are observed from global draw ``observe_from`` on."""
    from tqdm.auto import tqdm

    seg = max(1, math.ceil(total / max(1, num_segments)))
    programs: dict[int, Any] = {}
    pieces: list[dict[str, np.ndarray]] = [] if done is None else [done]

    def concat() -> dict[str, np.ndarray]:
        return {name: np.concatenate([p[name] for p in pieces], axis=1) for name in pieces[0]}

    segments_done = 0
    t0 = time.perf_counter()
    label = f"{runner.kernel.name} x{len(chain_keys)} chains"
    with tqdm(
        total=total * runner.thin, initial=start * runner.thin, disable=not progress,
        desc=label, unit="step",
    ) as bar:  # fmt: skip
        while start < total:
            length = min(seg, total - start)
            if length not in programs:
                programs[length] = runner.build(length)
            state, piece = programs[length](
                state, chain_keys, batch_keys, step_size, start, observe_from=observe_from
            )
            if stream is not None:  # hand the draws to disk, keep only the statistics
                stream.append(piece)
                piece = piece._replace(position=np.zeros((*piece.loss.shape, 0), piece.loss.dtype))
            pieces.append(host_record(piece))
            start += length
            segments_done += 1
            bar.update(length * runner.thin)
            if on_segment is not None:
                on_segment(state, start, segments_done, concat)
    return concat(), state, time.perf_counter() - t0


def host_record(piece: DrawRecord) -> dict[str, np.ndarray]:
    """A segment's record as the flat dict of NumPy arrays that checkpoints store: the fields,
    and each probe set's losses under ``observe_<name>``."""
    out = {f: np.asarray(getattr(piece, f)) for f in DrawRecord._fields if f != "observed"}
    for name, value in (piece.observed or {}).items():
        out[record_key(name)] = np.asarray(value)
    return out


def _posterior_settings(posterior: Any) -> dict[str, Any]:
    return {
        "n": posterior.n, "dim": posterior.dim, "nbeta": posterior.nbeta,
        "gamma": posterior.gamma, "backend": posterior.backend,
        "model": str(posterior.info.get("model", "")),
        "loss_center_full": float(posterior.info.get("loss_center_full", math.nan)),
    }  # fmt: skip


def _run_attrs(
    s: RunSettings, kern: Any, batch: int, step_size: float, tuning: dict[str, Any]
) -> dict[str, Any]:
    """The result attrs every run of slt_ppl's own kernels carries."""
    from slt_ppl import __version__

    return {
        "kernel": kern.name,
        "kernel_params": json.dumps(kern.params),
        "step_size": float(step_size),
        "step_size_tuning": json.dumps(tuning),
        "batch_size": int(batch),
        "loss_trace": str(tuning.get("loss_trace", "minibatch")),
        "num_chains": int(s.num_chains),
        "num_draws": int(s.num_draws),
        "num_burnin": int(s.burnin_draws * s.thin),
        "thin": int(s.thin),
        "diag_every": int(s.plan.diag_every),
        "shared_batches": int(bool(s.plan.shared_batches)),
        "init_jitter": float(s.init_jitter),
        "seed": int(s.seed),
        "slt_ppl_version": __version__,
        "explode": float(s.divergence.explode),
        **({} if s.temperatures is None else {"temperature_step_rule": STEP_RULE}),
    }
