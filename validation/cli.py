"""``slt-ppl validate [--quick | --full] [--out DIR] [--no-progress] [--only SUITE ...]``.

The lead's ``slt_ppl.cli`` dispatches the ``validate`` subcommand to :func:`main_validate`.
"""

from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    from validation.suites import SUITES

    parser = argparse.ArgumentParser(
        prog="slt-ppl validate",
        description="Run the validation suites (estimates vs theory and vs MALA) and write "
        "a report (Markdown, PNG plots, NetCDF of every number).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="small cases, under five minutes on two CPU cores (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="full sweeps (1k/10k DLNs, n up to 1e5; 100k DLNs on a GPU)",
    )
    parser.set_defaults(mode="quick")
    parser.add_argument("--out", default="validation_report", help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--only", nargs="+", choices=list(SUITES), help="run only these suites")
    return parser


def main_validate(argv: list[str] | None = None) -> int:
    """Run the suites, write the report to ``--out`` and return 0 if every suite passed, else 1."""
    from validation.report import write_report
    from validation.suites import run_all

    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    log(f"slt-ppl validate --{args.mode}: writing to {args.out}")
    results = run_all(args.mode, progress=not args.no_progress, log=log, only=args.only)
    total = time.perf_counter() - t0
    report = write_report(results, args.out, mode=args.mode, total_s=total)
    failed = [name for name, ds in results.items() if not ds.attrs["passed"]]
    log(f"done in {total:.0f} s wall ({time.process_time() - cpu0:.0f} s CPU); report: {report}")
    log("all suites passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main_validate(sys.argv[1:]))
