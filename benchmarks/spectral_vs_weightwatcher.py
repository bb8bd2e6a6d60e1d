"""Compare slt_ppl.spectral(convention="weightwatcher") with WeightWatcher 0.7.7, and time both.

WeightWatcher runs in its own virtual environment (never a dependency of slt_ppl):

    python -m venv /tmp/ww-venv
    /tmp/ww-venv/bin/pip install weightwatcher==0.7.7 "powerlaw<2" torch==2.13.0

This script creates it when missing. Layers (random and heavy-tailed, dense and Conv2D) are built
from a fixed seed, saved as float32 .npz, loaded into a torch ``nn.Sequential`` inside the venv and
analysed with WeightWatcher's default ``analyze()``; alpha, D and xmin are compared per layer.
A second model with several 1024x1024 and larger layers is timed with both.

Run: ``python benchmarks/spectral_vs_weightwatcher.py [--venv /tmp/ww-venv] [--skip-timing]``.
Prints a table and writes ``benchmarks/results/spectral_vs_weightwatcher.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

WORKER = r"""
import json, sys, time, warnings
import numpy as np
import torch
import weightwatcher as ww
import logging
logging.disable(logging.WARNING)
warnings.filterwarnings("ignore")

npz, out = sys.argv[1], sys.argv[2]
arrays = np.load(npz)
names = list(arrays.files)
layers = []
for name in names:
    w = torch.from_numpy(arrays[name])
    if w.ndim == 2:
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    else:
        layer = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    layers.append(layer)
model = torch.nn.Sequential(*layers)
watcher = ww.WeightWatcher(model=model)
t0 = time.perf_counter()
details = watcher.analyze()
seconds = time.perf_counter() - t0
rows = {}
for _, r in details.iterrows():
    idx = int(r["name"]) if str(r["name"]).isdigit() else int(r["layer_id"])
    rows[names[idx]] = {k: float(r[k]) for k in ("alpha", "D", "xmin", "xmax", "num_evals",
                                                  "log_norm", "log_spectral_norm", "stable_rank")}
