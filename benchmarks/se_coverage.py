"""Coverage of ``llc_se`` at the library's defaults on one case of the singular suite (issue 13,
item 5): over sampler seeds 0..S−1 on the same data, z = (λ̂ − exact)/√(se² + se_exact²) should have
sd ≤ 1.25 and |mean| ≤ 1, and ±2 se should cover the exact value ≈ 95 % of the time.

Each run is ``slt_ppl.sample(post, seed=s)`` then ``slt_ppl.llc(res, warn=False)`` (defaults),
with the chains sharing minibatches (the default) or not (``--independent``). Every finished run is
appended to a JSONL file (seed, λ̂, se and its two candidates, ε, thin, the heating estimate Δλ̂,
healthy, wall time, per-chain λ̂) and the chains' paired loss traces to an .npz beside it, so that
other se formulas can be evaluated on the same runs afterwards (``--table`` only reads them)::

    PYTHONPATH=. python benchmarks/se_coverage.py --seeds 20 --out runs.jsonl [--independent]
    PYTHONPATH=. python benchmarks/se_coverage.py --table --out runs.jsonl

The exact value is the suite's NUTS reference of the same posterior (``validation.singular``,
cached in ``--refs``). Default case: RRR 3-3-3 at rank 2, n = 5000, minimal center, data seed 0.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

import slt_ppl
from slt_ppl.estimators._common import loss_difference, stats_of
from slt_ppl.estimators.error_bars import honest_se
from validation.singular import build, cached_reference, rrr_case


def one_run(post, seed: int, shared: bool) -> tuple[dict, np.ndarray, np.ndarray]:
    """One default run: its row and the paired loss-difference traces (chain, draw) times nβ of
    the draws and of the burn-in."""
    t0 = time.perf_counter()
    res = slt_ppl.sample(post, seed=seed, progress=False, shared_batches=shared)
    est = slt_ppl.llc(res, warn=False)
    wall = time.perf_counter() - t0
    stats, attrs = stats_of(res)
    trace = float(attrs["nbeta"]) * loss_difference(stats, attrs, "paired").values
    warm = res["warmup_sample_stats"].to_dataset()
    burnin = float(attrs["nbeta"]) * loss_difference(warm, attrs, "paired").values
    row = {
        "seed": seed,
        "shared_batches": int(shared),
        "llc": float(est["llc"]),
        "se": float(est["llc_se"]),
        "se_arviz": float(est["llc_se_arviz"]),
        "se_batch_means": float(est["llc_se_batch_means"]),
        "step_size": float(res.attrs["step_size"]),
        "thin": int(res.attrs["thin"]),
        "num_draws": int(res.attrs["num_draws"]),
        "bias_estimate": float(est["llc_bias_estimate"]) if "llc_bias_estimate" in est else None,
        "healthy": int(est.attrs["healthy"]),
        "verdict": str(est.attrs["verdict"]),
        "per_chain": [float(v) for v in est["llc_per_chain"].values],
        "ess": float(est["ess"]),
        "rhat": float(est["rhat"]),
        "wall_s": wall,
        "burnin_llc": float(np.nanmean(burnin)),
        "tuning": str(res.attrs.get("step_size_tuning", "")),
    }
    return row, trace, burnin


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def z_summary(llc: np.ndarray, se: np.ndarray, exact: float, exact_se: float) -> dict:
    """z mean (± its se), z sd with its standard error sd/√(2(S−1)), ±2 se coverage."""
    z = (llc - exact) / np.sqrt(se**2 + exact_se**2)
    sd = float(np.std(z, ddof=1)) if len(z) > 1 else math.nan
    return {
        "z_mean": float(np.mean(z)),
        "z_mean_se": sd / math.sqrt(len(z)),
        "z_sd": sd,
        "z_sd_se": sd / math.sqrt(2 * (len(z) - 1)) if len(z) > 1 else math.nan,
        "cover_2se": float(np.mean(np.abs(z) <= 2)),
        "se_rms": float(np.sqrt(np.mean(se**2))),
    }


def current_se(rows: list[dict], traces: Path) -> np.ndarray:
    """llc_se of each run recomputed from its saved trace with this checkout's ``honest_se``."""
    out = []
    for r in rows:
        trace = np.load(traces / f"seed{r['seed']}_shared{r['shared_batches']}.npy")
        out.append(honest_se(xr.DataArray(trace.astype(np.float64), dims=("chain", "draw"))))
    return np.asarray(out)


