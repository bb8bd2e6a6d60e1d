"""Chain-steps per second of torch SGLD on the ~10k-parameter deep linear network.

Widths (50, 50, 50, 50, 50) (4 layers of 50×50 = 10 000 parameters), n = 10 000, batch 500,
8 chains, fixed ε (no tuning, so only the sampling loop is timed).
Run: ``python benchmarks/torch_backend_benchmark.py``
(``--device cuda`` where a GPU exists). Prints one line per measurement; results go to RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

import slt_ppl
from models import pyro_zoo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, problem = pyro_zoo.dln(widths=[50, 50, 50, 50, 50], n=10_000)
    post = slt_ppl.localize(model, problem.data, problem.center, gamma=1.0, device=args.device)
    kwargs = dict(
        kernel="sgld", step_size=1e-7, batch_size=500, num_chains=args.chains, progress=False,
        num_burnin=0, num_segments=1,
    )  # fmt: skip
    slt_ppl.sample(post, num_draws=10, **kwargs)  # warm-up
    if post.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = slt_ppl.sample(post, num_draws=args.steps, **kwargs)
    wall = time.perf_counter() - t0
    rate = args.steps * args.chains / wall
    name = torch.cuda.get_device_name() if post.device.type == "cuda" else "cpu"
    print(
        f"torch SGLD, DLN d={post.dim}, n=10000, batch 500, {args.chains} chains, device {name}, "
        f"torch threads {torch.get_num_threads()}: {rate:.0f} chain-steps/s "
        f"({args.steps / wall:.1f} steps/s, loop {result.attrs['sampling_time_s']:.2f} s)"
    )


if __name__ == "__main__":
    main()
