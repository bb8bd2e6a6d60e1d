"""Figures of a ``spectral`` result (matplotlib, Agg canvas; never shown, optionally saved as PNG).

* :func:`plot_esd`: the ESD on log-log axes with the fitted power-law density
  ``p(λ) = (α − 1)/xmin · (λ/xmin)^{−α}`` (scaled by the tail fraction k/n) and the xmin line.
* :func:`plot_ks`: KS distance against every candidate xmin, with the chosen one marked.
* :func:`plot_alpha`: α per layer (error bars: sigma, or the posterior HDI for draws), with the
  over-trained (α = 2) and under-trained (α = 6) lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from slt_ppl.errors import ResultError
from slt_ppl.estimators.spectral.metrics import OVER_TRAINED, UNDER_TRAINED, fit


def _figure(size: tuple[float, float] = (6.0, 4.0)) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, save: str | Path | None) -> Figure:
    if save is not None:
        fig.savefig(save, dpi=100)
    return fig


def _layer_evals(ds: xr.Dataset, layer: str) -> np.ndarray:
    if "evals" not in ds:
        raise ResultError("plot: the result has no 'evals'; call spectral(..., keep_evals=True)")
    if "chain" in ds["evals"].dims:
        raise ResultError("plot: ESD plots need a single model, not posterior draws")
    ev = ds["evals"].sel(layer=layer).values
    return ev[np.isfinite(ev)]


def plot_esd(ds: xr.Dataset, layer: str, *, save: str | Path | None = None) -> Figure:
    """Log-log ESD of ``layer`` with the fitted tail and the xmin line."""
    ev = _layer_evals(ds, layer)
    row = ds.sel(layer=layer)
    pos = ev[ev > 0]
    fig = _figure()
    ax = fig.add_subplot()
    bins = np.logspace(np.log10(pos.min()), np.log10(pos.max()), 60)
    ax.hist(pos, bins=bins, density=True, color="tab:blue", alpha=0.6, label="ESD")
    alpha, xmin = float(row["alpha"]), float(row["xmin"])
    if np.isfinite(alpha) and np.isfinite(xmin):
        k = int(row["num_tail"])
        x = np.logspace(np.log10(xmin), np.log10(pos.max()), 100)
        dens = (k / pos.size) * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
        ax.plot(x, dens, "r--", label=f"power law α={alpha:.2f}")
        ax.axvline(xmin, color="red", lw=1, label=f"xmin={xmin:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density")
    ax.set_title(f"ESD {layer} ({ds.attrs.get('convention', '')})")
    ax.legend()
    return _save(fig, save)


def plot_ks(ds: xr.Dataset, layer: str, *, save: str | Path | None = None) -> Figure:
    """KS distance D against the candidate xmin for ``layer`` (the fit picks the minimum)."""
    ev = np.sort(_layer_evals(ds, layer))
    convention = str(ds.attrs.get("convention", "slt_ppl"))
    threshold = float(ds["zero_threshold"].sel(layer=layer))
    res = fit(ev, fit_kind="PL", convention=convention, threshold=threshold)
    fig = _figure()
    ax = fig.add_subplot()
    finite = np.isfinite(res.Ds)
    ax.plot(res.xmins[finite], res.Ds[finite], lw=1, label="D(xmin)")
    if res.ok:
        ax.axvline(res.xmin, color="red", lw=1, label=f"xmin={res.xmin:.3g}, D={res.D:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("candidate xmin")
    ax.set_ylabel("KS distance D")
    ax.set_title(f"KS distance vs xmin: {layer}")
    ax.legend()
    return _save(fig, save)


def plot_alpha(ds: xr.Dataset, *, save: str | Path | None = None) -> Figure:
    """α per layer; error bars are sigma (one model) or the posterior interval (draws)."""
    names = [str(n) for n in ds["layer"].values]
    pos = np.arange(len(names))
    fig = _figure((max(6.0, 0.4 * len(names) + 2), 4.0))
    ax = fig.add_subplot()
    if "alpha_summary" in ds:
        s = ds["alpha_summary"]
        labels = [str(v) for v in s["summary"].values]
        mean = s.sel(summary="mean").values
        lo = s.sel(summary=labels[2]).values
        hi = s.sel(summary=labels[3]).values
        err = np.vstack([mean - lo, hi - mean])
        ax.errorbar(pos, mean, yerr=err, fmt="o", capsize=3, label="posterior mean, interval")
    else:
        alpha = ds["alpha"].values
        ax.errorbar(pos, alpha, yerr=ds["sigma"].values, fmt="o", capsize=3, label="α ± sigma")
    ax.axhline(OVER_TRAINED, color="tab:red", ls=":", label="α = 2 (over-trained)")
    ax.axhline(UNDER_TRAINED, color="tab:orange", ls=":", label="α = 6 (under-trained)")
    ax.set_xticks(pos, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("α")
    ax.set_title("Power-law exponent per layer")
    ax.legend(fontsize=8)
    return _save(fig, save)