def table(rows: list[dict], exact: float, exact_se: float, traces: Path) -> str:
    """Per setting: λ̂ over seeds, then z for the se formula before session 6 (max of ArviZ's
    MCSE and batch means, recorded per run), for this checkout's ``llc_se`` (from the saved
    traces), and for the heating-corrected λ̂ − Δλ̂ with this se."""
    head = ("| batches | runs | λ̂ mean | λ̂ sd over seeds | mean Δλ̂ | mean ε | wall/run (s) | "
            "healthy | se formula | rms se | z mean | z sd | ±2se coverage |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]
    for shared in (1, 0):
        sub = sorted((r for r in rows if r["shared_batches"] == shared), key=lambda r: r["seed"])
        if len(sub) < 2:
            continue
        llc = np.asarray([r["llc"] for r in sub])
        bias = np.asarray([r["bias_estimate"] for r in sub], dtype=float)
        old = np.asarray([max(r["se_arviz"], r["se_batch_means"]) for r in sub])
        now = current_se(sub, traces)
        common = (
            f"| {'shared' if shared else 'independent'} | {len(sub)} | {llc.mean():.3f} | "
            f"{np.std(llc, ddof=1):.3f} | {np.nanmean(bias):.3f} | "
            f"{np.mean([r['step_size'] for r in sub]):.3g} | "
            f"{np.mean([r['wall_s'] for r in sub]):.0f} | "
            f"{sum(r['healthy'] for r in sub)}/{len(sub)} |"
        )
        for name, est, se in (("max(ArviZ, batch means)", llc, old), ("llc_se (this checkout)", llc, now),
                              ("llc_se, λ̂ − Δλ̂", llc - bias, now)):  # fmt: skip
            s = z_summary(est, se, exact, exact_se)
            lines.append(
                f"{common} {name} | {s['se_rms']:.3f} | {s['z_mean']:+.2f} ± {s['z_mean_se']:.2f} | "
                f"{s['z_sd']:.2f} ± {s['z_sd_se']:.2f} | {s['cover_2se']:.0%} |"
            )
            common = "| | | | | | | | |"
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("se_coverage.jsonl"))
    p.add_argument("--refs", default="/work/refs/coverage.json")
    p.add_argument("--settings", default="shared,independent",
                   help="comma list of shared/independent, interleaved per seed")  # fmt: skip
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    p.add_argument("--exact", default=None,
                   help="'value,se' to use instead of the cached reference (e.g. several NUTS seeds pooled)")  # fmt: skip
    args = p.parse_args()
    warnings.simplefilter("ignore")
    case = rrr_case((3, 3, 3), 2)
    post, ref_post, _ = build(case)
    ref = cached_reference(case, ref_post, "full", 0, args.refs)
    exact, exact_se = ref["exact"], ref["exact_se"]
    if args.exact:
        exact, exact_se = map(float, args.exact.split(","))
    print(f"{case.name}: exact {exact:.3f} ± {exact_se:.3f} ({ref['exact_method']})", flush=True)
    traces = args.out.with_suffix(".traces")
    if not args.table:
        traces.mkdir(parents=True, exist_ok=True)
        settings = [s.strip() == "shared" for s in args.settings.split(",")]
        done = {(r["seed"], r["shared_batches"]) for r in read_rows(args.out)}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for shared in settings:
                if (seed, int(shared)) in done:
                    continue
                row, trace, burnin = one_run(post, seed, shared)
                row["z"] = (row["llc"] - exact) / math.hypot(row["se"], exact_se)
                name = f"seed{seed}_shared{int(shared)}"
                np.save(traces / f"{name}.npy", trace.astype(np.float32))
                np.save(traces / f"{name}_burnin.npy", burnin.astype(np.float32))
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"seed {seed} shared {int(shared)}: λ̂ {row['llc']:.3f} ± {row['se']:.3f} "
                      f"z {row['z']:+.2f} ε {row['step_size']:.3g} thin {row['thin']} Δλ̂ "
                      f"{row['bias_estimate']:.3f} healthy {row['healthy']} "
                      f"{row['wall_s']:.0f} s", flush=True)  # fmt: skip
    print(f"exact used for z: {exact:.4f} ± {exact_se:.4f}")
    print(table(read_rows(args.out), exact, exact_se, traces))


if __name__ == "__main__":
    main()
