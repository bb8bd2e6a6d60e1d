"""The loss of a linear-Gaussian model (DLN, RRR) from sufficient statistics, for exact references.

For y_i = P·x_i + N(0, σ²I), P = W_M⋯W_1 (``models.numpyro_zoo.dln_model``), the mean negative
log-likelihood depends on the data only through Sxx = XᵀX/n and R = Xᵀ(Y − X·P*ᵀ)/n:

    L_n(w) − L_n(w*) = (1/(2σ²))·[tr(D·Sxx·Dᵀ) − 2·tr(D·R)],   D = P(w) − P*,

(expand ‖y − Px‖² = ‖(y − P*x) − Dx‖² and average). Each evaluation then costs O(widths³) instead of
O(n·widths²), which makes full-batch NUTS on these posteriors affordable. Written relative to w*,
so the float32 cancellation of L_n(w) − L_n(w*) (two numbers ≈ N·log σ + ...) does not arise.

:func:`stats_posterior` returns the same ``LocalPosterior`` with only ``loss_fn`` swapped (the data,
nβ, γ, center and coordinates unchanged) after checking that the two losses agree.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _product(params: dict[str, jax.Array], depth: int) -> jax.Array:
    out = params["w0"]
    for i in range(1, depth):
        out = params[f"w{i}"] @ out
    return out


def stats_posterior(posterior: Any, noise: float, *, check_points: int = 8, seed: int = 0) -> Any:
    """``posterior`` (of ``dln_model``, sites w0..w{M−1}) with the sufficient-statistics loss.

    Raises ValueError if the two losses differ by more than 1e-4·(1 + |L|) at the center or at
    ``check_points`` random points w* + N(0, 0.1²) (float32 round-off of the direct loss is ~1e-6).
    """
    x = np.asarray(posterior.data["x"], np.float64)
    y = np.asarray(posterior.data["y"], np.float64)
    n = x.shape[0]
    depth = len(posterior.sites)
    center = posterior.unravel(posterior.center)
    p_star = np.asarray(_product({k: jnp.asarray(v) for k, v in center.items()}, depth), np.float64)
    sxx = x.T @ x / n
    resid = x.T @ (y - x @ p_star.T) / n  # (H_0, H_M)
    loss_center = float(posterior.loss_fn(posterior.center, posterior.data))
    scale = 1.0 / (2.0 * noise * noise)

    def loss_fn(w: jax.Array, batch: Any = None) -> jax.Array:
        dtype = w.dtype
        d = _product(posterior.unravel(w), depth) - jnp.asarray(p_star, dtype)
        quad = jnp.sum((d @ jnp.asarray(sxx, dtype)) * d)
        cross = jnp.sum(d * jnp.asarray(resid.T, dtype))
        return jnp.asarray(loss_center, dtype) + scale * (quad - 2.0 * cross)

    rng = np.random.default_rng(seed)
    w0 = np.asarray(posterior.center)
    for k in range(check_points + 1):
        w = w0 if k == 0 else w0 + 0.1 * rng.normal(size=w0.shape).astype(w0.dtype)
        direct = float(posterior.loss_fn(jnp.asarray(w), posterior.data))
        fast = float(loss_fn(jnp.asarray(w)))
        if abs(direct - fast) > 1e-4 * (1.0 + abs(direct)):
            raise ValueError(
                f"sufficient-statistics loss {fast} differs from the model's {direct} at point {k}"
            )
    return posterior.replace(loss_fn=loss_fn)
