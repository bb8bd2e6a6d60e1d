"""Coverage of the BIF's ±2 se on exact, autocorrelated draws (docs/observables.md table).

Exact draws of the linear-Gaussian regression's posterior of tests/test_observables.py along AR(1)
chains (stationary, τ = (1 + ρ)/(1 − ρ)); per setting, 40 seeds; the share of the 78 distinct
covariance entries within 2 se of the closed form, with the former fixed 20 batches, with the
autocorrelation-sized batches (default), and with a per-entry ArviZ MCSE of the product trace::

    python benchmarks/bif_se_coverage.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import arviz_stats
import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_observables import (  # noqa: E402
    PROBES,
    _ar1_draws,
    _closed_form_bif,
    _gaussian,
    _problem,
    _tree,
)  # fmt: skip

import slt_ppl  # noqa: E402

SETTINGS = [(4, 100, 0.98), (8, 200, 0.97), (16, 100, 0.95), (8, 400, 0.9), (4, 2000, 0.9)]


def main(seeds: int = 40) -> None:
    warnings.simplefilter("ignore")
    data, center = _problem()
    nbeta = len(data["y"]) / np.log(len(data["y"]))
    mu, sigma = _gaussian(data, center, nbeta, 10.0)
    probe = {k: v[:PROBES].astype(np.float64) for k, v in data.items()}
    exact = _closed_form_bif(probe, mu, sigma)
    upper = np.triu_indices(PROBES)
    print(
        "| chains x draws | tau | fixed 20 batches (K) | 5 tau batches (K) | ArviZ MCSE per entry |"
    )
    for chains, draws, rho in SETTINGS:
        inside = {"fixed": [], "tau": [], "mcse": []}
        ks = {"fixed": [], "tau": []}
        for seed in range(seeds):
            w = _ar1_draws(np.random.default_rng(seed), mu, sigma, chains, draws, rho)
            losses = 0.5 * (probe["y"] - w @ probe["x"].T) ** 2
            tree = _tree(losses, np.zeros(PROBES), nbeta)
            for key, k in (("fixed", 20), ("tau", None)):
                r = slt_ppl.bif(tree, "p", num_batches=k)
                z = (r["bif"].values - exact)[upper] / r["bif_se"].values[upper]
                inside[key].append(np.abs(z) < 2)
                ks[key].append(r.attrs["num_batches"])
            dev = losses - losses.mean((0, 1))
            u = xr.DataArray(dev[..., upper[0]] * dev[..., upper[1]], dims=("chain", "draw", "e"))
            se = np.asarray(arviz_stats.mcse(u, sample_dims=["chain", "draw"], method="mean"))
            inside["mcse"].append(np.abs(u.mean(("chain", "draw")).values - exact[upper]) < 2 * se)
        cells = [f"{np.mean(inside[k]):.3f} ({np.median(ks[k]):.0f})" for k in ("fixed", "tau")]
        tau = (1 + rho) / (1 - rho)
        print(
            f"| {chains} x {draws} | {tau:.0f} | {' | '.join(cells)} | {np.mean(inside['mcse']):.3f} |"
        )


if __name__ == "__main__":
    main()
