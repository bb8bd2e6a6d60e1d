"""Momentum SG-MCMC kernels: SGHMC (Chen, Fox, Guestrin 2014) and SGNHT (Ding et al. 2014).

Both integrate underdamped Langevin dynamics with unit mass (p ~ N(0, I) at stationarity) by the
semi-implicit (symplectic) Euler step of Chen et al.'s Algorithm 2 — momentum first, then position
with the *new* momentum:

    SGHMC:  p ← (1 − αh)·p − h·∇U_B(w) + √(2αh)·ξ;   w ← w + h·p
    SGNHT:  p ← (1 − ζh)·p − h·∇U_B(w) + √(2Ah)·ξ;   w ← w + h·p;   ζ ← ζ + h·(pᵀp/d − 1)

Here h = √ε (see ``kernels.base``) and the friction is given per step: α = A = ``friction``/h, so a
fraction ``friction`` of the momentum is refreshed each step. The SGNHT thermostat ζ starts at A and
adapts the friction to the unknown gradient noise; its momentum update is applied as the paper writes
it (devinterp computes this correction but never applies it).

Why not BlackJAX's ``sgmcmc.diffusions.sghmc/sgnht``: they move w with the *old* momentum before the
momentum update (explicit Euler), which is not symplectic; measured here on a Gaussian target
(d = 12, ε = 0.02, friction 0.1) their SGHMC variance came out ~70% too large. The semi-implicit form
costs the same and passes the Gaussian-target test.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

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
        noise = jax.random.normal(key, grad.shape, grad.dtype)
        momentum = (1.0 - friction) * state.momentum - h * grad + jnp.sqrt(2.0 * friction) * noise
        position = state.position + h * momentum
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
        diffusion = friction / h
        thermostat = jnp.where(jnp.isnan(state.thermostat), diffusion, state.thermostat)
        noise = jax.random.normal(key, grad.shape, grad.dtype)
        momentum = (
            (1.0 - thermostat * h) * state.momentum
            - h * grad
            + jnp.sqrt(2.0 * diffusion * h) * noise
        )
        position = state.position + h * momentum
        thermostat = thermostat + h * (jnp.mean(momentum**2) - 1.0)
        info = StepInfo(loss, potential, grad, _nan_like(grad), jnp.ones_like(grad))
        return SGNHTState(position, momentum, thermostat), info

    return Kernel("sgnht", init, step, "probe", False, {"friction": friction})
