"""``slt-ppl spectral path/to/model``: the command-line face of :func:`spectral`.

Reads a torch state dict (``.pt``/``.pth``, loaded with ``weights_only=True``), a ``.safetensors``
file (needs the ``safetensors`` package) or a ``.npz`` archive, prints a per-layer table, writes
``spectral.nc`` (NetCDF, engine h5netcdf) and, unless ``--no-plots``, PNG figures into ``--out``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from slt_ppl.errors import DataError, SLTError


def _load(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"spectral: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".bin"):
        try:
            import torch
        except ImportError as err:
            raise DataError(f"spectral: reading {path.name} needs torch: {err}") from err
        return torch.load(path, map_location="cpu", weights_only=True)
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as err:
            raise DataError(
                f"spectral: reading {path.name} needs the 'safetensors' package "
                f"(pip install safetensors): {err}"
            ) from err
        return load_file(str(path))
    if suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    raise DataError(
        f"spectral: unknown file type {suffix!r} for {path} (.pt, .pth, .safetensors, .npz)"
    )


def _table(ds: Any) -> str:
    cols = ("alpha", "D", "xmin", "log_spectral_norm", "num_spikes")
    header = f"{'layer':<32} {'type':<10} {'shape':<16}" + "".join(f"{c:>18}" for c in cols)
    lines = [header + "  warning", "-" * (len(header) + 9)]
    for name in ds["layer"].values:
        row = ds.sel(layer=name)
        vals = "".join(
            f"{float(row[c]):>18.4g}" if c != "num_spikes" else f"{int(row[c]):>18d}" for c in cols
        )
        lines.append(
            f"{str(name)[:32]:<32} {str(row['layer_type'].values)[:10]:<10} "
            f"{str(row['layer_shape'].values)[:16]:<16}{vals}  {row['warning'].values}"
        )
    lines.append("")
    lines.append(
        f"model averages: alpha={float(ds['model_alpha']):.4g} "
        f"alpha_weighted={float(ds['model_alpha_weighted']):.4g} "
        f"log_spectral_norm={float(ds['model_log_spectral_norm']):.4g} "
        f"log_norm={float(ds['model_log_norm']):.4g}"
    )
    if ds.attrs.get("alpha_excluded_layers"):
        lines.append(
            f"excluded from the alpha averages (alpha >= {ds.attrs['exclude_alpha_ge']}): "
            f"{ds.attrs['alpha_excluded_layers']}"
        )
    if ds.attrs.get("skipped"):
        lines.append("skipped: " + ds.attrs["skipped"].replace("; ", "\n         "))
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def main_spectral(argv: list[str] | None = None) -> int:
    """Run ``slt-ppl spectral``; returns the process exit code (0 ok, 1 error, 2 usage)."""
    parser = argparse.ArgumentParser(
        prog="slt-ppl spectral",
        description="Heavy-tailed spectral metrics (alpha, D, norms, MP spikes) per layer.",
    )
    parser.add_argument("path", type=Path, help="model weights: .pt/.pth, .safetensors or .npz")
    parser.add_argument("--convention", choices=("slt_ppl", "weightwatcher"), default="slt_ppl")
    parser.add_argument("--fit", choices=("PL", "TPL"), default="PL")
    parser.add_argument("--min-evals", type=int, default=8)
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: ./spectral_<name>)"
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG figures")
    args = parser.parse_args(argv)

    from slt_ppl.estimators.spectral.api import spectral

    try:
        weights = _load(args.path)
        ds = spectral(weights, convention=args.convention, fit=args.fit, min_evals=args.min_evals)
    except SLTError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = args.out if args.out is not None else Path.cwd() / f"spectral_{_safe(args.path.stem)}"
    out.mkdir(parents=True, exist_ok=True)
    print(_table(ds))
    nc = out / "spectral.nc"
    ds.to_netcdf(nc, engine="h5netcdf")
    print(f"\nwrote {nc}")
    if not args.no_plots:
        from slt_ppl.estimators.spectral.plots import plot_alpha, plot_esd, plot_ks

        plot_alpha(ds, save=out / "alpha.png")
        for name in ds["layer"].values:
            plot_esd(ds, str(name), save=out / f"esd_{_safe(str(name))}.png")
            plot_ks(ds, str(name), save=out / f"ks_{_safe(str(name))}.png")
        print(f"wrote {2 * ds.sizes['layer'] + 1} PNG figures to {out}")
    return 0
