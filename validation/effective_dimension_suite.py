"""2sED and lower 2sED vs training error for small MLPs on the digits data.

Datres et al. (2024, arXiv 2401.09184) report that 2sED (and its layerwise lower bound) correlates
well with the training error: the larger the (lower) 2sED, the lower the error a briefly trained
model reaches. This suite computes both, from prior draws (information available before training),
for MLPs of several widths and depths, trains each briefly with Adam and reports Spearman's rank
correlation between lower 2sED and the training error (expected negative).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from scipy.stats import spearmanr

import slt_ppl
from validation.mlp_digits import load_digits_data, make_mlp, mlp_layers, train

QUICK = [(2,), (4,), (16,), (4, 4)]
FULL = [(2,), (4,), (8,), (16,), (32,), (4, 4), (16, 16), (32, 32)]


def run_effective_dimension_suite(
    quick: bool = True, out_dir: str | Path | None = None
) -> xr.Dataset:
    """Run the suite; write ``effective_dimension_suite.png`` and ``.nc`` into ``out_dir``."""
    archs = QUICK if quick else FULL
    x, y = load_digits_data(600 if quick else None)
    steps = 150 if quick else 600
    rows = []
    for widths in archs:
        model = make_mlp(widths)
        ds = slt_ppl.two_scale_ed(
            model,
            {"x": x, "y": y},
            layers=mlp_layers(widths),
            num_theta=4 if quick else 8,
            num_samples=48 if quick else 128,
            num_bootstrap=50,
            seed=0,
        )
        _, err = train(widths, x, y, steps)
        rows.append(
            {
                "two_scale_ed": float(ds.two_scale_ed.squeeze()),
                "lower_two_scale_ed": float(ds.lower_two_scale_ed.squeeze()),
                "lower_two_scale_ed_se": float(ds.lower_two_scale_ed_se.squeeze()),
                "d": ds.attrs["d"],
                "train_error": err,
            }
        )
    names = ["-".join(map(str, w)) for w in archs]
    out = xr.Dataset(
        {k: ("model", np.array([r[k] for r in rows])) for k in rows[0]},
        coords={"model": names},
    )
    rho = spearmanr(out.lower_two_scale_ed, out.train_error).statistic
    out.attrs.update(
        spearman_lower_2sed_vs_train_error=float(rho),
        n=len(x),
        train_steps=steps,
        claim="lower 2sED tracks the fit: negative rank correlation with training error",
    )
    if out_dir is not None:
        _plot(out, Path(out_dir))
    return out


def _plot(out: xr.Dataset, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    for var, marker in [("two_scale_ed", "o"), ("lower_two_scale_ed", "s")]:
        ax.scatter(out[var] / out.d, out.train_error, marker=marker, label=var)
    for name in out.model.values:
        ax.annotate(
            str(name),
            (
                float(out.lower_two_scale_ed.sel(model=name) / out.d.sel(model=name)),
                float(out.train_error.sel(model=name)),
            ),
            fontsize=7,
        )
    ax.set_xlabel("dimension / d")
    ax.set_ylabel("training error")
    ax.set_title(
        f"Spearman(lower 2sED, error) = {out.attrs['spearman_lower_2sed_vs_train_error']:.2f}"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "effective_dimension_suite.png", dpi=120)
    plt.close(fig)
    out.to_netcdf(out_dir / "effective_dimension_suite.nc")


if __name__ == "__main__":
    result = run_effective_dimension_suite(quick=True, out_dir="validation/output")
    print(result)
