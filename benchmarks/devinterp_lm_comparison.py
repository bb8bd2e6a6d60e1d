"""slt_ppl vs devinterp 2.0.1 on the same tiny causal LM (issue 15 item 6).

The model is :class:`models.tiny_lm.TinyGPT2` (2 layers, d_model 64, 4 heads, 64 tokens, 32
positions: 106 240 parameters) trained on Markov-chain tokens; devinterp gets the same weights in
a Hugging Face ``GPT2LMHeadModel`` (its LM API needs one; the layouts agree, logits are checked).
devinterp runs in its own venv (it pulls transformers and datasets; never our dependency)::

    python -m venv /work/venvs/devinterp2 && /work/venvs/devinterp2/bin/pip install \\
        torch==2.13.0 devinterp==2.0.1
    python benchmarks/devinterp_lm_comparison.py prepare          # train once, save the setup
    /work/venvs/devinterp2/bin/python benchmarks/devinterp_lm_comparison.py devinterp --setting drift
    python benchmarks/devinterp_lm_comparison.py ours --setting drift
    python benchmarks/devinterp_lm_comparison.py ours --setting flat --parts llc,heads,bif,sus

Settings (both sides: same ε, nβ, γ, batch 32 rows of 31 predicted tokens, 4 chains, steps):
``drift`` = lr 1e-4, nβ 20, γ 100 (the issue's drifting run); ``flat`` = lr 3e-6, nβ 3000, γ 100.
Conventions (devinterp/optim/sgmcmc.py read in its venv): its SGLD step is
w ← w − (lr/2)·(nβ·∇L_B + γ(w − w0)) + √lr·ξ with L_B the mean per-token cross-entropy, i.e. our
Langevin ε = lr, and its ``n_beta`` multiplies the same mean per-token loss as ours
(:func:`models.tiny_lm.localize_lm`). Its λ̂ averages the loss over every step, burn-in included,
minus init_loss (32 batches at w0), and its ±is the spread across chains; ours drops burn-in, uses
L_B(w*) on the same minibatch, and its se is an MCSE. Both are printed, plus devinterp's λ̂ from its
own loss trace without burn-in.

Parts: ``llc`` (speed and λ̂), ``heads`` (λ̂ restricted to each attention head, devinterp's
``create_param_masks(model, "l{i}h{j}")`` masks, saved by the devinterp side and reused by ours),
``bif`` (correlations of per-sequence probe losses across draws), ``sus`` (susceptibilities per
head vs the full run). On our side ``heads``/``bif``/``sus`` need issue 15's ``restrict_to=``,
``observe=``, ``slt_ppl.bif`` and ``slt_ppl.susceptibility`` (other branches): before they are
merged those parts stop with a message saying so. Results: benchmarks/results/devinterp_lm/*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models import tiny_lm  # noqa: E402  (needs only torch and numpy: both venvs have them)

OUT = ROOT / "benchmarks" / "results" / "devinterp_lm"
SETTINGS = {
    "drift": {"lr": 1e-4, "nbeta": 20.0, "gamma": 100.0},
    "flat": {"lr": 3e-6, "nbeta": 3000.0, "gamma": 100.0},
}
SEQ_LEN, ROWS, PROBE_ROWS, BATCH = 32, 1024, 32, 32


# --- shared setup -------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> None:
    """Train the model once; save weights, sampling tokens and probe tokens for both sides."""
    torch.manual_seed(0)
    chain = tiny_lm.markov_chain(64, successors=4, seed=0)
    tokens = tiny_lm.sample_sequences(chain, ROWS, SEQ_LEN, seed=1)
    probe = tiny_lm.sample_sequences(chain, PROBE_ROWS, SEQ_LEN, seed=2)
    model = tiny_lm.TinyGPT2(tiny_lm.TinyLMConfig(), seed=0)
    history = tiny_lm.train(model, tiny_lm.lm_data(tokens), steps=args.train_steps, batch_size=64)
    loss = tiny_lm.mean_token_loss(model, tiny_lm.lm_data(tokens))
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": model.state_dict(), "tokens": tokens, "probe": probe}, OUT / "setup.pt"
    )
    summary = {
        "params": sum(p.numel() for p in model.parameters()),
        "train_loss_last": history[-1],
        "L_n_center": loss,
        "entropy_rate": chain.entropy_rate,
        "unigram_entropy": chain.unigram_entropy,
        "uniform_loss": float(np.log(64)),
    }
    (OUT / "setup.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def load_setup() -> tuple[tiny_lm.TinyGPT2, np.ndarray, np.ndarray]:
    setup = torch.load(OUT / "setup.pt", weights_only=False)
    model = tiny_lm.TinyGPT2(tiny_lm.TinyLMConfig())
    model.load_state_dict(setup["state_dict"])
    return model.eval(), setup["tokens"], setup["probe"]


def save(name: str, record: dict, path: str | None = None) -> None:
    """Write ``record`` (plus load and threads) to ``path`` or to OUT/<name>_<stamp>.json."""
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    record |= {"load_avg_1m": os.getloadavg()[0], "threads": torch.get_num_threads()}
    target = Path(path) if path else OUT / f"{name}_{stamp}.json"
    target.write_text(json.dumps(record, indent=1, default=float))
    print(json.dumps(record, indent=1, default=float))


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads): on a shared machine the work a
    run did, much less sensitive to other processes' load than its wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call of ``fn``."""
    start, cpu0 = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu0


