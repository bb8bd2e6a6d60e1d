"""Plots of sampling results (part of the face: only the CLI, reports and users call these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr


def plot_traces(result: xr.DataTree, path: str | Path | None = None, title: str | None = None):
    """Loss traces nβ·(L_B(w_t) − L_B(w*)) per chain (burn-in shaded) and the acceptance trace;
    with several temperatures, each temperature's chains (nβ·factor, dashed after the first).

    The top panel is what the LLC averages: after burn-in it must be flat (a slow rise means λ̂ is
    underestimated, Furman & Lau 2024). The bottom panel shows the MALA-acceptance diagnostic with
    its 0.90–0.95 target band (Metropolis acceptance for MALA/HMC/NUTS).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    nbeta = float(result.attrs["nbeta"])
    thin = int(result.attrs.get("thin", 1))
    warm = result["warmup_sample_stats"].to_dataset()
    main = result["sample_stats"].to_dataset()
    n_warm = warm.sizes["draw"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    # a multi-temperature result: every temperature's chains, nβ·factor each, dashed above the first
    factors = main["temperature"].values if "temperature" in main.dims else [None]
    for k, factor in enumerate(factors):
        w_t = warm if factor is None else warm.sel(temperature=factor)
        m_t = main if factor is None else main.sel(temperature=factor)
        scale = nbeta * (1.0 if factor is None else float(factor))
        for c in m_t["chain"].values:
            y = np.concatenate(
                [
                    (w_t["loss"] - w_t["loss_center"]).sel(chain=c).values,
                    (m_t["loss"] - m_t["loss_center"]).sel(chain=c).values,
                ]
            )
            steps = np.arange(y.size) * thin
            label = f"chain {c}" if factor is None else f"chain {c}, nβ×{factor:g}"
            ax1.plot(steps, scale * y, lw=0.6, alpha=0.8, ls="-" if k == 0 else "--", label=label)
            acc = np.concatenate(
                [w_t["acceptance"].sel(chain=c).values, m_t["acceptance"].sel(chain=c).values]
            )
            keep = np.isfinite(acc)
            ax2.plot(steps[keep], acc[keep], ".", ms=3, alpha=0.7)
    if n_warm:
        for ax in (ax1, ax2):
            ax.axvspan(0, n_warm * thin, color="0.9", zorder=-1, label=None)
    ax1.set_ylabel("nβ·(L_B(w) − L_B(w*))")
    ax1.legend(fontsize=7, ncol=4, loc="upper right")
    ax1.set_title(title or f"{result.attrs.get('model', '')} — {result.attrs.get('kernel', '')}")
    ax2.axhspan(0.90, 0.95, color="tab:green", alpha=0.15)
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("acceptance")
    ax2.set_xlabel("step (burn-in shaded)")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
