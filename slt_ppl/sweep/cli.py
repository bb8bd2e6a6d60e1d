"""``slt-ppl sweep sweep.toml [--address ADDRESS] [--out DIR]``."""

from __future__ import annotations

import argparse


def main_sweep(argv: list[str]) -> int:
    """Run the sweep file's tasks on Ray (local unless --address or RAY_ADDRESS), write
    ``<out>/results.zarr``, one record per task in ``<out>/tasks`` and the plots; exit status 1
    when any task failed."""
    p = argparse.ArgumentParser(prog="slt-ppl sweep", description=main_sweep.__doc__)
    p.add_argument("spec", help="sweep TOML file (docs/sweeps.md)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, "
                   "else a local Ray on this machine's cores)")  # fmt: skip
    p.add_argument("--out", default="sweep_out", help="output folder (default sweep_out)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default all)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    from slt_ppl.sweep.runner import sweep

    ds = sweep(args.spec, out=args.out, address=args.address, num_cpus=args.num_cpus,
               plots=not args.no_plots)  # fmt: skip
    failed = ds["status"].values == "failed"
    print(f"slt-ppl sweep: {ds.attrs['tasks_run']} run, {ds.attrs['tasks_skipped']} skipped, "
          f"{int(failed.sum())} failed; wrote {args.out}/results.zarr")  # fmt: skip
    for err in sorted(set(ds["error"].values[failed])):
        print(f"  failed: {err}")
    return 1 if failed.any() else 0