def speed(args: argparse.Namespace, short: tuple[float, float], wall: float, cpu: float) -> dict:
    """Wall and CPU seconds of the timed call, chain-steps per wall- and CPU-second (burn-in
    included), and the marginal rates (:func:`marginal`)."""
    steps = args.chains * (args.draws + args.burnin)
    return {
        "wall_s": wall,
        "chain_steps_per_s": steps / wall,
        "cpu_s": cpu,
        "chain_steps_per_cpu_s": steps / cpu,
        **marginal(args, short, wall, cpu),
    }


def marginal(args: argparse.Namespace, short: tuple[float, float], wall: float, cpu: float) -> dict:
    """Chain-steps per second of the steps a long run has beyond a short run (``--short`` burn-in
    + ``--short`` draws, run first in the same process): the per-step rate without the fixed cost
    of a call (devinterp's init-loss pass and zarr setup, our center table and result assembly)."""
    extra = args.chains * (args.draws + args.burnin - 2 * args.short)
    if extra <= 0:
        return {}
    return {
        "marginal_chain_steps_per_s": extra / max(wall - short[0], 1e-9),
        "marginal_chain_steps_per_cpu_s": extra / max(cpu - short[1], 1e-9),
        "short_call_wall_s": short[0],
        "short_call_cpu_s": short[1],
    }


def per_sequence_correlation(loss: np.ndarray) -> np.ndarray:
    """Pearson correlation across all (chain, draw) of the per-sequence mean token losses;
    ``loss`` has dims (chain, draw, sequence, token)."""
    per_seq = loss.mean(axis=-1).reshape(-1, loss.shape[2])
    return np.corrcoef(per_seq, rowvar=False)


# --- devinterp side (run with the devinterp venv's python) --------------------------------------


