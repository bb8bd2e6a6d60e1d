"""Why slt_ppl's and devinterp 2.0.1's susceptibilities of the tiny LM disagree (issue 15).

devinterp's ``compute_susceptibilities`` (slt/susceptibilities.py in /work/venvs/devinterp2,
read there) computes, per weight restriction C and probe token q,

    χ_dev = E_C[φ·L_s] − E_C[φ·ℓ_q] − E_C[φ]·(E_full[L_s] − E_full[ℓ_q]),  φ = L_s − init_loss,

with L_s the mean per-token loss of its sampling observable (32 rows picked by
``random.Random(1337).sample(range(1024), 32)``, fixed for every draw, evaluated at the
post-burn-in draws only) and init_loss the full run's mean loss over 32 batches of the sampling
set at w* (all 1024 rows: L_n(w*)). slt_ppl's ``susceptibility`` computes

    χ_ours = E_C[φ·(L_s − ℓ_q)] − E_C[φ]·E_full[L_s − ℓ_q],  φ = L_s − L_s(w*),

with L_s the mean loss of the rows given as ``sampling=`` (here the first 32 sampling rows) and
L_s(w*) on the same rows. Both are linear in ℓ_q, so the per-sequence χ (ℓ_q = the row's mean
token loss) is the mean of the per-token χ over the row's tokens in both.

This script samples the full model and each head restriction with our torch SGLD at the
comparison's flat setting, records both row sets and the probe set, and evaluates the chain of
conventions from ours to devinterp's on the same draws::

    python benchmarks/susceptibility_conventions.py run --setup DIR   # sampling, ~2 min a run
    python benchmarks/susceptibility_conventions.py analyze            # the table

DIR holds ``setup.pt`` and ``head_masks.pt`` of benchmarks/devinterp_lm_comparison.py. Draws
(per-sequence losses) go to benchmarks/results/susceptibility_conventions/draws.npz.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models import tiny_lm  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "susceptibility_conventions"
DEVINTERP = ROOT / "benchmarks" / "results" / "devinterp_lm" / "devinterp_flat_20261202T051937.json"
FLAT = {"lr": 3e-6, "nbeta": 3000.0, "gamma": 100.0}
ROWS = 32


def devinterp_rows(num_rows: int) -> list[int]:
    """The rows devinterp's Observable evaluates: DeterministicShuffledSampler(seed=1337)."""
    return random.Random(1337).sample(range(num_rows), ROWS)


def run(args: argparse.Namespace) -> None:
    import slt_ppl

    setup = torch.load(Path(args.setup) / "setup.pt", weights_only=False)
    masks = torch.load(Path(args.setup) / "head_masks.pt", weights_only=False)
    model = tiny_lm.TinyGPT2(tiny_lm.TinyLMConfig(), seed=0)
    model.load_state_dict(setup["state_dict"])
    data = tiny_lm.lm_data(setup["tokens"])
    dev = devinterp_rows(len(setup["tokens"]))
    observe = {
        "train": {k: v[:ROWS] for k, v in data.items()},
        "train_dev": {k: v[dev] for k, v in data.items()},
        "probe": tiny_lm.lm_data(setup["probe"]),
    }
    restrictions = {"full": None}
    restrictions |= {h: {k: v.bool() for k, v in m.items()} for h, m in masks.items()}
    if args.heads != "all":
        restrictions = {
            k: v for k, v in restrictions.items() if k in {"full", *args.heads.split(",")}
        }
    saved: dict[str, np.ndarray] = {}
    results = {}
    for name, mask in restrictions.items():
        post = slt_ppl.localize(model, data, loss_fn=tiny_lm.per_token_nll, nbeta=FLAT["nbeta"],
                                gamma=FLAT["gamma"], restrict_to=mask)  # fmt: skip
        start = time.perf_counter()
        result = slt_ppl.sample(
            post, kernel="sgld", step_size=FLAT["lr"], batch_size=32, num_chains=4,
            num_draws=args.draws, num_burnin=args.burnin, thin=1, seed=0, progress=False,
            observe=observe,
        )  # fmt: skip
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        results[name] = result
        stats = result["sample_stats"]
        for obs in observe:
            saved[f"{name}/{obs}"] = stats[f"loss_{obs}"].values.mean(-1).astype(np.float64)
            saved[f"{name}/{obs}_center"] = stats[f"loss_{obs}_center"].values.mean(-1)
        if name == "full":
            saved["L_n_center"] = np.array(float(post.info["loss_center_full"]))
    sus = slt_ppl.susceptibility(results, sampling="train", probe="probe")
    saved["ours_function"] = sus["susceptibility"].values
    saved["ours_function_se"] = sus["susceptibility_se"].values
    saved["restrictions"] = np.array(list(restrictions))
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "draws.npz", **saved)


