"""Cost of recording probe losses while sampling (issue 15): ``sample(..., observe={"probe": 256
rows}, observe_every=10)`` against the same run without ``observe``, on the 10 000-parameter DLN
(widths 50×5, n = 10 000, the main job's model).

    python benchmarks/observe_overhead.py --repeats 3

Both runs use the same fixed settings (SGLD, batch 256, ε = 1.2e-7 — what the tuner picks for this
model, see RESULTS.md —, thin 1, 4 chains, 1000 burn-in + 1000 draws), so the difference is the
recording alone: 100 observed draws × 256 rows × 4 chains. Each measurement runs in a fresh process
(compilation included, as a user sees it), alternating between the two runs so that a change in
machine load hits both; the table gives medians of the sample() wall time, of the sampling time
without compilation (attrs["sampling_time_s"]) and of the compile time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

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
kwargs = json.loads(sys.argv[2])
if kwargs.pop("observe_rows", 0):
    rng = np.random.default_rng(1)
    rows = rng.choice(post.n, 256, replace=False)
    kwargs["observe"] = {"probe": {k: np.asarray(v)[rows] for k, v in problem.data.items()}}
t0 = time.perf_counter()
res = slt_ppl.sample(post, progress=False, **kwargs)
wall = time.perf_counter() - t0
out = {"wall_s": wall, "sampling_s": float(res.attrs["sampling_time_s"]),
       "compile_s": float(res.attrs["compile_time_s"]), "dim": post.dim,
       "recorded": list(res["sample_stats"]["loss_probe"].shape)
                   if "loss_probe" in res["sample_stats"] else None}
print("RESULT " + json.dumps(out))
"""

BASE = dict(
    kernel="sgld", step_size=1.2e-7, batch_size=256, thin=1, num_chains=4, num_draws=1000,
    num_burnin=1000, seed=0,
)  # fmt: skip
RUNS = [
    ("unobserved", BASE),
    ("observe 256 rows every 10th draw", {**BASE, "observe_rows": 256, "observe_every": 10}),
]


def measure(kwargs: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(ROOT), json.dumps(kwargs)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows: dict[str, list[dict]] = {label: [] for label, _ in RUNS}
    for _ in range(args.repeats):
        for label, kwargs in RUNS:
            rows[label].append(measure(kwargs))
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


if __name__ == "__main__":
    main()