def hf_twin(model: tiny_lm.TinyGPT2):
    """The same weights in transformers' GPT2LMHeadModel (dropout off: devinterp samples in
    train mode); checks that the logits agree."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.config
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
            n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, layer_norm_epsilon=cfg.layer_norm_epsilon,
        )
    )  # fmt: skip
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"layout mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    x = torch.randint(cfg.vocab_size, (4, SEQ_LEN))
    with torch.no_grad():
        diff = float((hf(x).logits - model(x)).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"HF twin logits differ from ours by {diff}")
    return hf, diff


def devinterp_side(args: argparse.Namespace) -> None:
    from datasets import Dataset
    from devinterp.slt.llc import compute_llc
    from devinterp.slt.sampling import sample
    from devinterp.slt.weight_restrictions import create_param_masks

    model, tokens, probe = load_setup()
    hf, diff = hf_twin(model)
    if args.devinterp_model == "tiny":  # the very module our side samples: the samplers differ,
        hf = model  # not the model code (devinterp calls model(input_ids) on plain modules)
    hf = hf.to(args.device)
    train_ds = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    probe_ds = Dataset.from_dict({"input_ids": probe.tolist()}).with_format("torch")
    s = SETTINGS[args.setting]
    common = dict(
        lr=s["lr"], n_beta=s["nbeta"], localization=s["gamma"], num_chains=args.chains,
        num_draws=args.draws, num_burnin_steps=args.burnin, batch_size=BATCH, device=args.device,
    )  # fmt: skip
    record: dict = {"side": "devinterp 2.0.1", "setting": args.setting, **s, "logit_diff": diff}
    record |= {"model": args.devinterp_model, "device": args.device}
    record |= {"chains": args.chains, "draws": args.draws, "burnin": args.burnin}
    parts = args.parts.split(",")
    tmp = Path(tempfile.mkdtemp())
    if "llc" in parts:
        short = {**common, "num_draws": args.short, "num_burnin_steps": args.short}
        short_cost = timed(lambda: sample(hf, train_ds, {}, output_path=tmp / "s.zarr", **short))
        start, cpu0 = time.perf_counter(), cpu_seconds()
        samples = sample(hf, train_ds, {}, output_path=tmp / "llc.zarr", **common)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        est = compute_llc(samples)
        trace = est["loss_trace"].values  # (chain, step), burn-in included
        init = float(est["init_loss"])
        record["llc"] = {
            **speed(args, short_cost, wall, cpu),
            "llc_mean": float(est["llc_mean"]),
            "llc_std_across_chains": float(est["llc_std"]),
            "llc_per_chain": est["llc_per_chain"].values.tolist(),
            "llc_without_burnin": s["nbeta"] * (trace[:, args.burnin :].mean() - init),
            "init_loss": init,
            "loss_first_10": trace[:, :10].mean(),
            "loss_last_10": trace[:, -10:].mean(),
        }
    if {"heads", "sus"} & set(parts):
        masks = head_masks(hf, create_param_masks)
        torch.save(masks, OUT / "head_masks.pt")
    if "heads" in parts:
        record["heads"] = {}
        for name, mask in masks.items():
            start = time.perf_counter()
            samples = sample(hf, train_ds, {}, param_masks=mask, output_path=tmp / f"{name}.zarr",
                             **common)  # fmt: skip
            est = compute_llc(samples)
            record["heads"][name] = {
                "llc_mean": float(est["llc_mean"]),
                "llc_std_across_chains": float(est["llc_std"]),
                "wall_s": time.perf_counter() - start,
            }
    if {"bif", "sus"} & set(parts):
        observed = {"train": (train_ds, 1), "probe": (probe_ds, 1)}
        start = time.perf_counter()
        full = sample(hf, train_ds, observed, output_path=tmp / "obs_full.zarr", **common)
        record["observed_full_wall_s"] = time.perf_counter() - start
    if "bif" in parts:
        record["bif"] = devinterp_bif(full)
    if "sus" in parts:
        try:
            record["sus"] = devinterp_susceptibilities(
                hf, train_ds, observed, masks, full, common, tmp
            )
        except Exception as err:  # keep the other parts' numbers
            record["sus"] = {"error": f"{type(err).__name__}: {err}"}
    save(f"devinterp_{args.setting}", record, args.record)


def head_masks(hf, create_param_masks) -> dict:
    cfg = hf.config
    return {
        f"l{i}h{j}": {k: v.clone() for k, v in create_param_masks(hf, f"l{i}h{j}").items()}
        for i in range(cfg.n_layer)
        for j in range(cfg.n_head)
    }


def devinterp_bif(full) -> dict:
    from devinterp.slt.bif import compute_bif

    start = time.perf_counter()
    bif = compute_bif(full, correlation_method="sequence", loss_keys=["probe"], device="cpu")
    wall = time.perf_counter() - start
    ds = full.dataset
    loss = ds["loss_probe"].values  # (chain, draw, batch, token)
    ids = ds["input_ids_probe"].values
    while ids.ndim > 2:
        ids = ids[0]
    # devinterp shuffles the probe rows: put them back in the probe's order for the comparison
    _, _, probe = load_setup()
    order = [int(np.flatnonzero((ids == row).all(axis=1))[0]) for row in probe]
    ours_style = per_sequence_correlation(loss[:, :, order])
    return {
        "compute_bif_wall_s": wall,
        "compute_bif_dims": list(bif["influences"].dims),
        "compute_bif_shape": list(bif["influences"].shape),
        "per_sequence_correlation": ours_style.tolist(),
        "probe_order_in_devinterp": order,
        "mean_offdiag": float(ours_style[~np.eye(len(ours_style), dtype=bool)].mean()),
    }


def devinterp_susceptibilities(hf, train_ds, observed, masks, full, common, tmp) -> dict:
    from devinterp.slt.sampling import sample
    from devinterp.slt.susceptibilities import compute_susceptibilities

    wr_map = {"full": full}
    start = time.perf_counter()
    for name, mask in masks.items():
        wr_map[name] = sample(hf, train_ds, observed, param_masks=mask,
                              output_path=tmp / f"obs_{name}.zarr", **common)  # fmt: skip
    tree = compute_susceptibilities(wr_map, "train")
    sus = tree["susceptibilities"].dataset["sus"]  # dims (sus_flat, wr); sus_flat = (row, token)
    ids = full.dataset["input_ids_probe"].values
    while ids.ndim > 2:
        ids = ids[0]
    _, _, probe = load_setup()
    order = [int(np.flatnonzero((ids == row).all(axis=1))[0]) for row in probe]
    per_token = np.asarray(sus.values).reshape(len(ids), -1, sus.shape[-1])[order]
    # χ is linear in the probe loss, so the mean over a row's tokens is the per-sequence χ
    per_sequence = per_token.mean(axis=1)
    return {
        "wall_s": time.perf_counter() - start,
        "restrictions": [str(w) for w in sus["wr"].values],
        "per_sequence": per_sequence.T.tolist(),
        "mean_per_restriction": per_sequence.mean(axis=0).tolist(),
    }


# --- our side -----------------------------------------------------------------------------------


def ours_side(args: argparse.Namespace) -> None:
    import slt_ppl
    import slt_ppl.sampling  # imported before the clock starts, as devinterp's modules are

    model, tokens, probe = load_setup()
    model = model.to(args.device)  # the posterior, its data and the chains live where the model is
    data = tiny_lm.lm_data(tokens)
    s = SETTINGS[args.setting]
    post = tiny_lm.localize_lm(model, data, nbeta=s["nbeta"], gamma=s["gamma"])
    per_token = token_scale(post, data)
    run = dict(
        kernel="sgld", step_size=s["lr"], batch_size=BATCH, num_chains=args.chains,
        num_draws=args.draws, num_burnin=args.burnin, thin=1, seed=0, progress=False,
        diag_every=args.diag_every,
    )  # fmt: skip
    record: dict = {"side": "slt_ppl torch", "setting": args.setting, **s}
    record |= {"model": "tiny", "device": args.device, "diag_every": args.diag_every}
    record |= {"chains": args.chains, "draws": args.draws, "burnin": args.burnin}
    record["posterior_nbeta_attr"] = post.nbeta
    parts = args.parts.split(",")
    if "llc" in parts:
        short = {**run, "num_draws": args.short, "num_burnin": args.short}
        short_cost = timed(lambda: slt_ppl.sample(post, **short))
        start, cpu0 = time.perf_counter(), cpu_seconds()
        result = slt_ppl.sample(post, **run)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        est = slt_ppl.llc(result)
        warm = result["warmup_sample_stats"]["loss"].values / per_token
        draws = result["sample_stats"]["loss"].values / per_token
        record["llc"] = {
            **speed(args, short_cost, wall, cpu),
            "llc": float(est["llc"]),
            "llc_se": float(est["llc_se"]),
            "verdict": str(est.attrs.get("verdict")),
            "loss_center": float(post.info["loss_center_full"]) / per_token,
            "loss_first_10": float(warm[:, :10].mean()),
            "loss_last_10": float(draws[:, -10:].mean()),
        }
    if "heads" in parts:
        record["heads"] = ours_heads(slt_ppl, model, data, s, run)
    if {"bif", "sus"} & set(parts):
        record |= ours_observed(slt_ppl, model, data, probe, s, run, parts)
    save(f"ours_{args.setting}", record, args.record)


def token_scale(post, data) -> float:
    """The recorded loss is the mean per-token NLL (1) or, on the per-sequence fallback of
    ``localize_lm``, its sum over the T tokens (T)."""
    tokens = int(data["y"].shape[1])
    return 1.0 if post.info.get("tokens_per_row") else float(tokens)


def require(slt_ppl, *names: str) -> None:
    missing = [n for n in names if not hasattr(slt_ppl, n)]
    if missing:
        raise SystemExit(
            f"slt_ppl has no {missing}: this part needs issue 15's other branches (restrict_to=, "
            "observe=, bif, susceptibility); run it after they are merged"
        )


def restrict_masks() -> dict:
    """devinterp's per-head masks (saved by its side) as ``restrict_to`` dicts name → bool mask."""
    masks = torch.load(OUT / "head_masks.pt", weights_only=False)
    return {head: {k: v.bool() for k, v in m.items()} for head, m in masks.items()}