def chi(phi: np.ndarray, level: np.ndarray, probe: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """E_C[φ·(L_s − ℓ_q)] − E_C[φ]·ref over pooled (chain, draw); probe: (chain, draw, Q)."""
    delta = level[..., None] - probe
    return (phi[..., None] * delta).mean((0, 1)) - phi.mean() * ref


def conventions(d: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """χ of restriction ``name`` under each step from our convention to devinterp's."""
    probe, full_probe = d[f"{name}/probe"], d["full/probe"]
    out = {}
    for rows in ("train", "train_dev"):
        level, full_level = d[f"{name}/{rows}"].mean(-1), d[f"full/{rows}"].mean(-1)
        ref = (full_level[..., None] - full_probe).mean((0, 1))
        for offset_name, offset in (("center", d[f"full/{rows}_center"].mean()),
                                    ("init_loss", float(d["L_n_center"]))):  # fmt: skip
            out[f"{rows}|{offset_name}"] = chi(level - offset, level, probe, ref)
        own = (level[..., None] - probe).mean((0, 1))  # E_C instead of E_full: −Cov_C(φ, ℓ_q−L_s)
        out[f"{rows}|cov_C"] = chi(level - level.mean(), level, probe, own)  # Cov_C(L_s, Δ_q)
        out[f"{rows}|gap"] = own - ref  # E_C[Δ_q] − E_full[Δ_q]
        out[f"{rows}|phi_center"] = level.mean() - d[f"full/{rows}_center"].mean()
    return out


def analyze(args: argparse.Namespace) -> None:
    d = dict(np.load(OUT / "draws.npz"))
    names = [str(r) for r in d["restrictions"]]
    dev = json.loads(DEVINTERP.read_text())["sus"]
    dev_chi = dict(zip(dev["restrictions"], np.asarray(dev["per_sequence"]), strict=True))
    rows, steps = [], []
    for i, name in enumerate(names):
        if name == "full":
            continue
        c = conventions(d, name)
        assert np.allclose(
            c["train|center"], d["ours_function"][i], rtol=1e-3, atol=1e-9
        )  # float32 records
        se = d["ours_function_se"][i]
        offset = float(d["full/train_dev_center"].mean() - d["L_n_center"])
        rows.append({
            "head": name,
            "A ours": c["train|center"].mean(),
            "median se(A) per q": float(np.median(se)),
            "B dev rows": c["train_dev|center"].mean(),
            "C +init_loss (devinterp formula)": c["train_dev|init_loss"].mean(),
            "devinterp reported": dev_chi[name].mean(),
            "corr(C, dev) over q": float(np.corrcoef(c["train_dev|init_loss"], dev_chi[name])[0, 1]),
            "corr(A, dev)": float(np.corrcoef(c["train|center"], dev_chi[name])[0, 1]),
            "Cov_C(L_s, D_q)": c["train_dev|cov_C"].mean(),
            "E_C[phi] (B)": c["train_dev|phi_center"],
            "E_C[D_q]-E_full[D_q]": c["train_dev|gap"].mean(),
            "offset c": offset,
        })  # fmt: skip
        steps.append([np.abs(c["train_dev|center"] - c["train|center"]).mean(),
                      np.abs(c["train_dev|init_loss"] - c["train_dev|center"]).mean(),
                      np.abs(dev_chi[name] - c["train_dev|init_loss"]).mean(),
                      np.abs(dev_chi[name] - c["train|center"]).mean()])  # fmt: skip
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for r in rows:
        print(
            "| " + " | ".join(r[k] if isinstance(r[k], str) else f"{r[k]:.3g}" for k in keys) + " |"
        )
    json.dump(rows, open(OUT / "table.json", "w"), indent=1, default=float)
    labels = ("rows of L_s (A→B)", "φ reference (B→C)", "other draws (C→devinterp)", "total")
    for label, value in zip(labels, np.mean(steps, axis=0), strict=True):
        print(f"mean |change| per sequence, {label}: {value:.3g}")
    bif_se_check(d["full/probe"], float(FLAT["nbeta"]))


def bif_se_check(probe: np.ndarray, nbeta: float) -> None:
    """Share of off-diagonal BIF correlations beyond 2 se on the full run's probe losses, with
    the old fixed 20 batches and the autocorrelation-sized batches (issue 15's 48 %)."""
    import warnings

    import xarray as xr

    import slt_ppl

    stats = xr.Dataset({"loss_p": (("chain", "draw", "p"), probe),
                        "loss_p_center": (("p",), np.zeros(probe.shape[-1]))})  # fmt: skip
    tree = xr.DataTree.from_dict({"sample_stats": stats})
    tree.attrs["nbeta"] = nbeta
    off = ~np.eye(probe.shape[-1], dtype=bool)
    for label, k in (("fixed 20 batches", 20), ("autocorrelation batches", None)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = slt_ppl.bif(tree, "p", kind="correlation", num_batches=k)
        beyond = np.abs(r["bif"].values[off]) > 2 * r["bif_se"].values[off]
        print(f"BIF correlation, {label}: K = {r.attrs['num_batches']} batches of "
              f"{r.attrs['batch_draws']} draws (tau {r.attrs['autocorrelation_time']:.1f}), "
              f"median se {np.median(r['bif_se'].values[off]):.3f}, "
              f"beyond 2 se {beyond.mean():.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--setup", default=str(ROOT / "benchmarks" / "results" / "devinterp_lm"))
    r.add_argument("--heads", default="all")
    r.add_argument("--draws", type=int, default=100)
    r.add_argument("--burnin", type=int, default=100)
    sub.add_parser("analyze")
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"run": run, "analyze": analyze}[args.cmd](args)


if __name__ == "__main__":
    main()
