"""Small models shared by the reliability tests (checkpoints, divergence, preflight, fuzzing)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

#: Seed and init_jitter under which exactly chain 3 of 4 starts in the trap model's right-hand well
#: (its start is -1 + 0.65·1.80 ≈ 0.17; the other chains start below -1.3).
TRAP_SEED = 5
TRAP_JITTER = 0.65
TRAP_CHAIN = 3


def regression_model(x, y=None):
    """y ~ N(x·w, 1): a regular model with a unique minimum."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def regression_problem(n: int = 200, d: int = 2, seed: int = 0):
    """(model, data, center) with the center at the least-squares solution."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.linspace(0.5, 1.0, d) + rng.normal(size=n)).astype(np.float32)
    w_hat = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    return regression_model, {"x": x, "y": y}, {"w": w_hat.astype(np.float32)}


def trap_model(y):
    """y ~ N(w², 1): two wells at w = ±1. The likelihood is NaN for w > 0.5, a trap that only a
    chain started in the right-hand well falls into, some steps into the run."""
    w = numpyro.sample("w", dist.Normal(0.0, 2.0))
    scale = jnp.where(w > 0.5, jnp.nan, 1.0)
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(w**2, scale), obs=y)


def trap_problem(n: int = 2000, seed: int = 0):
    """(model, data, center): data from w = ±1, center at the left minimum w* = -1."""
    rng = np.random.default_rng(seed)
    y = (1.0 + rng.normal(size=n)).astype(np.float32)
    return trap_model, {"y": y}, {"w": np.float32(-1.0)}
