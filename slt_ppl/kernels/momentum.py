"""Momentum SG-MCMC kernels: SGHMC (Chen, Fox, Guestrin 2014) and SGNHT (Ding et al. 2014).

Both integrate underdamped Langevin dynamics with BlackJAX's Euler solvers (Ma, Chen, Fox 2015 scaling):

    SGHMC:  w ← w + h·p;   p ← (1 − αh)·p − h·∇U_B(w) + √(2αh)·ξ
    SGNHT:  w ← w + h·p;   p ← (1 − ζh)·p − h·∇U_B(w) + √(2Ah)·ξ;   ζ ← ζ + h·(pᵀp/d − 1)

with unit mass, so p ~ N(0, I) at stationarity. Here h = √ε (see ``kernels.base``) and the friction
is given per step: α = A = ``friction``/h, so a fraction ``friction`` of the momentum is refreshed each
step. The SGNHT thermostat ζ starts at A and adapts the friction to the unknown gradient noise; its
momentum update is applied as the paper writes it (devinterp computes this correction but never applies
it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.sgmcmc.diffusions import sghmc as sghmc_diffusion
from blackjax.sgmcmc.diffusions import sgnht as sgnht_diffusion

from slt_ppl.kernels.base import Kernel, PotentialFn, StepInfo

Array = jax.Array


class SGHMCState(NamedTuple):
    position: Array
    momentum: Array


class SGNHTState(NamedTuple):
    position: Array
    momentum: Array
    thermostat: Array


def _nan_like(x: Array) -> Array:
    return jnp.full((), jnp.nan, x.dtype)


def sghmc(friction: float = 0.1) -> Kernel:
    """SGHMC with persistent momentum; ``friction`` ∈ (0, 1] is the per-step momentum decay αh."""
    if not 0.0 < friction <= 1.0:
        raise ValueError(f"friction must lie in (0, 1], got {friction}")

    def init(key: Array, position: Array, potential_fn: PotentialFn) -> SGHMCState:
        return SGHMCState(position, jax.random.normal(key, position.shape, position.dtype))

    def step(
        key: Array, state: SGHMCState, potential_fn: PotentialFn, step_size: Array
    ) -> tuple[SGHMCState, StepInfo]:
        (potential, loss), grad = jax.value_and_grad(potential_fn, has_aux=True)(state.position)
        h = jnp.sqrt(step_size)
        # BlackJAX's solver closes over alpha; build it per step so alpha = friction / h can follow ε.
        solver = sghmc_diffusion(alpha=friction / h, beta=0.0)
        position, momentum = solver(key, state.position, state.momentum, -grad, h)
        info = StepInfo(loss, potential, grad, _nan_like(grad), jnp.ones_like(grad))
        return SGHMCState(position, momentum), info

    return Kernel("sghmc", init, step, "probe", False, {"friction": friction})


def sgnht(friction: float = 0.1) -> Kernel:
    """SGNHT; ``friction`` sets the diffusion A = friction/h and the thermostat's starting value."""
    if not 0.0 < friction <= 1.0:
        raise ValueError(f"friction must lie in (0, 1], got {friction}")

    def init(key: Array, position: Array, potential_fn: PotentialFn) -> SGNHTState:
        momentum = jax.random.normal(key, position.shape, position.dtype)
        return SGNHTState(position, momentum, jnp.full((), jnp.nan, position.dtype))

    def step(
        key: Array, state: SGNHTState, potential_fn: PotentialFn, step_size: Array
    ) -> tuple[SGNHTState, StepInfo]:
        (potential, loss), grad = jax.value_and_grad(potential_fn, has_aux=True)(state.position)
        h = jnp.sqrt(step_size)
        alpha = friction / h
        thermostat = jnp.where(jnp.isnan(state.thermostat), alpha, state.thermostat)
        solver = sgnht_diffusion(alpha=alpha, beta=0.0)
        position, momentum, thermostat = solver(
            key, state.position, state.momentum, thermostat, -grad, h
        )
        info = StepInfo(loss, potential, grad, _nan_like(grad), jnp.ones_like(grad))
        return SGNHTState(position, momentum, thermostat), info

    return Kernel("sgnht", init, step, "probe", False, {"friction": friction})
