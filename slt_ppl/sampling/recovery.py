"""Run the segmented sampler with checkpoints and divergence retries (``sample``'s outer loop).

An *attempt* is one full run of every segment from the initial state at one step size. After an
attempt, if more than ``max_diverged_fraction`` of the chains diverged and retries remain, the
whole run starts again from the same initial state and keys with ε halved (``retry_on_divergence``
times at most). Each finished attempt is recorded (ε, chains diverged) and lands in the result
attrs as ``divergence_retries`` (count) and ``retry_history`` (JSON).

With a checkpoint file, the state after every ``checkpoint_every`` segments (and after the last
one) is written atomically (``sampling.checkpoint``); a resumed run continues the recorded attempt
from its next draw. Because the loop folds every key with the global step index, the continuation
equals an uninterrupted run bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slt_ppl.sampling.checkpoint import Checkpoint, restore_leaves, write_checkpoint

RunSegments = Callable[..., tuple[dict[str, np.ndarray], Any, float]]


@dataclass
class RecoveryOutcome:
    """What the outer loop adds to a run: final ε, retries, whether it resumed."""

    step_size: float
    attempt: int
    history: list[dict[str, Any]]
    resumed_from_draw: int | None


def run_with_recovery(
    run_segments: RunSegments,
    runner: Any,
    init_state: Any,
    chain_keys: Any,
    batch_keys: Any,
    step_size: float,
    total: int,
    num_segments: int,
    progress: bool,
    *,
    settings: dict[str, Any],
    tuning: dict[str, Any],
    checkpoint_file: Path | None = None,
    checkpoint_every: int = 1,
    restored: Checkpoint | None = None,
    retry_on_divergence: int = 0,
    max_diverged_fraction: float = 0.0,
    host: Any,
) -> tuple[dict[str, np.ndarray], Any, float, RecoveryOutcome]:
    """Run attempts until few enough chains diverge or retries run out; see the module docstring.

    ``run_segments(runner, state, chain_keys, batch_keys, step_size, total, num_segments, progress,
    start=, done=, on_segment=)`` is ``sampling.driver.run_segments``; ``host`` (the backend)
    moves states to and from NumPy: ``state_to_host``, ``state_from_host``, ``diverged_at``.
    """
    attempt = restored.attempt if restored else 0
    history: list[dict[str, Any]] = list(restored.retries) if restored else []
    eps = float(restored.step_size) if restored else float(step_size)
    resumed_from = restored.next_draw if restored else None
    wall_total = 0.0
    while True:
        if restored is not None:
            template = host.state_to_host(init_state)
            leaves = restore_leaves(restored, template, checkpoint_file)
            state = host.state_from_host(leaves, init_state)
            start, done = restored.next_draw, restored.records
            restored = None
        else:
            state, start, done = init_state, 0, None
        on_segment = None
        if checkpoint_file is not None:
            on_segment = _checkpointer(
                checkpoint_file, checkpoint_every, settings, tuning, eps, total, attempt, history,
                host.state_to_host,
            )  # fmt: skip
        records, state, wall = run_segments(
            runner, state, chain_keys, batch_keys, eps, total, num_segments, progress,
            start=start, done=done, on_segment=on_segment,
        )  # fmt: skip
        wall_total += wall
        diverged = host.diverged_at(state) >= 0
        history.append({"step_size": eps, "chains_diverged": int(diverged.sum())})
        if diverged.mean() > max_diverged_fraction and attempt < retry_on_divergence:
            attempt += 1
            eps = eps / 2.0
            continue
        return records, state, wall_total, RecoveryOutcome(eps, attempt, history, resumed_from)


def _checkpointer(
    path: Path,
    every: int,
    settings: dict[str, Any],
    tuning: dict[str, Any],
    step_size: float,
    total: int,
    attempt: int,
    history: list[dict[str, Any]],
    to_host: Callable[[Any], list[np.ndarray]],
) -> Callable[[Any, int, int, Callable[[], dict[str, np.ndarray]]], None]:
    """A callback for ``run_segments``: write a checkpoint every ``every`` segments and at the
    end (``to_host``: the state's arrays as NumPy, in a fixed order)."""
    finished_before = list(history)

    def on_segment(
        state: Any, next_draw: int, segments_done: int, records: Callable[[], dict[str, np.ndarray]]
    ) -> None:
        if segments_done % every and next_draw < total:
            return
        leaves = to_host(state)
        write_checkpoint(
            path,
            Checkpoint(
                settings=settings,
                step_size=step_size,
                tuning=tuning,
                state_leaves=leaves,
                records=records(),
                next_draw=next_draw,
                total_draws=total,
                attempt=attempt,
                retries=finished_before,
            ),
        )

    return on_segment
