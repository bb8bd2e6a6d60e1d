"""Where the time of one SGLD-LLC step goes, and how the two backends compare (issues 8, 14).

    python benchmarks/llc_profile.py [--width 50] [--chains 8] [--steps 400] [--repeats 5]

Variants of the same problem (DLN of 5 layers of ``--width``, n = 10 000, batch 500 shared by the
chains, fixed ε), timed interleaved and repeated in one process (medians), so that ratios stay
meaningful on a shared machine:

- ``shipped``: the JAX step program as ``slt_ppl.sample`` runs it (every diagnostic on: per-draw
  records, center table, MALA diagnostic and heating statistics every 20 draws);
- ``no center table``: L_B(w*) by a forward pass; ``no diag draws``: diag_every = ∞ (no MALA
  diagnostic, no heating statistics); ``thin 10``: records every 10th step;
- ``minimal``: the hand-written jitted SGLD loop of ``llc_speed.py`` (the ceiling);
- ``torch``: the torch step program (``TorchSegmentRunner``) on the Pyro DLN, every diagnostic on;
  ``torch no diag draws`` likewise without them (``--no-torch`` skips both, ``--torch-threads``
  sets torch's intra-op threads: on a loaded machine torch's default OpenMP threads spin and
  collapse).

Compile time is excluded (every variant runs once before timing). λ̂ of each variant's last run is
printed beside its speed (short runs: not equilibrated; they must agree with each other).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout, not an installed copy

import slt_ppl  # noqa: E402
from models.numpyro_zoo import dln  # noqa: E402
from slt_ppl.kernels import get_kernel  # noqa: E402
from slt_ppl.sampling.loop import SegmentRunner  # noqa: E402

EPS, BATCH, N = 1e-6, 500, 10_000  # ε of every variant (``--eps``; llc_speed's minimal: its own)


def jax_variants(width: int, c: int, t: int) -> tuple[dict[str, Callable], float]:
    """Runs of ``t`` steps of ``c`` chains (each returns the per-draw losses and L_B(w*))."""
    model, problem = dln(widths=[width] * 5, n=N)
    post = slt_ppl.localize(model, problem.data, problem.center)
    kernel = get_kernel("sgld")
    runners = {
        "shipped": (SegmentRunner(post, kernel, BATCH, 1, 20, False, True, 1e3), t),
        "no center table": (
            SegmentRunner(post, kernel, BATCH, 1, 20, False, True, 1e3, center_table="off"),
            t,
        ),
        "no diag draws": (SegmentRunner(post, kernel, BATCH, 1, 10**9, False, True, 1e3), t),
        "thin 10": (SegmentRunner(post, kernel, BATCH, 10, 2, False, True, 1e3), t // 10),
    }
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(c))
    out = {}
    for name, (runner, draws) in runners.items():
        state = runner.init(keys, jnp.broadcast_to(post.center, (c, post.dim)))
        seg = runner.build(draws)

        def go(seg=seg, state=state):
            rec = jax.block_until_ready(seg(state, keys, jax.random.PRNGKey(1), EPS, 0)[1])
            return np.asarray(rec.loss), np.asarray(rec.loss_center)

        out[name] = go
    return out, post.gamma


def torch_variants(width: int, c: int, t: int, gamma: float) -> dict[str, Callable]:
    import torch

    from models import pyro_zoo
    from slt_ppl.kernels_torch import get_kernel as torch_kernel
    from slt_ppl.sampling.torch_backend import TorchBackend
    from slt_ppl.sampling.torch_loop import TorchSegmentRunner

    model, problem = pyro_zoo.dln(widths=[width] * 5, n=N)
    post = slt_ppl.localize(model, problem.data, problem.center, gamma=gamma, device="cpu")
    backend = TorchBackend()
    backend.check_posterior(post)
    keys, batch_key = backend.keys(0, 0, np.arange(c), True)
    out = {}
    for name, every in (("torch", 20), ("torch no diag draws", 10**9)):
        runner = TorchSegmentRunner(post, torch_kernel("sgld"), BATCH, 1, every, False, True, 1e3)
        state = runner.init(keys, post.center.expand(c, post.dim).clone())
        seg = runner.build(t)

        def go(seg=seg, state=state):
            rec = seg(state, keys, batch_key, EPS, 0)[1]
            return rec.loss, rec.loss_center

        out[name] = go
    print(f"torch threads: {torch.get_num_threads()}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch default)"
    )
    parser.add_argument("--only", default="", help="comma list of variants to time (default all)")
    parser.add_argument(
        "--eps",
        type=float,
        default=1e-6,
        help="ε of the slt_ppl variants (the minimal loop uses llc_speed.STEP_SIZE of the width: "
        "1e-6 at width 50, 1e-7 at 500; pass that to compare λ̂)",
    )
    args = parser.parse_args()
    globals()["EPS"] = args.eps  # read by jax_variants' runs
    c, t = args.chains, args.steps
    variants, gamma = jax_variants(args.width, c, t)
    from llc_speed import SIZES, minimal_program

    size = next((name for name, width in SIZES.items() if width == args.width), None)
    go_min, _, full, _ = minimal_program(size, c, t, gamma) if size else (None,) * 4
    if go_min is not None:
        variants["minimal"] = lambda: (go_min().T, np.full((c, t), full))
    if not args.no_torch:
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        variants.update(torch_variants(args.width, c, t, gamma))
    if args.only:
        keep = {"shipped", *args.only.split(",")}
        variants = {name: go for name, go in variants.items() if name in keep}
    last = {name: go() for name, go in variants.items()}  # compile / warm up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, go in variants.items():
            t0 = time.perf_counter()
            last[name] = go()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["shipped"])
    nbeta = N / np.log(N)
    for name, ts in times.items():
        med = statistics.median(ts)
        loss, center = last[name]
        half = loss.shape[1] // 2
        llc = nbeta * float(np.nanmean(loss[:, half:] - center[:, half:]))
        rate = c * t / med
        print(
            f"{name:<20} {rate:8.0f} chain-steps/s  {med / base:5.2f}x shipped time  λ̂ {llc:8.1f}"
        )


if __name__ == "__main__":
    main()