def ours_heads(slt_ppl, model, data, s, run) -> dict:
    """After merge: λ̂ restricted to each attention head (seam 2), same masks as devinterp."""
    out = {}
    for head, mask in restrict_masks().items():
        try:
            post = slt_ppl.localize(model, data, loss_fn=tiny_lm.per_token_nll, nbeta=s["nbeta"],
                                    gamma=s["gamma"], restrict_to=mask)  # fmt: skip
        except TypeError as err:  # before the merge of seams 1 and 2
            raise SystemExit(
                f"per-head LLCs need restrict_to= and loss_fn= (merge): {err}"
            ) from err
        start = time.perf_counter()
        est = slt_ppl.llc(slt_ppl.sample(post, **run))
        out[head] = {"llc": float(est["llc"]), "llc_se": float(est["llc_se"]),
                     "verdict": str(est.attrs.get("verdict")), "sampled_dim": post.dim,
                     "wall_s": time.perf_counter() - start}  # fmt: skip
    return out


def ours_observed(slt_ppl, model, data, probe, s, run, parts) -> dict:
    """After merge: probe losses recorded inside the loop (seam 3), BIF and susceptibilities."""
    require(slt_ppl, "bif", "susceptibility")
    observe = {"train": {k: v[:PROBE_ROWS] for k, v in data.items()},
               "probe": tiny_lm.lm_data(probe)}  # fmt: skip
    restrictions = {"full": None, **(restrict_masks() if "sus" in parts else {})}
    results, out = {}, {}
    for name, mask in restrictions.items():
        post = slt_ppl.localize(model, data, loss_fn=tiny_lm.per_token_nll, nbeta=s["nbeta"],
                                gamma=s["gamma"], restrict_to=mask)  # fmt: skip
        start = time.perf_counter()
        results[name] = slt_ppl.sample(post, observe=observe, **run)
        out.setdefault("observed_wall_s", {})[name] = time.perf_counter() - start
    if "bif" in parts:
        loss = results["full"]["sample_stats"]["loss_probe"].values
        bif = slt_ppl.bif(results["full"], observable="probe", kind="correlation")
        value, se = bif["bif"].values, bif["bif_se"].values
        off = ~np.eye(len(value), dtype=bool)
        out["bif"] = {
            "per_sequence_correlation": per_sequence_correlation(loss).tolist(),
            "bif_dims": list(bif["bif"].dims),
            "bif_shape": list(bif["bif"].shape),
            "bif_vs_raw_max_abs_diff": float(np.abs(value - per_sequence_correlation(loss)).max()),
            "bif_se_median_offdiag": float(np.median(se[off])),
            "fraction_offdiag_beyond_2se": float((np.abs(value[off]) > 2 * se[off]).mean()),
        }
    if "sus" in parts:
        sus = slt_ppl.susceptibility(results, sampling="train", probe="probe")
        out["sus"] = {str(k): np.asarray(v.values).tolist() for k, v in sus.data_vars.items()}
        out["sus"]["dims"] = list(sus["susceptibility"].dims)
        out["sus"]["restrictions"] = [str(r) for r in sus[sus["susceptibility"].dims[0]].values]
    return out


