"""Train the zoo's deep linear network from a small initialization and save checkpoints: the
input of the built-in sweep example (examples/dln_training_sweep.toml, docs/sweeps.md).

From an initialization of scale 1e-2, full-batch gradient descent on a teacher with well separated
singular values learns one mode at a time: the loss falls in steps, the end-to-end matrix gains one
singular value per step, and the weights rest near a saddle between the steps (the
saddle-to-saddle regime, Jacot et al. 2021, arXiv 2106.15933; Furman & Lau 2024, arXiv
2402.03698, App. E.2, where λ̂ rises in steps along training). The validation suite's
``llc_along_training`` checks that claim with the same kind of run.

    python -m models.training --out examples/dln_training   # data.npz, checkpoints/, training.csv
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

WIDTHS = (6, 6, 6, 6)
TEACHER_SINGULAR_VALUES = (8.0, 4.0, 2.0, 1.0)
N = 5_000
INIT_SCALE = 1e-2
LEARNING_RATE = 0.01
STEPS = 12_000
NUM_CHECKPOINTS = 20


@dataclass
class TrainingRun:
    """Checkpoints of one run: ``steps[i]`` and ``losses[i]`` (L_n, mean ½‖y − f(x)‖² per row) and
    ``weights[i]`` (sites w0, w1, … of ``models.numpyro_zoo.dln_model``); ``curve_*`` every
    ``record_every`` steps."""

    steps: np.ndarray
    losses: np.ndarray
    weights: list[dict[str, np.ndarray]]
    curve_steps: np.ndarray
    curve_losses: np.ndarray


def teacher_data(widths: tuple[int, ...] = WIDTHS, singular_values: tuple[float, ...] =
                 TEACHER_SINGULAR_VALUES, n: int = N, seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """x ~ N(0, I), y = T·x + N(0, I) with T = U·diag(s)·Vᵀ (U, V random orthogonal) of the given
    singular values; the data of ``dln_model`` (``{"x", "y"}``, float32)."""
    rng = np.random.default_rng(seed)
    h0, hm = widths[0], widths[-1]
    u, _ = np.linalg.qr(rng.normal(size=(hm, hm)))
    v, _ = np.linalg.qr(rng.normal(size=(h0, h0)))
    s = np.zeros((hm, h0))
    k = len(singular_values)
    s[:k, :k] = np.diag(singular_values)
    x = rng.normal(size=(n, h0))
    y = x @ (u @ s @ v.T).T + rng.normal(size=(n, hm))
    return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


def train_dln(data: dict[str, np.ndarray], widths: tuple[int, ...] = WIDTHS, *,
              init_scale: float = INIT_SCALE, learning_rate: float = LEARNING_RATE,
              steps: int = STEPS, num_checkpoints: int = NUM_CHECKPOINTS, record_every: int = 50,
              seed: int = 0) -> TrainingRun:  # fmt: skip
    """Full-batch gradient descent on L_n(W) = (1/n)·Σ_i ½‖y_i − W_M⋯W_1·x_i‖² from
    W_l ~ init_scale·N(0, 1); checkpoints at ``num_checkpoints`` evenly spaced steps ending at
    ``steps`` (each a multiple of ``record_every``)."""
    shapes = [(widths[i + 1], widths[i]) for i in range(len(widths) - 1)]
    rng = np.random.default_rng(seed + 1)
    params = [jnp.asarray(init_scale * rng.normal(size=s), jnp.float32) for s in shapes]
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])

    def loss(ws: list[jax.Array]) -> jax.Array:
        f = x
        for w in ws:
            f = f @ w.T
        return 0.5 * jnp.mean(jnp.sum((y - f) ** 2, axis=1))

    @jax.jit
    def block(ws: list[jax.Array]) -> tuple[list[jax.Array], jax.Array]:
        def step(v: list[jax.Array], _: None) -> tuple[list[jax.Array], None]:
            g = jax.grad(loss)(v)
            return [a - learning_rate * b for a, b in zip(v, g, strict=True)], None

        ws, _ = jax.lax.scan(step, ws, None, length=record_every)
        return ws, loss(ws)

    wanted = set(np.linspace(steps / num_checkpoints, steps, num_checkpoints).round().astype(int)
                 // record_every * record_every)  # fmt: skip
    curve_steps, curve_losses = [0], [float(loss(params))]
    kept_steps, kept_losses, kept = [], [], []
    for t in range(record_every, steps + 1, record_every):
        params, value = block(params)
        curve_steps.append(t)
        curve_losses.append(float(value))
        if t in wanted:
            kept_steps.append(t)
            kept_losses.append(float(value))
            kept.append({f"w{i}": np.asarray(w) for i, w in enumerate(params)})
    return TrainingRun(np.array(kept_steps), np.array(kept_losses), kept,
                       np.array(curve_steps), np.array(curve_losses))  # fmt: skip


def save_run(run: TrainingRun, data: dict[str, np.ndarray], out: str | Path) -> list[Path]:
    """Write ``data.npz``, ``checkpoints/step_<t>.npz`` and ``training.csv`` (checkpoint,step,
    loss: the training log a sweep reads) and ``curve.csv`` (step,loss) under ``out``."""
    out = Path(out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    np.savez(out / "data.npz", **data)
    paths = []
    with open(out / "training.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", "step", "loss"])
        for t, value, weights in zip(run.steps, run.losses, run.weights, strict=True):
            path = out / "checkpoints" / f"step_{t:06d}.npz"
            np.savez(path, **weights)
            paths.append(path)
            writer.writerow([path.stem, int(t), f"{value:.8g}"])
    with open(out / "curve.csv", "w", newline="") as f:
        csv.writer(f).writerows([["step", "loss"], *zip(run.curve_steps, run.curve_losses,
                                                          strict=True)])  # fmt: skip
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the zoo DLN from small init; save checkpoints")
    p.add_argument("--out", default="examples/dln_training")
    p.add_argument("--num-checkpoints", type=int, default=NUM_CHECKPOINTS)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = teacher_data(seed=args.seed)
    run = train_dln(data, steps=args.steps, num_checkpoints=args.num_checkpoints, seed=args.seed)
    paths = save_run(run, data, args.out)
    for t, value in zip(run.steps, run.losses, strict=True):
        print(f"  step {t:6d}  loss {value:.4f}")
    print(f"wrote {len(paths)} checkpoints, data.npz and training.csv to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
