"""``slt-ppl validate [--quick | --full] [--out DIR] [--no-progress] [--only SUITE ...]``.

The lead's ``slt_ppl.cli`` dispatches the ``validate`` subcommand to :func:`main_validate`.
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="suites run in this many worker processes (default: the number of CPU cores, at "
        "most the number of suites; 1 runs them one after another in this process)",
    )
    parser.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="JAX persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else "
        "$XDG_CACHE_HOME/slt_ppl/jax or ~/.cache/slt_ppl/jax); 'off' disables it",
    )
    return parser


def enable_compile_cache(where: str | None) -> str | None:
    """Point JAX's persistent compilation cache at ``where`` (see ``--compile-cache``).

    The suites compile one sampling program per posterior and kernel; programs with equal HLO (the
    DLN sweep's auto and hand-ε runs of one network, a second ``validate`` run) are then read back
    instead of recompiled. A cache the user configured for JAX is left as it is.
    """
    import jax

    if where == "off":
        return None
    configured = jax.config.jax_compilation_cache_dir
    if where is None and configured:
        return str(configured)
    if where is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "slt_ppl", "jax")
    try:
        os.makedirs(where, exist_ok=True)
    except OSError:
        return None  # an unwritable cache location only costs compile time
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return where


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + workers.ru_utime + workers.ru_stime


def main_validate(argv: list[str] | None = None) -> int:
    """Run the suites, write the report to ``--out`` and return 0 if every suite passed, else 1."""
    from validation.report import write_report
    from validation.suites import run_all

    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    cache = enable_compile_cache(args.compile_cache)
    log(f"slt-ppl validate --{args.mode}: writing to {args.out}"
        + (f" (compilation cache: {cache})" if cache else ""))  # fmt: skip
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise SystemExit("slt-ppl validate: --jobs must be at least 1")
    results = run_all(args.mode, progress=not args.no_progress, log=log, only=args.only, jobs=jobs)
    total = time.perf_counter() - t0
    report = write_report(results, args.out, mode=args.mode, total_s=total)
    failed = [name for name, ds in results.items() if not ds.attrs["passed"]]
    log(
        f"done in {total:.0f} s wall ({_cpu_seconds() - cpu0:.0f} s CPU, workers included); report: {report}"
    )
    log("all suites passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main_validate(sys.argv[1:]))
