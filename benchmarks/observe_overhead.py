"""Cost of recording probe losses while sampling (issue 15): ``sample(..., observe={"probe": 256
rows}, observe_every=10)`` against the same run without ``observe``, on the 10 000-parameter DLN
(widths 50×5, n = 10 000, the main job's model).

    python benchmarks/observe_overhead.py --repeats 3
    python benchmarks/observe_overhead.py --in-process --repeats 7


Both runs use the same fixed settings (SGLD, batch 256, ε = 1.2e-7 — what the tuner picks for this
model, see RESULTS.md —, thin 1, 4 chains, 1000 burn-in + 1000 draws), so the difference is the
recording alone: 100 observed draws × 256 rows × 4 chains. Each measurement runs in a fresh process
(compilation included, as a user sees it), alternating between the two runs so that a change in
machine load hits both; the table gives medians of the sample() wall time, of the sampling time
without compilation (attrs["sampling_time_s"]) and of the compile time. ``--in-process`` instead
runs both in one process, alternating, after one warm-up call each (programs compiled once), and
reports the median of the per-pair ratios of the sampling time: a steadier measure of the
recording's own cost on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time, warnings
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
import numpy as np
import slt_ppl
from models.numpyro_zoo import dln
model, problem = dln(widths=[50] * 5, n=10_000, seed=0)
post = slt_ppl.localize(model, problem.data, problem.center)


def run(kwargs):
    kwargs = dict(kwargs)
    if kwargs.pop("observe_rows", 0):
        rng = np.random.default_rng(1)
        rows = rng.choice(post.n, 256, replace=False)
        kwargs["observe"] = {"probe": {k: np.asarray(v)[rows] for k, v in problem.data.items()}}
    t0 = time.perf_counter()
    res = slt_ppl.sample(post, progress=False, **kwargs)
    wall = time.perf_counter() - t0
    stats = res["sample_stats"]
    return {"wall_s": wall, "sampling_s": float(res.attrs["sampling_time_s"]),
            "compile_s": float(res.attrs["compile_time_s"]), "dim": post.dim,
            "recorded": list(stats["loss_probe"].shape) if "loss_probe" in stats else None}


if sys.argv[2] == "in-process":
    a, b, repeats = json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
    run(a), run(b)  # compile both programs once
    pairs = [(run(a), run(b)) for _ in range(repeats)]
    print("RESULT " + json.dumps(pairs))
else:
    print("RESULT " + json.dumps(run(json.loads(sys.argv[2]))))
"""

BASE = dict(
    kernel="sgld", step_size=1.2e-7, batch_size=256, thin=1, num_chains=4, num_draws=1000,
    num_burnin=1000, seed=0,
)  # fmt: skip
RUNS = [
    ("unobserved", BASE),
    ("observe 256 rows every 10th draw", {**BASE, "observe_rows": 256, "observe_every": 10}),
]


def measure(*args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(ROOT), *args],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--in-process", action="store_true", help="one process, compiled once")
    args = p.parse_args()
    if args.in_process:
        in_process(args.repeats)
        return
    rows: dict[str, list[dict]] = {label: [] for label, _ in RUNS}
    for _ in range(args.repeats):
        for label, kwargs in RUNS:
            rows[label].append(measure(json.dumps(kwargs)))
            print(label, rows[label][-1], flush=True)
    print("\n| run | sample() wall s | sampling s (no compile) | compile s | recorded |")
    print("|---|---|---|---|---|")
    med = {}
    for label, results in rows.items():
        med[label] = {k: statistics.median(r[k] for r in results) for k in results[0]
                      if k.endswith("_s")}  # fmt: skip
        m = med[label]
        print(f"| {label} | {m['wall_s']:.1f} | {m['sampling_s']:.1f} | {m['compile_s']:.1f} | "
              f"{results[-1]['recorded']} |")  # fmt: skip
    a, b = (med[label] for label, _ in RUNS)
    print(
        f"\nobserved / unobserved: wall {b['wall_s'] / a['wall_s']:.2f}x, sampling "
        f"{b['sampling_s'] / a['sampling_s']:.2f}x (goal <= 1.3x; {args.repeats} repeats, medians)"
    )


def in_process(repeats: int) -> None:
    (_, a), (_, b) = RUNS
    pairs = measure("in-process", json.dumps(a), json.dumps(b), str(repeats))
    print("| pair | unobserved sampling s | observed sampling s | ratio |")
    print("|---|---|---|---|")
    ratios = []
    for k, (x, y) in enumerate(pairs):
        ratios.append(y["sampling_s"] / x["sampling_s"])
        print(f"| {k} | {x['sampling_s']:.2f} | {y['sampling_s']:.2f} | {ratios[-1]:.2f} |")
    print(
        f"\nobserved / unobserved sampling time: median of {repeats} pair ratios "
        f"{statistics.median(ratios):.2f}x (goal <= 1.3x)"
    )


if __name__ == "__main__":
    main()
