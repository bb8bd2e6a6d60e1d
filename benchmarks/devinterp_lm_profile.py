"""Where one SGLD chain-step on the tiny causal LM spends its time, and how far each sampler is from
the matmul floor (issue 15 item 6; companion of ``devinterp_lm_comparison.py``).

Run after ``devinterp_lm_comparison.py prepare``::

    OMP_NUM_THREADS=1 python benchmarks/devinterp_lm_profile.py --threads 1

Measures, in CPU seconds of this process (``time.process_time``: on a shared machine far less
sensitive to other processes than wall time), interleaved over ``--reps`` rounds, min over rounds:

- the FLOPs of one chain-step (one forward + backward on a batch of 32 sequences), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention products only) and by the
  6·params·tokens rule, and this machine's single-thread matmul throughput at the model's shapes;
  FLOPs / throughput is the floor no eager or compiled CPU sampler can beat in float32;
- per chain: plain autograd forward+backward of the ``nn.Module`` (``loss.backward()``), the same
  plus devinterp's per-parameter SGLD update (what devinterp's inner loop does per step, without
  its zarr writes and checks), ``torch.func.grad`` of one chain, our vmapped
  ``value_and_grad`` over C = 1, 4, 8 chains (one call: bmm over chains), and our full draw
  (``TorchSegmentRunner.run``) with the diagnostics of every 20th draw (the default) and without;
- the share of matmul time in the vmapped step (``torch.profiler``).

Results: benchmarks/results/devinterp_lm/profile_<stamp>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import devinterp_lm_comparison as cmp  # noqa: E402

from models import tiny_lm  # noqa: E402


def cpu_time(fn: Callable[[], object], reps: int) -> float:
    """CPU seconds of one call of ``fn`` (mean over ``reps`` calls after one warm-up call)."""
    fn()
    start = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - start) / reps


def matmul_gflops(shapes: list[tuple[int, int, int]], reps: int = 30) -> dict[str, float]:
    """Single-process float32 matmul throughput (GFLOP/s) at the model's (m, k, n) shapes."""
    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / cpu_time(lambda a=a, b=b: a @ b, reps) / 1e9
    return out


def step_flops(model: tiny_lm.TinyGPT2, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """FLOPs of one forward+backward (FlopCounterMode counts matmul-like ops only) and the
    6·P·T rule (P parameters that enter a matmul, T predicted tokens)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        tiny_lm.per_token_nll(model(batch["x"]), batch).mean().backward()
    cfg = model.config
    matmul_params = sum(p.numel() for p in model.parameters()) - cfg.n_positions * cfg.n_embd
    return {
        "counted_fwd_bwd": float(counter.get_total_flops()),
        "six_p_t": 6.0 * matmul_params * batch["y"].numel(),
    }


def runner_for(post, chains: int, diag_every: int):
    from slt_ppl.kernels_torch import get_kernel
    from slt_ppl.sampling.torch_loop import TorchSegmentRunner

    return TorchSegmentRunner(
        post, get_kernel("sgld"), cmp.BATCH, 1, diag_every, False, True, 100.0
    )  # fmt: skip


def profile(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model, tokens, _ = cmp.load_setup()
    data = tiny_lm.lm_data(tokens)
    gen = torch.Generator().manual_seed(0)
    batch = {k: v[torch.randint(0, len(tokens), (cmp.BATCH,), generator=gen)] for k, v in
             data.items()}  # fmt: skip
    post = tiny_lm.localize_lm(model, data, nbeta=20.0, gamma=100.0)
    d = cfg_d = model.config.n_embd
    tokens_per_batch = batch["y"].numel()
    shapes = [(tokens_per_batch, d, 3 * d), (tokens_per_batch, d, 4 * cfg_d),
              (tokens_per_batch, 4 * d, d), (tokens_per_batch, d, d)]  # fmt: skip
    record: dict = {"threads": args.threads, "params": post.dim, "tokens": tokens_per_batch}
    record["flops"] = step_flops(model, batch)
    record["matmul_gflops"] = matmul_gflops(shapes)
    params = list(model.parameters())

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        tiny_lm.per_token_nll(model(batch["x"]), batch).mean().backward()

    def devinterp_like() -> None:  # devinterp's inner loop: backward, then a per-tensor update
        plain()
        with torch.no_grad():
            for p in params:
                d_p = 20.0 * p.grad
                p.add_(d_p, alpha=-0.5e-4).add_(torch.randn_like(p), alpha=1e-2)

    state = {k: p.detach().clone() for k, p in model.named_parameters()}
    grad_one = torch.func.grad(lambda w: post.potential(w, batch)[0])
    center = post.center.clone()
    timings: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        timings.setdefault(name, []).append(seconds)

    vgs = {}
    for c in args.chains:
        w = center.expand(c, -1).clone()
        vgs[c] = (runner_for(post, c, 20).value_and_grad(batch, False), w)
    for _ in range(args.reps):  # interleaved, so that every variant sees the same load
        add("plain_autograd_fwd_bwd", cpu_time(plain, 3))
        add("devinterp_like_step", cpu_time(devinterp_like, 3))
        model.load_state_dict(state, strict=False)
        with torch.no_grad():
            add("func_grad_one_chain", cpu_time(lambda: grad_one(center), 3))
            for c, (vg, w) in vgs.items():
                add(f"vmap_value_and_grad_C{c}", cpu_time(lambda vg=vg, w=w: vg(w), 2) / c)
        for c in args.chains:
            for every, label in ((20, "diag20"), (10**9, "diagoff")):
                add(f"full_draw_{label}_C{c}", run_draws(post, c, every, args.draws) / c)
    record["per_chain_step_cpu_s"] = {k: min(v) for k, v in timings.items()}
    record["matmul_share_vmap_C4"] = matmul_share(vgs.get(4) or next(iter(vgs.values())))
    return record


def run_draws(post, chains: int, diag_every: int, draws: int) -> float:
    """CPU seconds per draw of ``TorchSegmentRunner.run`` (one step per draw, SGLD, lr 1e-4)."""
    runner = runner_for(post, chains, diag_every)
    keys = np.arange(chains, dtype=np.uint64) + 11
    state = runner.init(keys, post.center.expand(chains, -1).clone())
    runner.run(state, keys, np.uint64(3), 1e-4, 1, 2)  # warm-up
    start = time.process_time()
    runner.run(state, keys, np.uint64(3), 1e-4, 1, draws)  # draws 1.. (draw 0 is diagnostic)
    return (time.process_time() - start) / draws


def matmul_share(vg_w) -> float:
    """Fraction of the vmapped step's profiled CPU time spent in mm/bmm/addmm."""
    from torch.profiler import ProfilerActivity, profile

    vg, w = vg_w
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            vg(w)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::bmm",
                                                                  "aten::addmm"))  # fmt: skip
    return mm / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--chains", type=lambda s: [int(c) for c in s.split(",")],
                        default=[1, 4, 8])  # fmt: skip
    record = profile(parser.parse_args())
    flops = record["flops"]["counted_fwd_bwd"]
    best = max(record["matmul_gflops"].values())
    record["matmul_floor_s"] = flops / (best * 1e9)
    cmp.save("profile", record)
    print(f"floor {record['matmul_floor_s'] * 1e3:.1f} ms per chain-step at {best:.0f} GFLOP/s")
    for name, sec in record["per_chain_step_cpu_s"].items():
        print(f"{name:34s} {sec * 1e3:7.1f} ms  ({sec / record['matmul_floor_s']:.1f}x floor)")


if __name__ == "__main__":
    main()