# --- summary ------------------------------------------------------------------------------------


def summarize(args: argparse.Namespace) -> None:
    """Median chain-steps/s and λ̂ per side and setting over all saved runs."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(OUT.glob("*_*.json")):
        rec = json.loads(path.read_text())
        if "llc" in rec:
            rows.setdefault((rec["side"], rec["setting"]), []).append(rec)
    for (side, setting), recs in sorted(rows.items()):
        speeds = [r["llc"]["chain_steps_per_s"] for r in recs]
        per_cpu = [r["llc"].get("chain_steps_per_cpu_s") for r in recs]
        per_cpu = [v for v in per_cpu if v is not None]
        loads = [r["load_avg_1m"] for r in recs]
        print(f"{side:16s} {setting:6s} runs={len(recs)} median chain-steps/s="
              f"{statistics.median(speeds):.1f} (all {[round(v, 1) for v in speeds]}; "
              f"load {[round(v, 1) for v in loads]}); per CPU-second "
              f"{[round(v, 1) for v in per_cpu]}")  # fmt: skip
        for r in recs:
            print("   ", {k: v for k, v in r["llc"].items() if k != "llc_per_chain"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("side", choices=["prepare", "devinterp", "ours", "summary"])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="drift")
    parser.add_argument("--parts", default="llc")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--burnin", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--devinterp-model", choices=["tiny", "hf"], default="hf",
                        help="devinterp samples the HF GPT2LMHeadModel twin (hf) or our very "
                        "TinyGPT2 module (tiny)")  # fmt: skip
    parser.add_argument(
        "--diag-every",
        type=int,
        default=20,
        help="our side: diagnostics (MALA acceptance, heating) every k draws",
    )
    parser.add_argument("--short", type=int, default=10,
                        help="llc part: a first call with this many burn-in steps and draws "
                        "(warm-up, and the fixed cost of a call: see marginal())")  # fmt: skip
    parser.add_argument("--record", default=None, help="write the JSON record to this path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"prepare": prepare, "devinterp": devinterp_side, "ours": ours_side, "summary": summarize}[
        args.side
    ](args)


if __name__ == "__main__":
    main()
