"""Benchmark: lower 2sED of a ~100k-parameter MLP on CPU (time and peak memory).

MLP 64 → 512 → 128 → 10 (100,234 parameters) on the digits data, 3 layers, prior draws.
Peak memory: tracemalloc for Python-side (NumPy) allocations and ru_maxrss for the whole process.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import slt_ppl
from validation.mlp_digits import load_digits_data, make_mlp, mlp_layers

WIDTHS = (512, 128)


def main(num_theta: int = 4, num_samples: int = 128) -> dict[str, float]:
    x, y = load_digits_data()
    model = make_mlp(WIDTHS)
    tracemalloc.start()
    start = time.perf_counter()
    ds = slt_ppl.two_scale_ed(
        model,
        {"x": x, "y": y},
        layers=mlp_layers(WIDTHS),
        num_theta=num_theta,
        num_samples=num_samples,
        num_bootstrap=100,
    )
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "d": ds.attrs["d"],
        "num_theta": num_theta,
        "num_samples": num_samples,
        "seconds": seconds,
        "tracemalloc_peak_mb": peak / 2**20,
        "maxrss_mb": maxrss_mb,
        "two_scale_ed": float(ds.two_scale_ed.squeeze()),
        "lower_two_scale_ed": float(ds.lower_two_scale_ed.squeeze()),
        "lower_two_scale_ed_se": float(ds.lower_two_scale_ed_se.squeeze()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-theta", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=128)
    args = parser.parse_args()
    for key, value in main(args.num_theta, args.num_samples).items():
        print(f"{key}: {value}")
