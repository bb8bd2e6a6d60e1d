"""Where a step stops costing its fixed overhead: SGLD step time against batch·d (session 17).

A model is "tiny" (``sampling.defaults.is_tiny``) when a step's minibatch gradient is at most
``TINY_STEP_COST`` row·parameter products per chain: such a step is assumed to cost its fixed
overhead (dispatch, index draw, the loop), not its FLOPs, so tiny models get 16 chains, the larger
step cap and a burn-in-ε thin. This script measures that assumption on the tanh networks of the
singular suite, y = Σ_k a_k·tanh(b_k·x) at a = b = 0 (n = 5000, d = 2·units), batch 256:

- fixed ε (1e-6) and thin, ``kernel="sgld"``, the minibatch loss trace (``full_loss=False``), so
  that every row does the same work per step; the sampling phase (attrs ``sampling_time_s``) of
  runs whose program a first run of the same thin and draws compiled;
- 4 and 16 chains; µs per step (all chains together) and its ratio to the d = 2 step at the same
  chain count, and the extra cost per added row·parameter product per chain.

    python benchmarks/step_cost_threshold.py --repeats 3

One fresh process per d, the chain counts alternating inside it; the median of the repeats. Prints
a table (about 2-3 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256
UNITS = (1, 2, 3, 4, 6, 9, 12)  # d = 2, 4, 6, 8, 12, 18, 24
CHAINS = (4, 16)

WORKER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import slt_ppl
from slt_ppl.sampling.options import Plan
from validation import singular
units, repeats, draws, thin = (int(a) for a in sys.argv[1:5])
chains = [int(c) for c in sys.argv[5].split(",")]
case = singular.Case("tanh", "tanh", singular.zoo.tanh_zero, {"hidden": units, "n": 5000})
post, _, _ = singular.build(case)
plan = Plan(full_loss=False, num_segments=1)
def run(c, t):
    return slt_ppl.sample(post, kernel="sgld", step_size=1e-6, batch_size=256, num_chains=c,
                          num_draws=draws, num_burnin=0, thin=t, progress=False, plan=plan)
for c in chains:
    run(c, thin)  # compile (thin and num_draws are static: the same ones)
times = {c: [] for c in chains}
walls = {c: [] for c in chains}
compiles = {c: [] for c in chains}
for _ in range(repeats):
    for c in chains:
        t0 = time.perf_counter()
        res = run(c, thin)
        walls[c].append((time.perf_counter() - t0) / (draws * thin))
        times[c].append(float(res.attrs["sampling_time_s"]) / (draws * thin))
        compiles[c].append(float(res.attrs["compile_time_s"]))
print("RESULT " + json.dumps({"dim": int(post.dim), "step_s": times, "wall_step_s": walls,
                              "compile_s": compiles}))
"""


def measure(units: int, repeats: int, draws: int, thin: int) -> dict:
    args = [str(units), str(repeats), str(draws), str(thin), ",".join(map(str, CHAINS))]
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--thin", type=int, default=1000)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from slt_ppl.sampling.defaults import TINY_STEP_COST

    rows = [measure(u, args.repeats, args.draws, args.thin) for u in UNITS]
    med = [{int(c): statistics.median(v) * 1e6 for c, v in r["step_s"].items()} for r in rows]
    base = med[0]
    head = " | ".join(f"{c} chains: µs/step (× d = 2), chain-steps/s" for c in CHAINS)
    print(f"| d | batch·d | tiny (≤ {TINY_STEP_COST}) | {head} |")
    print("|---|---|---|" + "---|" * len(CHAINS))
    for r, m in zip(rows, med, strict=True):
        cost = BATCH * r["dim"]
        cells = " | ".join(
            f"{m[c]:.1f} (×{m[c] / base[c]:.2f}), {c * 1e6 / m[c]:,.0f}" for c in CHAINS
        )
        print(f"| {r['dim']} | {cost} | {'yes' if cost <= TINY_STEP_COST else 'no'} | {cells} |")
    print(f"\nbatch {BATCH}, fixed ε 1e-6, {args.draws} draws × thin {args.thin}, median of "
          f"{args.repeats}; × d = 2: the step time relative to d = 2 at the same chain count")  # fmt: skip


if __name__ == "__main__":
    main()
