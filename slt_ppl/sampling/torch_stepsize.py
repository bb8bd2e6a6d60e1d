"""Torch inputs of the automatic step size: the same two quantities ``sampling.stepsize``
computes for
JAX posteriors, so :func:`slt_ppl.sampling.stepsize.tune_step_size` runs unchanged on torch runners.

- ``top_curvature``: largest eigenvalue of ∇²U_B(w*) by power iteration on Hessian-vector products;
- ``gradient_moments``/``accuracy_caps``: the minibatch-noise and curvature caps on ε from per-datum
  gradients (``torch.func.vmap`` over rows of ``torch.func.grad``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from slt_ppl.backends.torch_common import hvp
from slt_ppl.posterior_torch import TorchLocalPosterior
from slt_ppl.sampling.stepsize import caps_from_statistics

Tensor = torch.Tensor


def top_curvature(
    posterior: TorchLocalPosterior,
    batch: Mapping[str, Tensor],
    iters: int = 20,
    metric: Tensor | None = None,
) -> float:
    """Largest |eigenvalue| of G^½·∇²U_B(w*)·G^½ (power iteration, Rayleigh quotient)."""
    w0 = posterior.center
    root = torch.ones_like(w0) if metric is None else torch.sqrt(metric)

    def potential(w: Tensor) -> Tensor:
        return posterior.potential(w, batch)[0]

    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(w0.shape, generator=gen, dtype=w0.dtype).to(w0.device)
    v = v / torch.linalg.vector_norm(v)
    rayleigh = torch.zeros((), dtype=w0.dtype, device=w0.device)
    for _ in range(iters):
        hv = root * hvp(potential, w0, root * v)
        rayleigh = torch.dot(v, hv)
        norm = torch.linalg.vector_norm(hv)
        v = hv / torch.where(norm > 0, norm, torch.ones_like(norm))
    value = abs(float(rayleigh))
    return value if math.isfinite(value) and value > 0 else 1.0


def gradient_moments(
    posterior: TorchLocalPosterior, batch_size: int, max_points: int = 1024, chunk: int = 64
) -> tuple[Tensor, Tensor]:
    """Per-coordinate diag Σ_B = nβ²/B·Var_i(∂ℓ_i) and E[g²] = (nβ·mean ∂ℓ_i)² + diag Σ_B at w*
    (the torch twin of ``sampling.stepsize.gradient_moments``)."""
    m = min(posterior.n, max_points)
    w0 = posterior.center

    def per_datum(row: Mapping[str, Tensor]) -> Tensor:
        one = {k: v.unsqueeze(0) for k, v in row.items()}
        return torch.func.grad(posterior.loss_fn)(w0, one)

    per_rows = torch.func.vmap(per_datum)
    total = torch.zeros_like(w0)
    total_sq = torch.zeros_like(w0)
    for start in range(0, m, chunk):
        rows = {k: v[start : min(m, start + chunk)] for k, v in posterior.data.items()}
        g = per_rows(rows)
        total = total + g.sum(0)
        total_sq = total_sq + torch.sum(g**2, dim=0)
    mean = total / m
    var = torch.clamp(total_sq / m - mean**2, min=0.0)
    noise = (
        torch.zeros_like(var)
        if batch_size >= posterior.n
        else posterior.nbeta**2 * var / batch_size
    )
    return noise, (posterior.nbeta * mean) ** 2 + noise


def accuracy_caps(runner, curvature_fraction: float, noise_fraction: float) -> tuple[dict, float]:
    """The torch twin of ``sampling.stepsize.accuracy_caps`` (same formulas, same metric G)."""
    post, kernel = runner.posterior, runner.kernel
    noise, second = gradient_moments(post, runner.batch_size)
    if kernel.params.get("preconditioner") == "rmsprop":
        g_diag = 1.0 / (torch.sqrt(second) + float(kernel.params["delta"]))
    else:
        g_diag = torch.ones_like(post.center)
    sub = {k: v[: min(post.n, 2048)] for k, v in post.data.items()}
    curvature = top_curvature(post, sub, metric=g_diag)
    caps = caps_from_statistics(
        kernel, curvature, float(torch.sum(g_diag)), float(torch.sum(g_diag**2 * noise)),
        curvature_fraction, noise_fraction,
    )  # fmt: skip
    return caps, curvature
