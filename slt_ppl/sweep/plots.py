"""The two plots of a sweep.

- λ̂ along training: λ̂ ± 2 se at each checkpoint (x = training step when a training log was
  given), one line per setting of the other grid axes, hollow markers where the verdict is
  unhealthy, the training loss on a twin axis.
- The calibration grid: λ̂ over (ε, nβ) or (ε, γ) at a few checkpoints, each cell coloured by λ̂
  and hatched where the verdict is unhealthy. A trustworthy region is a block of unhatched cells
  of about the same colour: λ̂ that does not move with ε (no discretization bias) nor with nβ or γ
  beyond what the theory allows. Cells that change colour along ε at fixed nβ and γ mean the step
  size still biases λ̂ (Lau et al. 2023, App. on hyperparameter calibration).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import xarray as xr

MAX_LINES = 8
MAX_PANELS = 4
FENCE = 1.5  # Tukey's fences: values beyond FENCE·IQR outside the quartiles saturate the scale


def robust_limits(values: np.ndarray) -> tuple[float, float]:
    """(low, high) that hold every finite value except outliers beyond Tukey's fences, so one
    chain that left w* (λ̂ = −10⁴ next to 12) does not flatten every other value; the outliers
    are drawn at the edge (arrows / saturated colours) with their numbers printed."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    q1, q3 = np.percentile(finite, [25, 75])
    pad = FENCE * (q3 - q1)
    inside = finite[(finite >= q1 - pad) & (finite <= q3 + pad)]
    low, high = float(inside.min()), float(inside.max())
    return (low - 0.5, high + 0.5) if high - low < 1e-12 else (low, high)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_along_training(ds: xr.Dataset, path: str | Path | None = None, title: str | None = None):
    """λ̂ ± 2 se per checkpoint for (up to ``MAX_LINES``) settings of the other grid axes."""
    plt = _pyplot()
    others = [d for d in ds["llc"].dims if d != "checkpoint"]
    combos = list(itertools.product(*[range(ds.sizes[d]) for d in others]))[:MAX_LINES]
    has_steps = "training_step" in ds.coords and bool(np.all(ds["training_step"].values >= 0))
    x = ds["training_step"].values if has_steps else np.arange(ds.sizes["checkpoint"])
    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    for j, combo in enumerate(combos):
        sel = ds.isel(dict(zip(others, combo, strict=True)))
        name = ", ".join(f"{d}={sel[d].values.item()}" for d in others) or "λ̂"
        llc, se = sel["llc"].values, sel["llc_se"].values
        color = f"C{j % 10}"
        ax.errorbar(x, llc, yerr=2 * se, color=color, lw=1, capsize=3, label=name)
        good = sel["healthy"].values == 1
        ax.plot(x[good], llc[good], "o", color=color, ms=5)
        ax.plot(x[~good], llc[~good], "o", mfc="white", mec=color, ms=5)
    low, high = robust_limits(ds["llc"].values.ravel())
    margin = 0.08 * (high - low)
    ax.set_ylim(low - margin, high + margin)
    off = int(np.sum((ds["llc"].values < low - margin) | (ds["llc"].values > high + margin)))
    if off:
        ax.text(0.01, 0.99, f"{off} value(s) off scale (chains that left w*: see the "
                "calibration grid)", transform=ax.transAxes, fontsize=7, va="top",
                bbox={"fc": "white", "ec": "none", "alpha": 0.8})  # fmt: skip
    ax.set_xlabel("training step" if has_steps else "checkpoint")
    if not has_steps:
        ax.set_xticks(x, [str(c) for c in ds["checkpoint"].values], rotation=45, ha="right")
    ax.set_ylabel("λ̂ ± 2 se (hollow: unhealthy verdict)")
    if "train_loss" in ds.coords and np.any(np.isfinite(ds["train_loss"].values)):
        twin = ax.twinx()
        twin.plot(x, ds["train_loss"].values, "k--", lw=1, alpha=0.6, label="training loss")
        twin.set_ylabel("training loss (dashed)")
        twin.set_yscale("log")
        from matplotlib.ticker import FormatStrFormatter

        twin.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        twin.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.legend(fontsize=7, loc="lower right", framealpha=0.7)
    ax.set_title(title or "LLC along training")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_calibration(ds: xr.Dataset, path: str | Path | None = None, x: str = "step_size",
                     y: str | None = "nbeta", checkpoints: list[str] | None = None):  # fmt: skip
    """λ̂ over the (``x``, ``y``) grid (``y`` None: one row) at up to ``MAX_PANELS`` checkpoints
    (default: spread over the sweep); other grid axes at their first value (named in the title)."""
    plt = _pyplot()
    names = list(ds["checkpoint"].values)
    if checkpoints is None:
        picks = np.unique(np.linspace(0, len(names) - 1, min(MAX_PANELS, len(names))).astype(int))
        checkpoints = [names[i] for i in picks]
    fixed = {d: 0 for d in ds["llc"].dims if d not in ("checkpoint", x, y)}
    sub = ds.isel(fixed)
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(4.2 * len(checkpoints) + 1, 3.8),
                             constrained_layout=True, squeeze=False)  # fmt: skip
    for ax, name in zip(axes[0], checkpoints, strict=True):
        cell = sub.sel(checkpoint=name)
        if y is not None:
            cell = cell.transpose(y, x)
        grid = np.atleast_2d(cell["llc"].values)
        se = np.atleast_2d(cell["llc_se"].values)
        bad = np.atleast_2d(cell["healthy"].values != 1)
        vmin, vmax = robust_limits(grid)  # per checkpoint: λ̂ differs between checkpoints
        mesh = ax.pcolormesh(grid, cmap="viridis", vmin=vmin, vmax=vmax)
        fig.colorbar(mesh, ax=ax, extend="both", shrink=0.9)
        for (i, j), value in np.ndenumerate(grid):
            if not np.isfinite(value):  # failed or not run: grey, says which
                status = np.atleast_2d(cell["status"].values)[i, j]
                ax.add_patch(plt.Rectangle((j, i), 1, 1, color="0.85"))
                ax.text(j + 0.5, i + 0.5, str(status).replace("_", " "), ha="center",
                        va="center", fontsize=8, color="0.3")  # fmt: skip
                continue
            if bad[i, j]:
                ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, hatch="///", ec="0.85", lw=0))
            ax.text(j + 0.5, i + 0.5, f"{value:.3g}\n± {se[i, j]:.2g}", ha="center", va="center", fontsize=8,
                    color="white" if value < (vmin + vmax) / 2 else "black")  # fmt: skip
        ax.set_xticks(np.arange(grid.shape[1]) + 0.5, [f"{v:.3g}" for v in cell[x].values])
        ax.set_xlabel("ε (step size)" if x == "step_size" else x)
        if y is not None:
            ax.set_yticks(np.arange(grid.shape[0]) + 0.5, [f"{v:.4g}" for v in cell[y].values])
            ax.set_ylabel({"nbeta": "nβ", "gamma": "γ"}.get(y, y))
        else:
            ax.set_yticks([])
        step = cell.coords.get("training_step")
        ax.set_title(f"{name}" + (f" (step {int(step)})" if step is not None else ""), fontsize=9)
    rest = ", ".join(f"{d}={sub[d].values.item()}" for d in fixed)
    over = "ε" + {"nbeta": " × nβ", "gamma": " × γ", None: ""}.get(y, f" × {y}")
    fig.suptitle(f"calibration grid: λ̂ over {over}, hatched where the verdict is unhealthy"
                 + (f" (at {rest})" if rest else ""))  # fmt: skip
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_sweep(ds: xr.Dataset, out: str | Path) -> list[Path]:
    """Every plot that fits the sweep's axes, written to ``out``; returns the paths."""
    plt = _pyplot()
    out, written = Path(out), []
    if ds.sizes["checkpoint"] > 1:
        fig = plot_along_training(ds, out / "llc_along_training.png")
        written.append(out / "llc_along_training.png")
        plt.close(fig)
    if "step_size" in ds.dims:
        pairs = [y for y in ("nbeta", "gamma") if y in ds.dims] or [None]
        for y in pairs:
            path = out / f"calibration_step_size_{y or 'only'}.png"
            plt.close(plot_calibration(ds, path, x="step_size", y=y))
            written.append(path)
    return written
