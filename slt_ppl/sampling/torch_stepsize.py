"""Torch inputs of the automatic step size: the same two quantities ``sampling.stepsize``
computes for
JAX posteriors, so :func:`slt_ppl.sampling.stepsize.tune_step_size` runs unchanged on torch runners.

- ``top_curvature``: largest eigenvalue of ∇²U_B(w*) by power iteration on Hessian-vector products;
- ``gradient_noise_trace``: tr Σ_B = nβ²/B · tr Cov_i(∇ℓ_i(w*)) from per-datum gradients
  (``torch.func.vmap`` over rows of ``torch.func.grad``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from slt_ppl.backends.torch_common import hvp
from slt_ppl.posterior_torch import TorchLocalPosterior

Tensor = torch.Tensor


def top_curvature(
    posterior: TorchLocalPosterior, batch: Mapping[str, Tensor], iters: int = 20
) -> float:
    """Largest |eigenvalue| of ∇²U_B(w*) (power iteration, Rayleigh quotient)."""
    w0 = posterior.center

    def potential(w: Tensor) -> Tensor:
        return posterior.potential(w, batch)[0]

    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(w0.shape, generator=gen, dtype=w0.dtype).to(w0.device)
    v = v / torch.linalg.vector_norm(v)
    rayleigh = torch.zeros((), dtype=w0.dtype, device=w0.device)
    for _ in range(iters):
        hv = hvp(potential, w0, v)
        rayleigh = torch.dot(v, hv)
        norm = torch.linalg.vector_norm(hv)
        v = hv / torch.where(norm > 0, norm, torch.ones_like(norm))
    value = abs(float(rayleigh))
    return value if math.isfinite(value) and value > 0 else 1.0


def gradient_noise_trace(
    posterior: TorchLocalPosterior, batch_size: int, max_points: int = 1024, chunk: int = 64
) -> float:
    """tr Σ_B = nβ²/B · tr Cov_i(∇ℓ_i(w*)) from at most ``max_points`` per-datum gradients."""
    m = min(posterior.n, max_points)
    w0 = posterior.center

    def per_datum(row: Mapping[str, Tensor]) -> Tensor:
        one = {k: v.unsqueeze(0) for k, v in row.items()}
        return torch.func.grad(posterior.loss_fn)(w0, one)

    per_rows = torch.func.vmap(per_datum)
    total = torch.zeros_like(w0)
    total_sq = torch.zeros((), dtype=w0.dtype, device=w0.device)
    for start in range(0, m, chunk):
        rows = {k: v[start : min(m, start + chunk)] for k, v in posterior.data.items()}
        g = per_rows(rows)
        total = total + g.sum(0)
        total_sq = total_sq + torch.sum(g**2)
    trace_cov = float(total_sq / m - torch.sum((total / m) ** 2))
    if batch_size >= posterior.n or not math.isfinite(trace_cov):
        return 0.0
    return posterior.nbeta**2 * max(trace_cov, 0.0) / batch_size