json.dump({"seconds": seconds, "layers": rows, "version": ww.__version__}, open(out, "w"))
"""


def _pareto_singular(n: int, m: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """N x M matrix whose eigenvalues of W^T W follow Pareto(alpha) (random orthogonal mixing)."""
    s = (1.0 - rng.random(m)) ** (-1.0 / (alpha - 1.0))
    u, _ = np.linalg.qr(rng.standard_normal((n, m)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return (u * np.sqrt(s)) @ v.T


def comparison_layers(seed: int = 2024) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    layers = {
        "gauss_300x200": rng.standard_normal((300, 200)) / np.sqrt(300),
        "gauss_200x500": rng.standard_normal((200, 500)) / np.sqrt(500),
        "student3_400x256": rng.standard_t(3, (400, 256)) / 20,
        "student2_512x300": rng.standard_t(2, (512, 300)) / 20,
        "pareto2.5_400x300": _pareto_singular(400, 300, 2.5, rng),
        "pareto3.5_350x350": _pareto_singular(350, 350, 3.5, rng),
        "spiked_300x150": rng.standard_normal((300, 150))
        + 5 * np.outer(rng.standard_normal(300), rng.standard_normal(150)) / np.sqrt(150),
        "conv_gauss_64x32x3x3": rng.standard_normal((64, 32, 3, 3)) / 24,
        "conv_student3_96x48x3x3": rng.standard_t(3, (96, 48, 3, 3)) / 30,
        "small_16x12": rng.standard_normal((16, 12)),
    }
    return {k: v.astype(np.float32) for k, v in layers.items()}


def timing_layers(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    layers = {f"fc{i}_1024x1024": rng.standard_t(4, (1024, 1024)) / 30 for i in range(4)}
    layers["fc_2048x1024"] = rng.standard_t(3, (2048, 1024)) / 40
    layers["fc_1024x2048"] = rng.standard_normal((1024, 2048)) / 45
    layers["conv_256x256x3x3"] = rng.standard_t(4, (256, 256, 3, 3)) / 50
    return {k: v.astype(np.float32) for k, v in layers.items()}


def ensure_venv(venv: Path) -> tuple[Path | None, str]:
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import weightwatcher, powerlaw, torch"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, "existing venv"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "weightwatcher==0.7.7", "powerlaw<2",
         "torch==2.13.0"],
    ]  # fmt: skip
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"{' '.join(step)} failed:\n{proc.stderr[-2000:]}"
    return python, "created venv"


def run_weightwatcher(python: Path, layers: dict[str, np.ndarray], tmp: Path, tag: str) -> dict:
    npz = tmp / f"{tag}.npz"
    np.savez(npz, **layers)
    worker = tmp / "ww_worker.py"
    worker.write_text(WORKER)
    out = tmp / f"{tag}.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(python), str(worker), str(npz), str(out)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"WeightWatcher worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_ours(layers: dict[str, np.ndarray], **kwargs) -> tuple[dict, float]:
    from slt_ppl.estimators.spectral import spectral

    t0 = time.perf_counter()
    ds = spectral(layers, convention="weightwatcher", max_evals=15000, **kwargs)
    seconds = time.perf_counter() - t0
    rows = {
        str(name): {k: float(ds[k].sel(layer=name)) for k in ("alpha", "D", "xmin", "xmax")}
        for name in ds["layer"].values
    }
    return rows, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/ww-venv"))
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved timing rounds (the minimum is kept)"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
        }
    }
    python, how = ensure_venv(args.venv)
    result["venv"] = how
    if python is None:
        print(f"WeightWatcher could not be installed; nothing to compare.\n{how}")
        (RESULTS / "spectral_vs_weightwatcher.json").write_text(json.dumps(result, indent=2))
        return 1
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        layers = comparison_layers()
        theirs = run_weightwatcher(python, layers, tmp, "compare")
        ours, _ = run_ours(layers)
        result["weightwatcher_version"] = theirs["version"]
        rows = []
        print(f"{'layer':<26}{'metric':>7}{'weightwatcher':>16}{'slt_ppl':>16}{'rel.diff':>11}")
        for name in layers:
            if name not in theirs["layers"] or name not in ours:
                print(f"{name:<26} present in ww: {name in theirs['layers']}, ours: {name in ours}")
                rows.append({"layer": name, "missing": True})
                continue
            for metric in ("alpha", "D", "xmin"):
                a, b = theirs["layers"][name][metric], ours[name][metric]
                rel = abs(a - b) / max(abs(a), 1e-300)
                rows.append({"layer": name, "metric": metric, "ww": a, "ours": b, "rel_diff": rel})
                print(f"{name:<26}{metric:>7}{a:>16.6g}{b:>16.6g}{rel:>11.2e}")
        diffs = [r["rel_diff"] for r in rows if "rel_diff" in r]
        result["comparison"] = rows
        result["max_rel_diff"] = max(diffs)
        result["within_1pct"] = sum(d <= 0.01 for d in diffs)
        result["num_compared"] = len(diffs)
        print(f"\nmax relative difference {max(diffs):.2e}; "
              f"{result['within_1pct']}/{len(diffs)} values within 1%")  # fmt: skip

        if not args.skip_timing:
            big = timing_layers()
            run_ours({"warmup": big["fc0_1024x1024"][:64, :64]})  # imports, not the analysis
            # interleave the two so that load from other processes hits both alike
            ww_times, np_times = [], []
            for _ in range(args.repeats):
                theirs_t = run_weightwatcher(python, big, tmp, "timing")
                ww_times.append(theirs_t["seconds"])
                ours_np, t = run_ours(big)
                np_times.append(t)
            t_ww, t_np = min(ww_times), min(np_times)
            import torch

            torch_layers = {k: torch.from_numpy(v) for k, v in big.items()}
            _, t_torch = run_ours(torch_layers)
            _, t_svd = run_ours(big, method="svd")
            alpha_diff = max(
                abs(theirs_t["layers"][k]["alpha"] - ours_np[k]["alpha"])
                / abs(theirs_t["layers"][k]["alpha"])
                for k in big
                if k in theirs_t["layers"]
            )
            result["timing"] = {
                "layers": {k: list(v.shape) for k, v in big.items()},
                "weightwatcher_analyze_runs_s": ww_times,
                "ours_numpy_gram_runs_s": np_times,
                "weightwatcher_analyze_s": t_ww,
                "ours_numpy_gram_s": t_np,
                "ours_torch_cpu_gram_s": t_torch,
                "ours_numpy_svd_s": t_svd,
                "speedup_numpy_gram": t_ww / t_np,
                "speedup_torch_gram": t_ww / t_torch,
                "speedup_numpy_svd": t_ww / t_svd,
                "max_alpha_rel_diff": alpha_diff,
            }
            print("\ntiming (7 layers: 4x 1024x1024, 2048x1024, 1024x2048, conv 256x256x3x3)")
            for k, v in result["timing"].items():
                if k != "layers":
                    shown = ", ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else f"{v:.4g}"
                    print(f"  {k:<30}{shown}")
    result["machine"]["loadavg_end"] = os.getloadavg()
    path = RESULTS / "spectral_vs_weightwatcher.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
