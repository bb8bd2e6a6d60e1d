"""Sampling results fabricated with known answers: exact SGLD chains on a Gaussian target.

Target: d independent directions with loss curvatures c_i = nβ·h_L,i (in units of the tempered
potential) and localization γ, so the precision is h_i = c_i + γ and the exact LLC is
λ = Σ ½·c_i/h_i. Euler–Maruyama SGLD with step ε and gradient-noise variance Σ_i is the AR(1)
w ← φ_i·w + noise with φ_i = 1 − εh_i/2 and stationary variance
v_i = (1 + εΣ_i/4)/(h_i·(1 − εh_i/4)) (``slt_ppl.estimators.bias``), so the heated LLC is
λ_ε = Σ ½·c_i·v_i in closed form. Draws ``thin`` steps apart are simulated exactly (φ^thin, and
variance v·(1 − φ^{2·thin}) for the innovation), started from the stationary law.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr


def heated_variance(h, sigma, eps):
    return (1 + eps * sigma / 4) / (h * (1 - eps * h / 4))


def exact_llc(curv, gamma):
    return float(np.sum(0.5 * curv / (curv + gamma)))


def heated_llc(curv, gamma, sigma, eps):
    return float(np.sum(0.5 * curv * heated_variance(curv + gamma, sigma, eps)))


def simulate_losses(curv, gamma, sigma, eps, chains, draws, thin, rng, nbeta, common=None):
    """Loss differences L(w_t) − L(w*) = Σ ½(c_i/nβ)·w_i² of exact SGLD chains (chains, draws).
    ``common``: standard normals (chains, draws, d) to reuse (common random numbers)."""
    h = curv + gamma
    v = heated_variance(h, sigma, eps)
    phi = (1 - eps * h / 2) ** thin
    z = rng.standard_normal((chains, draws, curv.size)) if common is None else common
    w = np.empty_like(z)
    w[:, 0] = np.sqrt(v) * z[:, 0]
    innov = np.sqrt(v * (1 - phi**2))
    for t in range(1, draws):
        w[:, t] = phi * w[:, t - 1] + innov * z[:, t]
    return np.sum(0.5 * (curv / nbeta) * w**2, axis=-1)


def fabricated_result(
    loss_diff: np.ndarray,
    *,
    nbeta: float,
    eps: float,
    kernel: str = "sgld",
    laplacian: np.ndarray | None = None,
    grad_noise: np.ndarray | None = None,
    minibatch_sd: float = 0.0,
    rng: np.random.Generator | None = None,
    kernel_params: dict | None = None,
    extra_dims: tuple[str, ...] = (),
    coords: dict | None = None,
    attrs: dict | None = None,
) -> xr.DataTree:
    """A DataTree shaped like ``slt_ppl.sample``'s: loss = L_B(w*) + loss_diff + white noise of
    sd ``minibatch_sd`` (the paired minibatch noise), records laplacian/grad_noise if given."""
    rng = rng or np.random.default_rng(0)
    dims = (*extra_dims, "chain", "draw")
    shape = loss_diff.shape
    center = 1.0 + 0.01 * rng.standard_normal(shape)
    loss = center + loss_diff + minibatch_sd * rng.standard_normal(shape)
    data = {
        "loss": (dims, loss),
        "loss_center": (dims, center),
        "acceptance": (dims, np.full(shape, 0.93)),
        "grad_norm": (dims, np.ones(shape)),
        "distance": (dims, np.sqrt(np.abs(loss_diff))),
        "diverged_at": (dims[:-1], np.full(shape[:-1], -1, np.int64)),
    }
    if laplacian is not None:
        data["laplacian"] = (dims, laplacian)
    if grad_noise is not None:
        data["grad_noise"] = (dims, grad_noise)
    stats = xr.Dataset(
        data,
        coords={"chain": np.arange(shape[-2]), "draw": np.arange(shape[-1]), **(coords or {})},
    )
    tree = xr.DataTree.from_dict({"sample_stats": stats})
    tree.attrs.update(
        {
            "n": 1000,
            "nbeta": float(nbeta),
            "gamma": 1.0,
            "loss_center_full": 1.0,
            "kernel": kernel,
            "kernel_params": json.dumps(kernel_params or {}),
            "step_size": float(eps),
            "batch_size": 100,
            **(attrs or {}),
        }
    )
    return tree


def diagnostic_records(shape, value, noise_sd, rng, every=20):
    """NaN except every ``every``-th draw, where ``value`` + N(0, noise_sd²)."""
    out = np.full(shape, np.nan)
    draws = np.arange(shape[-1]) % every == 0
    out[..., draws] = value + noise_sd * rng.standard_normal(out[..., draws].shape)
    return out
