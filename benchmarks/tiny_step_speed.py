"""Steps per second of a tiny model, by how the minibatch indices are drawn (session 14).

A tiny model's step (batch·d ≤ 1024 then; 2048 since session 17, ``step_cost_threshold.py``)
costs its fixed overhead, and drawing the 256 row indices was a quarter of it.
``sampling.loop.minibatch_indices`` now takes one 32-bit word per index (mod n, for n ≤ 2¹⁶) where
``jax.random.randint`` took two. This script times both on the singular suite's
crossing y = x·w1·w2 (n = 1000, d = 2, 16 chains, batch 256):

- fixed ε and thin (the same work in both): chain-steps per second, compilation excluded;
- the automatic settings (``sample`` + ``llc`` as a user calls them): the sampling phase's speed,
  the wall time, λ̂ ± se beside the exact value of the same posterior (quadrature), so that a
  faster run is also seen to be right. The wall time includes the step-size adaptation, whose
  number of windows depends on the random stream, so compare the sampling phase.

    python benchmarks/tiny_step_speed.py --repeats 2

Each measurement runs in a fresh process (``FAST_INDEX_MAX_ROWS = 0`` selects randint), the two
draws alternating so that a change in machine load hits both. Prints a table.
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
warnings.simplefilter("ignore")
import slt_ppl
from slt_ppl.sampling import loop
from validation import singular
if sys.argv[1] == "randint":
    loop.FAST_INDEX_MAX_ROWS = 0
case = singular.crossing_case((1, 1), 1000)
post, _, _ = singular.build(case)
mode = sys.argv[2]
if mode == "fixed":
    kw = dict(kernel="sgld", step_size=1e-4, num_chains=16, num_draws=100, num_burnin=0)
    slt_ppl.sample(post, thin=2, progress=False, **kw)  # compile
    t0 = time.perf_counter()
    res = slt_ppl.sample(post, thin=2000, progress=False, **kw)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "chain_steps_per_s": 16 * 100 * 2000 / wall}
else:
    t0 = time.perf_counter()
    res = slt_ppl.sample(post, progress=False, seed=int(sys.argv[3]))
    est = slt_ppl.llc(res, warn=False)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "llc": float(est["llc"]), "llc_se": float(est["llc_se"]),
           "healthy": bool(est.attrs["healthy"]), "thin": int(res.attrs["thin"]),
           "step_size": float(res.attrs["step_size"]),
           "sampling_s": float(res.attrs["sampling_time_s"]),
           "steps": int(res.attrs["thin"]) * int(res["sample_stats"].sizes["draw"]),
           "chains": int(res.attrs["num_chains"])}
print("RESULT " + json.dumps(out))
"""


def measure(draw: str, mode: str, seed: int = 0) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, draw, mode, str(seed)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def exact_value() -> float:
    sys.path.insert(0, str(ROOT))
    import slt_ppl
    from validation import singular

    post, _, _ = singular.build(singular.crossing_case((1, 1), 1000))
    return float(slt_ppl.exact_llc(post)["llc"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-default", action="store_true", help="only the fixed-work timing")
    args = p.parse_args()
    draws = ("randint", "one word")
    fixed: dict[str, list[float]] = {d: [] for d in draws}
    for _ in range(args.repeats):
        for d in draws:
            fixed[d].append(measure(d, "fixed")["chain_steps_per_s"])
    print("| index draw | chain-steps/s (fixed ε, thin 2000, 16 chains), median | runs |")
    print("|---|---|---|")
    for d in draws:
        runs = ", ".join(f"{v:,.0f}" for v in fixed[d])
        print(f"| {d} | {statistics.median(fixed[d]):,.0f} | {runs} |")
    ratio = statistics.median(fixed["one word"]) / statistics.median(fixed["randint"])
    print(f"\none word / randint: {ratio:.2f}× the steps per second\n")
    if args.skip_default:
        return
    exact = exact_value()
    print(f"| index draw | seed | λ̂ ± se (exact {exact:.3f}) | z | healthy | thin | "
          "sampling: steps per chain, s, chain-steps/s | wall s (tuning, burn-in included) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for seed in range(args.repeats):
        for d in draws:
            r = measure(d, "default", seed)
            z = (r["llc"] - exact) / r["llc_se"]
            print(f"| {d} | {seed} | {r['llc']:.3f} ± {r['llc_se']:.3f} | {z:+.1f} | "
                  f"{r['healthy']} | {r['thin']} | {r['steps']:.3g}, {r['sampling_s']:.0f}, "
                  f"{r['chains'] * r['steps'] / r['sampling_s']:,.0f} | {r['wall_s']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
