"""Chain-steps per second of slt_ppl's torch path vs devinterp 2.0.1 on the tiny causal LM,
alternating the two in one script so that both see the same machine load (issue 15 item 6).

Each run is a fresh process of ``devinterp_lm_comparison.py`` (devinterp in its own venv, ours in
this one), with the same model, data, settings (ε, nβ, γ, batch 32, chains, steps) and the same
number of torch threads (``torch.set_num_threads`` and ``OMP_NUM_THREADS``); a round runs, for each
chain count, devinterp on the HF twin, devinterp on our very ``TinyGPT2`` module, ours with the
default diagnostics (every 20th draw) and ours with diagnostics only at draw 0. Each process times
its own ``sample()`` call (imports excluded on both sides; devinterp's init-loss pass and ours'
center table included) in wall seconds and in CPU seconds of the process (all threads)::

    python benchmarks/devinterp_lm_comparison.py prepare     # once
    OMP_NUM_THREADS=1 python benchmarks/devinterp_lm_speed.py --threads 1 --chains 1,4,8 --rounds 2
    python benchmarks/devinterp_lm_speed.py --device cuda --threads 4 --chains 1,8,32  # on a GPU

Prints the median of each variant and the ratios ours/devinterp per wall- and per CPU-second;
records: benchmarks/results/devinterp_lm/speed_<stamp>.json (one file per invocation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "devinterp_lm_comparison.py"
OUT = ROOT / "benchmarks" / "results" / "devinterp_lm"
DEVINTERP_PYTHON = os.environ.get("DEVINTERP_PYTHON", "/work/venvs/devinterp2/bin/python")
UNITS = (  # (label, record key prefix, record key suffix): whole call and marginal per step
    ("wall", "", "s"), ("cpu", "", "cpu_s"), ("wall_marginal", "marginal_", "s"),
    ("cpu_marginal", "marginal_", "cpu_s"),
)  # fmt: skip
VARIANTS = {  # name: (python, extra arguments of devinterp_lm_comparison.py)
    "devinterp_hf": (DEVINTERP_PYTHON, ["devinterp", "--devinterp-model", "hf"]),
    "devinterp_tiny": (DEVINTERP_PYTHON, ["devinterp", "--devinterp-model", "tiny"]),
    "ours": (sys.executable, ["ours"]),
    "ours_diag_off": (sys.executable, ["ours", "--diag-every", "1000000"]),
}


def run_one(variant: str, chains: int, args: argparse.Namespace) -> dict:
    """One process of ``variant`` at ``chains`` chains; returns its ``llc`` record."""
    python, extra = VARIANTS[variant]
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.json"
        cmd = [python, str(SCRIPT), *extra, "--setting", args.setting, "--chains", str(chains),
               "--draws", str(args.draws), "--burnin", str(args.burnin), "--threads",
               str(args.threads), "--device", args.device, "--record", str(record)]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
        full = json.loads(record.read_text())
    return full["llc"] | {"load_avg_1m": full["load_avg_1m"]}


def summarize(runs: list[dict]) -> list[dict]:
    """Median chain-steps per wall- and CPU-second per (chains, variant), and ours/devinterp."""
    rows = []
    for chains in sorted({r["chains"] for r in runs}):
        med = {}
        for variant in VARIANTS:
            sel = [r for r in runs if r["chains"] == chains and r["variant"] == variant]
            if sel:
                med[variant] = {
                    unit: statistics.median(r[f"{kind}chain_steps_per_{u}"] for r in sel)
                    for unit, kind, u in UNITS
                }
        for ours in ("ours", "ours_diag_off"):
            for base in ("devinterp_hf", "devinterp_tiny"):
                if ours in med and base in med:
                    ratios = {unit: med[ours][unit] / med[base][unit] for unit, _, _ in UNITS}
                    rows.append({"chains": chains, "ours": ours, "devinterp": base, **ratios})
        for variant, m in med.items():
            print(f"C={chains:2d} {variant:15s} " + ", ".join(f"{m[u]:6.1f} {u}" for u in m))
    for row in rows:
        print(f"C={row['chains']:2d} {row['ours']:14s}/{row['devinterp']:15s} ratio "
              + ", ".join(f"{row[u]:.2f}x {u}" for u, _, _ in UNITS))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", default="drift")
    parser.add_argument("--chains", default="1,4,8")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--burnin", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",")
    runs = []
    for round_ in range(args.rounds):
        for chains in (int(c) for c in args.chains.split(",")):
            for variant in variants:  # alternating: every variant once per round and chain count
                rec = run_one(variant, chains, args)
                runs.append(rec | {"variant": variant, "chains": chains, "round": round_})
                print(f"round {round_} C={chains} {variant}: {rec['chain_steps_per_s']:.1f}/s "
                      f"wall, {rec['chain_steps_per_cpu_s']:.1f}/CPU-s, load "
                      f"{rec['load_avg_1m']:.1f}", flush=True)  # fmt: skip
    rows = summarize(runs)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"speed_{stamp}.json").write_text(
        json.dumps({"args": vars(args), "runs": runs, "ratios": rows}, indent=1, default=float)
    )


if __name__ == "__main__":
    main()
