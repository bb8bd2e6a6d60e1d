"""Cost of the default LLC after the trust work (issue 13): default ``sample`` + ``llc`` on the
10 000-parameter DLN (widths 50×5, n = 10 000), and a two-temperature run, against another checkout.

    python benchmarks/trust_cost.py                        # this checkout only
    python benchmarks/trust_cost.py --baseline /path/to/old/checkout --repeats 2

Each measurement runs in a fresh process (compilation included, as a user sees it), alternating
between the checkouts so that a change in machine load hits both. Prints a table with λ̂ beside
each wall time and the ratio of the medians.
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
import slt_ppl
from models.numpyro_zoo import dln
model, problem = dln(widths=[50] * 5, n=10_000, seed=0)
post = slt_ppl.localize(model, problem.data, problem.center)
kwargs = json.loads(sys.argv[2])
t0 = time.perf_counter()
res = slt_ppl.sample(post, progress=False, **kwargs)
est = slt_ppl.llc(res, warn=False)
wall = time.perf_counter() - t0
out = {"wall_s": wall, "llc": float(est["llc"]), "llc_se": float(est["llc_se"]),
       "verdict": str(est.attrs["verdict"])[:60], "step_size": float(res.attrs["step_size"]),
       "thin": int(res.attrs["thin"]), "kernel": str(res.attrs["kernel"])}
if "llc_two_temperature" in est:
    out["llc_two_temperature"] = float(est["llc_two_temperature"])
print("RESULT " + json.dumps(out))
"""


def measure(root: Path, kwargs: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(root), json.dumps(kwargs)],
        capture_output=True, text=True, check=True, cwd=root,
    )  # fmt: skip
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, default=None, help="checkout to compare against")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    runs = [("this", ROOT, {}), ("this, temperatures (1, 2)", ROOT, {"temperatures": [1.0, 2.0]})]
    if args.baseline is not None:
        runs.insert(0, ("baseline", args.baseline, {}))
    rows: dict[str, list[dict]] = {label: [] for label, _, _ in runs}
    for _ in range(args.repeats):
        for label, root, kwargs in runs:
            rows[label].append(measure(root, kwargs))
            print(label, rows[label][-1], flush=True)
    print("\n| run | wall s (median) | λ̂ ± se | λ̂₂ | kernel, ε, thin | verdict |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for label, results in rows.items():
        med = statistics.median(r["wall_s"] for r in results)
        medians[label] = med
        r = results[-1]
        two = f"{r['llc_two_temperature']:.3g}" if "llc_two_temperature" in r else "-"
        print(
            f"| {label} | {med:.1f} | {r['llc']:.3g} ± {r['llc_se']:.2g} | {two} | "
            f"{r['kernel']}, {r['step_size']:.2g}, {r['thin']} | {r['verdict']} |"
        )
    if "baseline" in medians:
        print(f"\nthis / baseline: {medians['this'] / medians['baseline']:.2f}×")
    print(f"two temperatures / one: {medians['this, temperatures (1, 2)'] / medians['this']:.2f}×")


if __name__ == "__main__":
    main()
