"""Write the validation report: ``report.md`` (tables and verdicts), one PNG per suite, and
``validation.nc`` (every number, one NetCDF group per suite) into an output directory.

Usage: ``python -m validation.report --out DIR [--quick | --full]`` or ``slt-ppl validate``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import xarray as xr


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        v = float(value)
        if not np.isfinite(v):
            return "nan"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(value)


PERCENT = ("rel_err", "exact_gap")
# columns not defined for every row (RRR rows have no exact value)
BLANK_IF_NAN = ("exact", "exact_sxy0", "exact_gap", "z_exact")


def table(ds: xr.Dataset, dim: str, columns: list[str]) -> str:
    """A Markdown table of the variables ``columns`` (and coordinates) along ``dim``."""
    cols = [c for c in columns if c in ds.variables]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i in range(ds.sizes[dim]):
        row = ds.isel({dim: i})
        cells = []
        for c in cols:
            v = row[c].values
            v = v.item() if np.ndim(v) == 0 else v
            if c in BLANK_IF_NAN and isinstance(v, float) and not np.isfinite(v):
                cells.append("–")
            elif c in PERCENT and isinstance(v, float):
                cells.append(f"{v:+.1%}")
            else:
                cells.append(_fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_dln(ds: xr.Dataset, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for method, marker in (("auto", "o"), ("hand", "s")):
        sel = ds.where(ds["step_method"] == method, drop=True)
        if sel.sizes.get("run", 0) == 0:
            continue
        ax.errorbar(sel["theory"], sel["llc"], yerr=sel["llc_se"], fmt=marker, ms=5, capsize=2,
                    label=f"SGLD, {method} ε", alpha=0.8)  # fmt: skip
    lim = [0, 1.1 * float(max(ds["theory"].max(), np.nanmax(ds["llc"].values)))]
    ax.plot(lim, lim, "k--", lw=1, label="λ̂ = λ")
    ax.set(xlim=lim, ylim=lim, xlabel="Aoyagi's λ", ylabel="λ̂ at the true parameter",
           title="Random DLNs: estimate vs theory")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_mala(ds: xr.Dataset, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for kernel, marker in (("sgld", "o"), ("mala", "s")):
        sel = ds.sel(kernel=kernel)
        ax1.errorbar(sel["n"], sel["llc"], yerr=3 * sel["llc_se"], fmt=marker + "-", capsize=3,
                     label=f"{kernel.upper()} (±3 se)")  # fmt: skip
        ax2.plot(sel["n"], sel["wall_time_s"], marker + "-", label=kernel.upper())
    ax1.set(xscale="log", xlabel="n", ylabel="λ̂", title="ReLU 10-20-20-10: SGLD (B=32) vs MALA")
    ax2.set(xscale="log", yscale="log", xlabel="n", ylabel="wall time [s]", title="Cost")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_closed(ds: xr.Dataset, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    rrr = ds.where(ds["family"] == "rrr", drop=True)
    if rrr.sizes.get("case", 0):
        ax1.errorbar(rrr["theory"], rrr["llc"], yerr=3 * rrr["llc_se"], fmt="o", capsize=3,
                     label="SGLD λ̂ (±3 se)")  # fmt: skip
        top = 1.15 * float(max(rrr["theory"].max(), rrr["llc"].max()))
        ax1.plot([0, top], [0, top], "k--", lw=1, label="λ̂ = λ")
        ax1.fill_between([0, top], [0, 0.8 * top], [0, 1.2 * top], color="gray", alpha=0.15,
                         label="±20 %")  # fmt: skip
    ax1.set(xlabel="Aoyagi–Watanabe λ", ylabel="λ̂", title="Reduced-rank regression")
    ax1.legend(loc="upper left")
    cross = ds.where(ds["family"] == "crossing", drop=True)
    x = np.arange(cross.sizes.get("case", 0))
    ax2.errorbar(x, cross["llc"], yerr=3 * cross["llc_se"], fmt="^", color="C1", capsize=3,
                 label="SGLD λ̂ (±3 se)")  # fmt: skip
    if "exact" in cross:
        ax2.plot(x, cross["exact"], "kx", ms=9, mew=2, label="exact finite-n λ (quadrature)")
    ax2.plot(x, cross["theory"], "_", color="C2", ms=30, mew=2, label="closed-form λ (n → ∞)")
    ax2.set_xticks(x, [str(c).replace("crossing ", "") for c in cross["case"].values])
    ax2.set(ylabel="λ", ylim=(0, 1.4 * float(cross["theory"].max())), title="Normal crossings")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_rescaling(ds: xr.Dataset, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(
        ds["alpha"],
        ds["llc"],
        yerr=ds["llc_se"],
        fmt="o-",
        capsize=3,
        label="SGLD, matching diagonal G",
    )
    mean = float(ds["llc"].mean())
    ax.axhspan(0.95 * mean, 1.05 * mean, color="gray", alpha=0.2, label="mean ± 5 %")
    if "plain_sgld_llc" in ds.attrs:  # the contrast: same posterior, no matching preconditioner
        ax.errorbar([ds.attrs["plain_sgld_alpha"]], [ds.attrs["plain_sgld_llc"]],
                    yerr=[ds.attrs["plain_sgld_llc_se"]], fmt="s", color="C3", capsize=3,
                    label="plain SGLD (own auto ε)")  # fmt: skip
    ax.set(xscale="log", xlabel="α  (W1 → α·W1, W2 → W2/α)", ylabel="λ̂",
           title="Rescaling invariance (preconditioned SGLD)", ylim=(0, 1.5 * mean))  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_training(ds: xr.Dataset, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [2, 3]})  # fmt: skip
    steps, ranks = ds["curve_step"].values, ds["curve_rank"].values
    ax1.plot(steps, ds["curve_loss"], "k-", lw=1.2, label="training loss")
    ax1.plot(ds["step"], ds["train_loss"], "o", color="C1", ms=5, label="checkpoints")
    ax1.set(ylabel="training loss (½ MSE)", yscale="log",
            title="LLC along training (DLN 6-6-6-6, small initialization)")  # fmt: skip
    changes = np.flatnonzero(np.diff(ranks) != 0) + 1
    for ax in (ax1, ax2):
        for i in changes:
            ax.axvline(steps[i], color="gray", ls="--", lw=0.8)
    for i in changes:
        ax1.annotate(
            f"rank {int(ranks[i])}",
            (steps[i], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color="gray",
        )
    ax1.legend(loc="upper right", fontsize=8)
    ax2.errorbar(
        ds["step"],
        ds["llc"],
        yerr=3 * ds["llc_se"],
        fmt="o",
        color="C1",
        capsize=3,
        label="λ̂ at checkpoint (±3 se)",
    )
    ax2.plot(
        ds["step"],
        ds["llc_quadratic"],
        "x",
        color="C0",
        ms=7,
        label="½·tr[nβH(nβH+γ)⁻¹] (Gaussian at this γ)",
    )
    # Aoyagi's λ at each plateau's rank, drawn across the plateau
    label = "Aoyagi's λ at that rank"
    for a, b in itertools.pairwise(np.r_[0, changes, len(steps)]):
        sel = ds["effective_rank"].values == ranks[a]
        if sel.any():
            lam = float(ds["theory_at_rank"].values[sel][0])
            ax2.hlines(lam, steps[a], steps[b - 1], color="C2", lw=1.5, label=label)
            label = None
    ax2.set(xlabel="gradient step", ylabel="λ̂", ylim=(0, None))
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {
    "dln_sweep": _plot_dln,
    "sgld_vs_mala": _plot_mala,
    "closed_forms": _plot_closed,
    "rescaling": _plot_rescaling,
    "llc_along_training": _plot_training,
}
TABLES = {
    "dln_sweep": ("run", ["size_class", "widths", "rank", "dim", "step_method", "theory", "llc",
                          "llc_se", "llc2", "rel_err", "step_size", "healthy", "wall_time_s"]),
    "closed_forms": ("case", ["case", "n", "theory", "llc", "llc_se", "rel_err", "exact",
                              "z_exact", "exact_gap", "exact_sxy0", "gamma", "step_size",
                              "healthy"]),
    "rescaling": ("alpha", ["alpha", "llc", "llc_se", "rhat", "healthy", "step_size"]),
    "llc_along_training": ("checkpoint", ["step", "phase", "train_loss", "effective_rank", "llc",
                                          "llc_se", "llc_quadratic", "theory_at_rank",
                                          "hessian_min", "healthy"]),
}  # fmt: skip


def _mala_table(ds: xr.Dataset) -> str:
    lines = [
        "| n | λ̂ SGLD | se | λ̂ MALA | se | |Δ|/combined se | agrees | SGLD time [s] "
        "| MALA time [s] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in ds["n"].values:
        s, m = ds.sel(n=n, kernel="sgld"), ds.sel(n=n, kernel="mala")
        zz = abs(float(s["difference"])) / float(s["combined_se"])
        lines.append(
            f"| {int(n)} | {float(s.llc):.3g} | {float(s.llc_se):.2g} | {float(m.llc):.3g} | "
            f"{float(m.llc_se):.2g} | {zz:.2f} | {bool(s.agrees_with_reference)} | "
            f"{float(s.wall_time_s):.1f} | {float(m.wall_time_s):.1f} |"
        )
    return "\n".join(lines)


def _clean_attrs(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    for var in ds.variables.values():
        var.attrs = {k: (json.dumps(v) if isinstance(v, dict | list) else v)
                     for k, v in var.attrs.items()}  # fmt: skip
    ds.attrs = {k: (json.dumps(v) if isinstance(v, dict | list | bool) else v)
                for k, v in ds.attrs.items()}  # fmt: skip
    for name in list(ds.variables):
        if ds[name].dtype == bool:
            ds[name] = ds[name].astype(np.int8)
        elif ds[name].dtype.kind in "OU":
            ds[name] = ds[name].astype(str)
    return ds


def write_report(
    results: dict[str, xr.Dataset],
    out: str | Path,
    *,
    mode: str = "quick",
    total_s: float | None = None,
) -> Path:
    """Write ``report.md``, ``<suite>.png`` and ``validation.nc`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# slt_ppl validation report ({mode})", ""]
    if total_s is not None:
        lines += [f"Total wall time: {total_s:.0f} s.", ""]
    lines += ["| suite | verdict | criterion | summary | time [s] |", "|---|---|---|---|---|"]
    for name, ds in results.items():
        verdict = "PASS" if ds.attrs.get("passed") else "FAIL"
        lines.append(f"| {name} | {verdict} | {ds.attrs['criterion']} | {ds.attrs['summary']} | "
                     f"{ds.attrs['wall_time_s']:.0f} |")  # fmt: skip
    for name, ds in results.items():
        lines += ["", f"## {ds.attrs['title']}", "", f"Criterion: {ds.attrs['criterion']}. "
                  f"Result: **{'PASS' if ds.attrs['passed'] else 'FAIL'}**: "
                  f"{ds.attrs['summary']}.",
                  "", f"Settings: `{ds.attrs['settings']}`", ""]  # fmt: skip
        if name == "sgld_vs_mala":
            lines.append(_mala_table(ds))
        elif name == "singular":
            from validation.singular import markdown_table

            lines.append(markdown_table(ds))
        elif name in TABLES:
            dim, cols = TABLES[name]
            lines.append(table(ds, dim, cols))
        if name == "closed_forms" and "exact" in ds:
            lines += ["", "Crossings: `exact` is the exact LLC of the sampled finite-n posterior "
                      "(`models.quadrature`), `z_exact` = (λ̂ − exact)/se (the pass criterion), "
                      "`exact_gap` = exact/theory − 1, the finite-n bias of the target itself, "
                      "not of the sampler; `exact_sxy0` is exact with Σxy set to 0, which "
                      "separates the localization/finite-nβ part of that gap from this data "
                      "set's cross term."]  # fmt: skip
        if name in PLOTS:
            png = out / f"{name}.png"
            PLOTS[name](ds, png)
            lines += ["", f"![{name}]({png.name})"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    tree = xr.DataTree.from_dict({f"/{k}": _clean_attrs(v) for k, v in results.items()})
    tree.to_netcdf(out / "validation.nc")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m validation.report``: same as ``slt-ppl validate``."""
    from validation.cli import main_validate

    parser = argparse.ArgumentParser(add_help=False)
    parser.parse_known_args(argv)
    return main_validate(argv)


if __name__ == "__main__":
    raise SystemExit(main())
