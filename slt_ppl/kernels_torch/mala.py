"""Full-batch MALA (Roberts & Rosenthal 1998), batched over chains:

    w' = w − (ε/2)∇U(w) + √ε·ξ,   log q(b|a) = −‖b − a + (ε/2)∇U(a)‖²/(2ε),
    accept with probability A = min{1, exp[U(w) − U(w') + log q(w|w') − log q(w'|w)]}

on U(w) = nβ·L_n(w) + γ/2‖w − w*‖² over the full data, so the chains target the local posterior
exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from slt_ppl.kernels_torch.base import (
    StepInfo,
    Tensor,
    TorchKernel,
    ValueAndGrad,
    nan_like,
    normal,
    uniform,
)


class MALAState(NamedTuple):
    """Batched MALA state (C chains): position, potential U and its gradient at the position."""

    position: Tensor  # (C, d)
    potential: Tensor  # (C,)
    grad: Tensor  # (C, d)


def mala() -> TorchKernel:
    """Metropolis-adjusted Langevin kernel."""

    def init(gen: torch.Generator, position: Tensor, vg: ValueAndGrad) -> MALAState:
        potential, _, grad = vg(position)
        return MALAState(position, potential, grad)

    def step(
        gen: torch.Generator, state: MALAState, vg: ValueAndGrad, step_size: float
    ) -> tuple[MALAState, StepInfo]:
        w, u, g = state
        proposal = w - 0.5 * step_size * g + step_size**0.5 * normal(gen, w)
        u_new, _, g_new = vg(proposal)
        fwd = proposal - w + 0.5 * step_size * g
        bwd = w - proposal + 0.5 * step_size * g_new
        per_chain = step_size.reshape(-1) if isinstance(step_size, Tensor) else step_size
        log_a = u - u_new + (torch.sum(fwd**2, -1) - torch.sum(bwd**2, -1)) / (2.0 * per_chain)
        log_a = torch.where(torch.isnan(log_a), -torch.inf, log_a)
        acceptance = torch.exp(torch.clamp(log_a, max=0.0))
        accept = uniform(gen, u) < acceptance
        new = MALAState(
            torch.where(accept[:, None], proposal, w),
            torch.where(accept, u_new, u),
            torch.where(accept[:, None], g_new, g),
        )
        return new, StepInfo(nan_like(g), u, g, acceptance, torch.ones_like(g))

    return TorchKernel("mala", init, step, "metropolis", True, {})
