"""Momentum SG-MCMC kernels, batched over chains: SGHMC (Chen, Fox, Guestrin 2014) and SGNHT
(Ding et al. 2014), the same OBABO updates as the JAX kernels (``slt_ppl.kernels.momentum``, whose
docstring derives them). With g = ∇U_B(w) at the pre-step w, h = √ε and a₀ = 1 − ``friction``:

    p ← p − (h/2)·g;   p ← a·p + √(1 − a₀²)·ξ;   p ← p − (h/2)·g;   w ← w + h·p

SGHMC: a = a₀ (the exact OU refresh). SGNHT: a = exp(−ζ) with one thermostat ζ per chain, started
at −log a₀ and moved by ζ ← ζ + r·(|p|²/d − 1) on the new half-step momentum, r set so that it
relaxes in ≈ ``thermostat_steps`` steps at every ε. ``score`` is the step's leapfrog energy error on
the same minibatch (a discretization diagnostic, not a Metropolis ratio of this kernel).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from slt_ppl.kernels.base import TAME_LIMIT, check_tame
from slt_ppl.kernels.momentum import check_friction, thermostat_rate
from slt_ppl.kernels_torch.base import (
    StepInfo,
    Tensor,
    TorchKernel,
    ValueAndGrad,
    nan_like,
    normal,
    tame_drift,
)


class MomentumState(NamedTuple):
    """Batched SGHMC / SGNHT state (C chains): position, half-step momentum, thermostat ζ."""

    position: Tensor  # (C, d)
    momentum: Tensor  # (C, d) half-step momentum (the one that moved ``position`` here)
    thermostat: Tensor  # (C,) ζ for SGNHT (friction per step), NaN for SGHMC


def leapfrog_log_acceptance(
    vg: ValueAndGrad,
    state: MomentumState,
    new_state: MomentumState,
    info: StepInfo,
    step_size: float,
) -> Tensor:
    """Per chain log A = −ΔH of the step's velocity-Verlet part on the same minibatch (see the
    JAX ``leapfrog_log_acceptance``): p₀ = p_half + (h/2)∇U(w), p₁ = p_half − (h/2)∇U(w'),
    ΔH = U(w') − U(w) + (|p₁|² − |p₀|²)/2."""
    h = step_size**0.5  # a float, or (C, 1) per-chain (temperatures)
    p_half = new_state.momentum
    p_start = p_half + 0.5 * h * info.grad
    potential_new, _, grad_new = vg(new_state.position)
    p_end = p_half - 0.5 * h * grad_new
    kinetic_change = 0.5 * (torch.sum(p_end**2, -1) - torch.sum(p_start**2, -1))
    return -(potential_new - info.potential + kinetic_change)


def _obabo(
    gen: torch.Generator, momentum: Tensor, grad: Tensor, h: float, damping, noise_scale: float
) -> Tensor:
    """Close the previous leapfrog, refresh (O), open this one: the new half-step momentum."""
    p = momentum - 0.5 * h * grad
    p = damping * p + noise_scale * normal(gen, grad)
    return p - 0.5 * h * grad


def _momentum_kernel(
    name: str, friction: float, start: float, rate: float, tame: float | None
) -> TorchKernel:
    """SGHMC (``rate`` 0: the damping stays a₀) or SGNHT (thermostat from ``start`` at ``rate``),
    kicks tamed at ``tame`` (``slt_ppl.kernels.base.tame_drift``)."""
    check_tame(tame)
    noise_scale = math.sqrt(1.0 - (1.0 - friction) ** 2)

    def init(gen: torch.Generator, position: Tensor, vg: ValueAndGrad) -> MomentumState:
        thermostat = torch.full_like(nan_like(position), start)
        return MomentumState(position, normal(gen, position), thermostat)

    def step(
        gen: torch.Generator, state: MomentumState, vg: ValueAndGrad, step_size: float
    ) -> tuple[MomentumState, StepInfo]:
        potential, loss, grad = vg(state.position)
        h = step_size**0.5  # a float, or (C, 1) per-chain (temperatures)
        damping = 1.0 - friction if rate == 0.0 else torch.exp(-state.thermostat)[:, None]
        grad, tamed = tame_drift(grad, step_size, 1.0, tame)
        momentum = _obabo(gen, state.momentum, grad, h, damping, noise_scale)
        position = state.position + h * momentum
        thermostat = state.thermostat + rate * (torch.mean(momentum**2, dim=-1) - 1.0)
        info = StepInfo(loss, potential, grad, nan_like(grad), torch.ones_like(grad), tamed)
        return MomentumState(position, momentum, thermostat), info

    params = {"friction": friction, "tame": tame}
    return TorchKernel(name, init, step, "probe", False, params, score=leapfrog_log_acceptance)


def sghmc(friction: float = 0.1, tame: float | None = TAME_LIMIT) -> TorchKernel:
    """SGHMC with persistent momentum; ``friction`` ∈ (0, 1] = 1 − a₀, the per-step damping."""
    check_friction(friction, sgnht=False)
    return _momentum_kernel("sghmc", friction, math.nan, 0.0, tame)


def sgnht(
    friction: float = 0.1, thermostat_steps: float = 100.0, tame: float | None = TAME_LIMIT
) -> TorchKernel:
    """SGNHT; ``friction`` ∈ (0, 1) sets the noise √(1 − a₀²) and the thermostat's start −log a₀;
    ``thermostat_steps`` (> 0) its relaxation time in steps."""
    check_friction(friction, sgnht=True, thermostat_steps=thermostat_steps)
    rate = thermostat_rate(friction, thermostat_steps)
    kernel = _momentum_kernel("sgnht", friction, -math.log1p(-friction), rate, tame)
    params = {"friction": friction, "thermostat_steps": thermostat_steps, "tame": tame}
    return kernel._replace(params=params)
