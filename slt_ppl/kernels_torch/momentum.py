"""Momentum SG-MCMC kernels, batched over chains: SGHMC (Chen, Fox, Guestrin 2014) and SGNHT
(Ding et al. 2014), the same Euler updates as BlackJAX's solvers that the JAX kernels call:

    SGHMC:  w ← w + h·p;   p ← (1 − αh)·p − h·∇U_B(w) + √(2αh)·ξ
    SGNHT:  w ← w + h·p;   p ← (1 − ζh)·p − h·∇U_B(w) + √(2Ah)·ξ;   ζ ← ζ + h·(pᵀp/d − 1)

(∇U_B at the pre-step w), unit mass, h = √ε and α = A = ``friction``/h, so a fraction ``friction``
of the momentum is refreshed per step. The SGNHT thermostat ζ (one per chain) starts at A and its
momentum update is applied (devinterp computes it and never applies it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from slt_ppl.kernels_torch.base import StepInfo, Tensor, TorchKernel, ValueAndGrad, nan_like, normal


class MomentumState(NamedTuple):
    position: Tensor  # (C, d)
    momentum: Tensor  # (C, d)
    thermostat: Tensor  # (C,) ζ for SGNHT (NaN until the first step), unused by SGHMC


def _check(friction: float) -> None:
    if not 0.0 < friction <= 1.0:
        raise ValueError(f"friction must lie in (0, 1], got {friction}")


def _init(gen: torch.Generator, position: Tensor, vg: ValueAndGrad) -> MomentumState:
    return MomentumState(position, normal(gen, position), nan_like(position))


def sghmc(friction: float = 0.1) -> TorchKernel:
    """SGHMC with persistent momentum; ``friction`` ∈ (0, 1] is the per-step momentum decay αh."""
    _check(friction)

    def step(
        gen: torch.Generator, state: MomentumState, vg: ValueAndGrad, step_size: float
    ) -> tuple[MomentumState, StepInfo]:
        potential, loss, grad = vg(state.position)
        h = math.sqrt(step_size)
        alpha = friction / h
        noise = normal(gen, grad)
        momentum = (
            (1.0 - alpha * h) * state.momentum - h * grad + math.sqrt(2.0 * alpha * h) * noise
        )
        position = state.position + h * momentum
        info = StepInfo(loss, potential, grad, nan_like(grad), torch.ones_like(grad))
        return MomentumState(position, momentum, state.thermostat), info

    return TorchKernel("sghmc", _init, step, "probe", False, {"friction": friction})


def sgnht(friction: float = 0.1) -> TorchKernel:
    """SGNHT; ``friction`` sets the diffusion A = friction/h and the thermostat's starting value."""
    _check(friction)

    def step(
        gen: torch.Generator, state: MomentumState, vg: ValueAndGrad, step_size: float
    ) -> tuple[MomentumState, StepInfo]:
        potential, loss, grad = vg(state.position)
        h = math.sqrt(step_size)
        alpha = friction / h
        xi = torch.where(torch.isnan(state.thermostat), alpha, state.thermostat)
        noise = normal(gen, grad)
        momentum = (
            (1.0 - xi[:, None] * h) * state.momentum - h * grad + math.sqrt(2.0 * alpha * h) * noise
        )
        position = state.position + h * momentum
        xi = xi + h * (torch.mean(momentum**2, dim=-1) - 1.0)
        info = StepInfo(loss, potential, grad, nan_like(grad), torch.ones_like(grad))
        return MomentumState(position, momentum, xi), info

    return TorchKernel("sgnht", _init, step, "probe", False, {"friction": friction})
