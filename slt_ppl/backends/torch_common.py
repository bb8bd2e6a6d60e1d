"""Torch versions of the shared backend defaults: Hessian-vector products and the
unit-information γ."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

Tensor = torch.Tensor


def hvp(f: Callable[[Tensor], Tensor], w: Tensor, v: Tensor) -> Tensor:
    """∇²f(w)·v by forward-over-reverse differentiation (``torch.func.jvp`` of
    ``torch.func.grad``)."""
    return torch.func.jvp(torch.func.grad(f), (w,), (v,))[1]


def unit_information_gamma(
    loss_fn: Callable[[Tensor, Mapping[str, Tensor]], Tensor],
    center: Tensor,
    data: Mapping[str, Tensor],
    n: int,
    nbeta: float,
    *,
    num_probes: int = 8,
    max_points: int = 4096,
    seed: int = 0,
) -> tuple[float, float]:
    """γ = β·max(1, h̄), h̄ = tr ∇²L_n(w*)/d by Hutchinson's estimator (Rademacher probes v,
    tr H ≈ mean vᵀHv): the torch analogue of :func:`slt_ppl.backends.common.unit_information_gamma`
    (same rule, same probe count and data cap; the probes differ, so h̄ agrees only statistically).

    Returns (γ, h̄).
    """
    beta = nbeta / n
    m = min(n, max_points)
    sub = {k: v[:m] for k, v in data.items()}
    d = center.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    probes = torch.randint(0, 2, (num_probes, d), generator=gen).to(center) * 2.0 - 1.0
    quads = [torch.dot(v, hvp(lambda w: loss_fn(w, sub), center, v)) for v in probes]
    hbar = float(torch.stack(quads).mean()) / d
    if not math.isfinite(hbar):
        hbar = 1.0
    return beta * max(1.0, hbar), hbar
