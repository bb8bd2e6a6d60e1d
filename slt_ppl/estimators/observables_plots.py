"""Plots of the posterior observables: a BIF heat map with its most influential pairs listed, and
per-token values (susceptibilities, per-token LLCs) coloured on the text they belong to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_bif(
    result: xr.Dataset,
    top: int = 10,
    labels: Sequence[str] | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Any:
    """Heat map of a :func:`slt_ppl.bif` result (a diverging colour scale centred at 0), beside
    the ``top`` off-diagonal pairs with the largest |BIF| and their standard errors. ``labels``
    name the items (default their indices). Returns the figure (saved to ``path`` if given)."""
    from slt_ppl.estimators.observables import top_pairs

    plt = _pyplot()
    value = result["bif"].values
    size = value.shape[0]
    names = [str(i) for i in range(size)] if labels is None else [str(s) for s in labels]
    if len(names) != size:
        raise SettingError(f"labels has {len(names)} entries for a {size} x {size} BIF")
    kind = result.attrs.get("kind", "covariance")
    limit = 1.0 if kind == "correlation" else float(np.max(np.abs(value))) or 1.0
    fig, (ax, side) = plt.subplots(
        1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [3, 2]}, constrained_layout=True
    )
    image = ax.imshow(value, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label=f"BIF ({kind})")
    if size <= 30:
        ax.set_xticks(range(size), names, rotation=90, fontsize=7)
        ax.set_yticks(range(size), names, fontsize=7)
    ax.set_xlabel("item j")
    ax.set_ylabel("item i")
    pairs = top_pairs(result, k=top)
    lines = [f"most influential pairs ({kind})", ""]
    lines += [
        f"{names[int(r.i)]:>8} – {names[int(r.j)]:<8} {r.bif:+.3g} ± {r.se:.2g}"
        for r in pairs.itertuples()
    ]
    side.axis("off")
    side.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9)
    ax.set_title(title or f"BIF of {result.attrs.get('observable', '')}")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_token_values(
    tokens: Sequence[str],
    values: Sequence[float] | np.ndarray,
    path: str | Path | None = None,
    title: str | None = None,
    label: str = "susceptibility",
    line_chars: int = 60,
) -> Any:
    """The tokens of a text laid out in reading order (monospace, wrapped at ``line_chars``), each
    on a background coloured by its value (diverging scale centred at 0: red positive, blue
    negative), with a colour bar. Returns the figure (saved to ``path`` if given)."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    values = np.asarray(values, dtype=float)
    if values.shape != (len(tokens),):
        raise SettingError(f"{len(tokens)} tokens but values of shape {values.shape}")
    limit = float(np.nanmax(np.abs(values))) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    cmap = plt.get_cmap("RdBu_r")
    positions, col, row = [], 0, 0
    for token in tokens:
        width = max(1, len(token))
        if col and col + width > line_chars:
            col, row = 0, row + 1
        positions.append((col, row))
        col += width + 1
    rows = row + 1
    fig, ax = plt.subplots(figsize=(0.13 * line_chars + 1.5, 0.4 * rows + 1.0))
    for token, (x, y), v in zip(tokens, positions, values, strict=True):
        color = cmap(norm(v)) if np.isfinite(v) else (0.85, 0.85, 0.85, 1.0)
        dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 0.5  # luma
        ax.text(x, -y, token, family="monospace", fontsize=10, va="center", ha="left",
                color="white" if dark else "black",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1.5})  # fmt: skip
    ax.set_xlim(-1, line_chars + 1)
    ax.set_ylim(-rows, 1)
    ax.axis("off")
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=ax, orientation="horizontal", fraction=0.08, pad=0.02, label=label)
    if title:
        ax.set_title(title)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
