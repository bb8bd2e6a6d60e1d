"""Where the time of one SGLD-LLC step goes: timing variants of the compiled loop (issue 8).

    python benchmarks/llc_profile.py [--width 50] [--chains 8] [--steps 400] [--repeats 5]

Variants, interleaved and repeated (medians; the machine may be shared): the full loop as shipped;
without the center table (L_B(w*) by a forward pass); without the MALA diagnostic; with thin = 10
(records every 10th step). Compile time is excluded (segments are compiled ahead of time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy

import slt_ppl
from models.numpyro_zoo import dln
from slt_ppl.kernels import get_kernel
from slt_ppl.sampling.loop import SegmentRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model, problem = dln(widths=[args.width] * 5, n=10_000)
    post = slt_ppl.localize(model, problem.data, problem.center)
    kernel = get_kernel("sgld")
    c, t = args.chains, args.steps
    variants = {
        "shipped": (SegmentRunner(post, kernel, 500, 1, 20, False, True, 1e3), t),
        "no center table": (
            SegmentRunner(post, kernel, 500, 1, 20, False, True, 1e3, center_table="off"),
            t,
        ),
        "no MALA diagnostic": (SegmentRunner(post, kernel, 500, 1, 10**9, False, True, 1e3), t),
        "thin 10": (SegmentRunner(post, kernel, 500, 10, 2, False, True, 1e3), t // 10),
    }
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(c))
    prepared = {}
    for name, (runner, draws) in variants.items():
        state = runner.init(keys, jnp.broadcast_to(post.center, (c, post.dim)))
        seg = runner.build(draws)
        jax.block_until_ready(seg(state, keys, jax.random.PRNGKey(1), 1e-6, 0))
        prepared[name] = (seg, state)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (seg, state) in prepared.items():
            t0 = time.perf_counter()
            jax.block_until_ready(seg(state, keys, jax.random.PRNGKey(1), 1e-6, 0))
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["shipped"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<20} {c * t / med:8.0f} chain-steps/s   {med / base:5.2f}x the shipped time")


if __name__ == "__main__":
    main()
