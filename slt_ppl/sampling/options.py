"""The settings of a sampling run and their checks, written once for every backend.

``sample()`` takes the everyday settings as keywords; the rare ones are grouped in small option
objects (the old flat keywords are still accepted, see :func:`from_legacy`):

- :class:`Plan`: the run plan besides its length: how often the acceptance diagnostic runs
  (``diag_every``), how many segments the run is cut into (progress, checkpoints, streaming happen
  between segments), and whether chains share minibatches;
- :class:`Divergence`: when a chain counts as diverged (``explode``) and whether to retry the run
  with a smaller ε when too many did;
- :class:`Checkpointing`: where and how often to checkpoint, and whether to resume.

:func:`check_settings` validates a :class:`RunSettings` against a posterior and a backend's kernel
names; every message names the setting and the value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from slt_ppl.errors import SettingError
from slt_ppl.sampling.temperatures import check_temperatures


@dataclass(frozen=True)
class Plan:
    """How a run is cut up and diagnosed.

    diag_every: compute the MALA-acceptance diagnostic every this many draws (Furman & Lau use
        ~20).
    num_segments: compiled segments the run is cut into; progress, checkpoints and streaming act
        between segments, nothing syncs inside one.
    shared_batches: all chains see the same minibatch at a step (one gather) or independent ones.
    full_loss: record the full-data loss L_n(w_t) at every draw (True) or the paired minibatch
        loss L_B(w_t) − L_B(w*) (False); None (default): the full-data loss for tiny models where
        it costs ≤ 10 % of a draw's steps (``sampling.defaults.choose_full_loss``; attrs
        ``loss_trace``).
    """

    diag_every: int = 20
    num_segments: int = 20
    shared_batches: bool = True
    full_loss: bool | None = None


@dataclass(frozen=True)
class Divergence:
    """What counts as a diverged chain and what to do about it.

    explode: a chain whose L_B − L_B(w*) exceeds explode·(1 + |L_B(w*)|), or whose potential or
        position becomes non-finite, is frozen and counts as diverged.
    retries: when more than ``max_fraction`` of the chains diverged, rerun from the start with ε
        halved, at most this many times (attrs ``divergence_retries``, ``retry_history``).
        Default 0: diverged chains are only dropped by the estimators.
    max_fraction: the fraction of diverged chains tolerated without a retry.
    """

    explode: float = 1e3
    retries: int = 0
    max_fraction: float = 0.0


@dataclass(frozen=True)
class Checkpointing:
    """Checkpoint the run to ``path`` (a ``.nc`` file, or a directory holding ``checkpoint.nc``)
    atomically every ``every`` segments and at the end; with ``resume`` continue from it if it
    exists (no retuning; the result equals an uninterrupted run bit for bit; the settings must
    match the file's)."""

    path: str | os.PathLike[str]
    every: int = 1
    resume: bool = False


#: old flat keyword → (option group, field)
LEGACY = {
    "diag_every": ("plan", "diag_every"),
    "num_segments": ("plan", "num_segments"),
    "shared_batches": ("plan", "shared_batches"),
    "full_loss": ("plan", "full_loss"),
    "explode": ("divergence", "explode"),
    "retry_on_divergence": ("divergence", "retries"),
    "max_diverged_fraction": ("divergence", "max_fraction"),
    "checkpoint_every": ("checkpoint", "every"),
    "resume": ("checkpoint", "resume"),
}


@dataclass(frozen=True)
class RunSettings:
    """Everything ``sample()`` was asked for, after the old keywords are folded in."""

    kernel: Any = "sgld"
    step_size: Any = "auto"
    batch_size: int | None = None
    num_chains: int | None = None  # None: chosen by the driver (defaults.choose_num_chains)
    num_draws: int = 1000
    num_burnin: int | None = None
    thin: int | None = None  # None: chosen after tuning (defaults.auto_thin)
    seed: int = 0
    keep_draws: bool = False
    init_jitter: float = 0.0
    progress: bool = True
    kernel_options: dict[str, Any] | None = None
    plan: Plan = field(default_factory=Plan)
    divergence: Divergence = field(default_factory=Divergence)
    checkpoint: Checkpointing | None = None
    stream_to: str | os.PathLike[str] | None = None
    devices: Any = None
    temperatures: tuple[float, ...] | None = None
    observe: Any = None  # probe name -> data dict (sampling.observe)
    observe_every: int = 1

    @property
    def burnin_steps(self) -> int:
        """Burn-in steps: ``num_burnin``, default num_draws·thin (half the run). The plan's
        properties need ``thin`` resolved (the driver resolves it after tuning)."""
        return self.num_draws * self.thin if self.num_burnin is None else int(self.num_burnin)

    @property
    def burnin_draws(self) -> int:
        """Recorded burn-in draws (ceil(burn-in steps / thin))."""
        return math.ceil(self.burnin_steps / self.thin)

    @property
    def total_draws(self) -> int:
        """Recorded draws, burn-in included."""
        return self.burnin_draws + self.num_draws


def from_legacy(
    plan: Plan | None,
    divergence: Divergence | None,
    checkpoint: Any,
    legacy: dict[str, Any],
) -> tuple[Plan, Divergence, Checkpointing | None]:
    """Fold the old flat keywords (``diag_every=``, ``resume=``, ...) into the option objects.

    ``checkpoint`` may be a :class:`Checkpointing` or a path. An unknown keyword raises
    ``SettingError`` naming it."""
    unknown = sorted(set(legacy) - set(LEGACY))
    if unknown:
        raise SettingError(
            f"sample() got unknown keyword arguments {unknown}; the rare settings are "
            f"{sorted(LEGACY)} or the option objects plan=Plan(...), divergence=Divergence(...), "
            "checkpoint=Checkpointing(...)"
        )
    if checkpoint is not None and not isinstance(checkpoint, Checkpointing):
        if not isinstance(checkpoint, str | os.PathLike):
            raise SettingError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
        checkpoint = Checkpointing(checkpoint)
    groups: dict[str, Any] = {
        "plan": plan or Plan(),
        "divergence": divergence or Divergence(),
        "checkpoint": checkpoint,
    }
    for name, value in legacy.items():
        group, attr = LEGACY[name]
        if groups[group] is None:  # resume / checkpoint_every without a checkpoint path
            if name == "resume" and value:
                raise SettingError(
                    "resume=True needs checkpoint=<the path the interrupted run wrote>"
                )
            if name == "checkpoint_every":
                _integer(name, value, 1)
            continue
        groups[group] = replace(groups[group], **{attr: value})
    return groups["plan"], groups["divergence"], groups["checkpoint"]


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise SettingError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise SettingError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise SettingError(f"{name} must be a non-negative finite number, got {value!r}")


def check_settings(
    s: RunSettings,
    n: int,
    kernel_names: tuple[str, ...],
    full_batch_kernels: Any,
    external_kernels: Any,
) -> None:
    """Check every setting (the same messages on every backend); ``SettingError`` names the
    setting."""
    kernel = s.kernel
    if isinstance(kernel, str) and kernel not in kernel_names:
        raise SettingError(f"unknown kernel {kernel!r}; choose one of {kernel_names}")
    thin = 1 if s.thin is None else s.thin
    chains = 1 if s.num_chains is None else s.num_chains
    for name, value in [("num_chains", chains), ("num_draws", s.num_draws),
                        ("thin", thin), ("diag_every", s.plan.diag_every)]:  # fmt: skip
        if not isinstance(value, int | np.integer) or value < 1:
            raise SettingError(f"{name} must be an integer >= 1, got {value!r}")
    if s.plan.full_loss is not None and not isinstance(s.plan.full_loss, bool | np.bool_):
        raise SettingError(f"full_loss must be True, False or None, got {s.plan.full_loss!r}")
    if s.num_burnin is not None and (
        not isinstance(s.num_burnin, int | np.integer) or s.num_burnin < 0
    ):
        raise SettingError(f"num_burnin must be a non-negative integer, got {s.num_burnin!r}")
    if s.batch_size is not None:
        if not isinstance(s.batch_size, int | np.integer) or s.batch_size < 1:
            raise SettingError(f"batch_size must be a positive integer, got {s.batch_size!r}")
        if s.batch_size > n:
            raise SettingError(
                f"batch_size = {s.batch_size} exceeds the number of data points n = {n}"
            )
    if isinstance(kernel, str) and kernel in full_batch_kernels and s.batch_size not in (None, n):
        raise SettingError(f"kernel {kernel!r} is full batch; batch_size must be None or n")
    _check_numbers(s)
    _check_reliability(s, external_kernels)
    check_temperatures(s.temperatures)


def _check_numbers(s: RunSettings) -> None:
    seed = s.seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise SettingError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    segments = s.plan.num_segments
    if isinstance(segments, bool) or not isinstance(segments, int | np.integer) or segments < 1:
        raise SettingError(f"num_segments must be a positive integer, got {segments!r}")
    _number("init_jitter", s.init_jitter)
    _number("explode", s.divergence.explode)
    if s.divergence.explode == 0:
        raise SettingError("explode must be positive (0 would flag every step as diverged)")
    if s.kernel_options is not None and not isinstance(s.kernel_options, dict):
        raise SettingError(f"kernel_options must be a dict, got {type(s.kernel_options).__name__}")


def _check_reliability(s: RunSettings, external_kernels: Any) -> None:
    ckpt, div = s.checkpoint, s.divergence
    external = isinstance(s.kernel, str) and s.kernel in external_kernels
    if external and s.temperatures is not None:
        raise SettingError(
            f"temperatures work with slt_ppl's own kernels, not the PPL's {s.kernel!r}; run "
            "posterior.replace(nbeta=...) once per temperature instead"
        )
    if external and (ckpt is not None or div.retries):
        raise SettingError(
            "checkpoint, resume and retry_on_divergence work with slt_ppl's own kernels, not "
            f"the PPL's {s.kernel!r}"
        )
    if ckpt is not None:
        if not isinstance(ckpt.path, str | os.PathLike):
            raise SettingError(f"checkpoint must be a path, got {type(ckpt.path).__name__}")
        _integer("checkpoint_every", ckpt.every, 1)
    _integer("retry_on_divergence", div.retries, 0)
    fraction = div.max_fraction
    if not isinstance(fraction, int | float) or isinstance(fraction, bool) or not 0 <= fraction < 1:
        raise SettingError(f"max_diverged_fraction must be a number in [0, 1), got {fraction!r}")
    if s.stream_to is not None and (ckpt is not None or div.retries):
        raise SettingError(
            "stream_to cannot be combined with checkpoint or retry_on_divergence yet: a "
            "resumed or retried run would append its draws to the stream twice"
        )


def checkpoint_settings(s: RunSettings) -> dict[str, Any]:
    """The ``sample`` keywords stored in a checkpoint (flat, in the old keyword names, so that
    ``sample(posterior, **stored, checkpoint=path, resume=True)`` continues a run)."""
    kernel = s.kernel if isinstance(s.kernel, str) else getattr(s.kernel, "name", str(s.kernel))
    return {
        "kernel": kernel, "step_size": _setting_repr(s.step_size),
        "batch_size": s.batch_size, "num_chains": s.num_chains, "num_draws": s.num_draws,
        "num_burnin": s.num_burnin, "thin": s.thin, "seed": s.seed,
        "diag_every": s.plan.diag_every, "keep_draws": s.keep_draws,
        "shared_batches": s.plan.shared_batches, "full_loss": s.plan.full_loss,
        "init_jitter": float(s.init_jitter),
        "explode": float(s.divergence.explode), "num_segments": s.plan.num_segments,
        "kernel_options": s.kernel_options, "retry_on_divergence": s.divergence.retries,
        "max_diverged_fraction": float(s.divergence.max_fraction),
        "temperatures": None if s.temperatures is None else [float(t) for t in s.temperatures],
    }  # fmt: skip


def _setting_repr(step_size: Any) -> str | None:
    """The step-size setting as stored in checkpoints: "auto"/None as is, numbers as
    repr(float)."""
    if step_size is None or isinstance(step_size, str):
        return step_size
    try:
        return repr(float(step_size))
    except (TypeError, ValueError):
        return repr(step_size)
