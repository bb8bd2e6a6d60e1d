"""Momentum SG-MCMC kernels: SGHMC (Chen, Fox, Guestrin 2014) and SGNHT (Ding et al. 2014).

Both integrate underdamped Langevin dynamics with unit mass by the OBABO splitting (an exact
Ornstein–Uhlenbeck refresh O around a velocity-Verlet step B·A·B; Horowitz's generalized HMC,
Leimkuhler & Matthews 2015, ch. 7), written so that each step needs the gradient at its own
starting point only, on its own minibatch. With g = ∇U_B(w) and h = √ε (see ``kernels.base``):

    p ← p − (h/2)·g                  close the previous step's leapfrog
    p ← a·p + √(1 − a₀²)·ξ           O: momentum refresh, a = damping, ξ ~ N(0, I)
    p ← p − (h/2)·g                  open this step's leapfrog
    w ← w + h·p

The stored momentum is the half-step momentum that moves w. SGHMC uses a = a₀ = 1 − ``friction``,
so O is the exact OU step for the damping applied and keeps N(0, I) invariant (the old update
p ← (1 − c)p − h∇U + √(2c)ξ had noise variance 2c ≠ 1 − (1 − c)², momentum temperature
1/(1 − c/2), which happened to cancel the positions' temperature (1 + a)/2 under that ordering; SGNHT,
whose thermostat forced the momentum to temperature 1, was left 1 − c/2 = 5 % cold).
OBABO leaves N(0, I) × (the velocity-Verlet modified Gibbs law) invariant, so on a Gaussian target
of precision ω² the positions have variance exactly 1/(ω²(1 − εω²/4)), the Euler–Maruyama value
of SGLD at the same ε; with friction 1 one step *is* a Langevin step of size ε.

SGNHT: the damping is a = exp(−ζ) with ζ a per-chain thermostat (Ding et al.'s ξ times h: the
friction per step). Each step it moves by

    ζ ← ζ + r·(|p|²/d − 1),   r = (1 − a₀²)/(2a₀²·τ),  τ = ``thermostat_steps``,

on the new half-step momentum p. It starts at ζ₀ = −log a₀, close to its fixed point without
gradient noise, and r makes the linearized loop relax in ≈ τ steps at every ε: Ding et al.'s
ζ ← ζ + h·(·) moves the per-step friction by ε per step and needed ≈ friction/ε steps (~3 000 to
settle at ε = 1e-4; this one ≈ 300 at any ε). Any positive rate (a thermostat mass, in Nosé–Hoover
terms) keeps the invariant law of the continuous adaptive-Langevin dynamics (Leimkuhler & Shang
2016). The noise amplitude stays the OU amplitude of a₀, so extra minibatch noise in the kicks is
absorbed by a larger ζ: the thermostat's job (Ding et al.).

Why the half-step momentum: with constant damping a, stationarity of E|w − c|² under w' = w + h·p'
gives E[(w − c)·p] = (h/2)·E|p|² for the momentum p that brought w there and
E[(w − c)·p'] = −(h/2)·E|p'|² for the next one; inserting
p' = a·(p − (h/2)g) + noise − (h/2)g leaves (1 + a)·(E|p|² − E[(w − c)·g]) = 0. So E|p|² equals the
virial E[(w − c)·∇U] (d under the exact law) for any U, damping and zero-mean gradient noise, and
the thermostat drives the *configurational* temperature to 1 (one scalar thermostat: isotropic
noise is absorbed exactly, anisotropic noise on average). On a Gaussian, coordinate j gets variance
σ_j²·κ/(1 − εω_j²/4), κ = 1/mean_k[1/(1 − εω_k²/4)] ≈ 1 − ε·mean(ω²)/4 (ζ's fluctuations
neglected): the coordinates share the discretization error and E[U − U_min] = d/2 has none.

Taming (``kernels.base.tame_drift``, on by default): each kick uses
g̃_i = g_i/max(1, h·|g_i|/(2·tame)), the same clip as SGLD's (one step with friction 1 is a Langevin
step), so a chain that reaches a wall steeper than its step can integrate is held back instead of
exploding; clipped steps are counted.

``score`` is the leapfrog energy error of the step, evaluated on the same minibatch: see
:func:`leapfrog_log_acceptance`.

Why not BlackJAX's ``sgmcmc.diffusions.sghmc/sgnht``: they move w with the *old* momentum before
the momentum update (explicit Euler), whose energy error inflated the variance ~70% here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from slt_ppl.kernels.base import TAME_LIMIT, Kernel, PotentialFn, StepInfo, check_tame, tame_drift

Array = jax.Array


class SGHMCState(NamedTuple):
    """Chain state of SGHMC: position and the half-step momentum."""

    position: Array
    momentum: Array  # half-step momentum (the one that moved ``position`` here)


class SGNHTState(NamedTuple):
    """Chain state of SGNHT: position, half-step momentum and the thermostat ζ."""

    position: Array
    momentum: Array
    thermostat: Array  # ζ: friction per step, damping exp(−ζ)


def _nan_like(x: Array) -> Array:
    return jnp.full((), jnp.nan, x.dtype)


def leapfrog_log_acceptance(
    potential_fn: PotentialFn, state: NamedTuple, new_state: NamedTuple, info: StepInfo, step_size
) -> Array:
    """log A = −ΔH of the step's velocity-Verlet part, on the same minibatch as the step.

    The deterministic part of an OBABO step is the leapfrog (w, p₀) → (w', p₁) with
    p₀ = p_half + (h/2)∇U_B(w) (the refreshed momentum) and p₁ = p_half − (h/2)∇U_B(w'), where
    p_half is the stored momentum; ΔH = U_B(w') − U_B(w) + (|p₁|² − |p₀|²)/2 costs one gradient
    at w'. min(1, e^{−ΔH}) is the acceptance a generalized-HMC (Metropolized OBABO) chain would give
    this very move. Since w' = w − (ε/2)∇U_B(w) + h·p₀, −ΔH is also, identically, the MALA log
    acceptance of the actual move w → w' scored as a Langevin proposal (its noise being h·p₀).
    It measures the integrator's energy error — a discretization diagnostic. It is *not* a valid
    Metropolis ratio for this kernel: nothing is rejected, and without GHMC's momentum flip on
    rejection the map is not reversible.
    """
    h = jnp.sqrt(step_size)
    p_half = new_state.momentum
    p_start = p_half + 0.5 * h * info.grad
    (potential_new, _), grad_new = jax.value_and_grad(potential_fn, has_aux=True)(
        new_state.position
    )
    p_end = p_half - 0.5 * h * grad_new
    kinetic_change = 0.5 * (jnp.sum(p_end**2) - jnp.sum(p_start**2))
    return -(potential_new - info.potential + kinetic_change)


def check_friction(friction: float, sgnht: bool, thermostat_steps: float = 1.0) -> None:
    """ValueError for a friction outside (0, 1] ((0, 1) for SGNHT) or a non-positive
    ``thermostat_steps`` (the kernel registry turns it into a SettingError)."""
    if sgnht and not 0.0 < friction < 1.0:
        raise ValueError(
            f"SGNHT friction must lie in (0, 1), got {friction}: at 1 the momentum is fully "
            "refreshed every step and the thermostat has nothing to adapt"
        )
    if not 0.0 < friction <= 1.0:
        raise ValueError(f"friction must lie in (0, 1], got {friction}")
    if not thermostat_steps > 0.0:
        raise ValueError(f"thermostat_steps must be positive, got {thermostat_steps}")


def _obabo(
    key: Array, momentum: Array, grad: Array, h: Array, damping: Array, noise_scale: float
) -> Array:
    """Close the previous leapfrog, refresh (O), open this one: the new half-step momentum."""
    noise = jax.random.normal(key, grad.shape, grad.dtype)
    p = momentum - 0.5 * h * grad
    p = damping * p + noise_scale * noise
    return p - 0.5 * h * grad


def sghmc(friction: float = 0.1, tame: float | None = TAME_LIMIT) -> Kernel:
    """SGHMC with persistent momentum (Chen, Fox, Guestrin 2014), integrated by OBABO with h = √ε:
    p ← p − (h/2)g; p ← a₀p + √(1 − a₀²)ξ; p ← p − (h/2)g; w ← w + h·p (module docstring).
    ``friction`` ∈ (0, 1] = 1 − a₀, the per-step damping; g is tamed at ``tame`` (module
    docstring)."""
    check_friction(friction, sgnht=False)
    check_tame(tame)
    damping = 1.0 - friction
    noise_scale = math.sqrt(1.0 - damping**2)

    def init(key: Array, position: Array, potential_fn: PotentialFn) -> SGHMCState:
        return SGHMCState(position, jax.random.normal(key, position.shape, position.dtype))

    def step(
        key: Array, state: SGHMCState, potential_fn: PotentialFn, step_size: Array
    ) -> tuple[SGHMCState, StepInfo]:
        (potential, loss), grad = jax.value_and_grad(potential_fn, has_aux=True)(state.position)
        h = jnp.sqrt(step_size)
        grad, tamed = tame_drift(grad, step_size, 1.0, tame)
        momentum = _obabo(key, state.momentum, grad, h, damping, noise_scale)
        position = state.position + h * momentum
        info = StepInfo(loss, potential, grad, _nan_like(grad), jnp.ones_like(grad), tamed)
        return SGHMCState(position, momentum), info

    params = {"friction": friction, "tame": tame}
    return Kernel("sghmc", init, step, "probe", False, params, score=leapfrog_log_acceptance)


def thermostat_rate(friction: float, thermostat_steps: float) -> float:
    """r with linearized relaxation time ``thermostat_steps``: the momentum variance's response
    to ζ at the fixed point is d(|p|²/d)/dζ = −2a₀²/(1 − a₀²), so r = (1 − a₀²)/(2a₀²·τ)."""
    a0 = 1.0 - friction
    return (1.0 - a0**2) / (2.0 * a0**2 * thermostat_steps)


def sgnht(
    friction: float = 0.1, thermostat_steps: float = 100.0, tame: float | None = TAME_LIMIT
) -> Kernel:
    """SGNHT (Ding et al. 2014): the SGHMC step with damping a = exp(−ζ) and a thermostat
    ζ ← ζ + r·(|p|²/d − 1), r = (1 − a₀²)/(2a₀²·τ) (module docstring).
    ``friction`` ∈ (0, 1) sets the noise √(1 − a₀²), a₀ = 1 − friction, and the
    thermostat's start −log a₀; ``thermostat_steps`` (> 0) its relaxation time in steps; g is
    tamed at ``tame`` (module docstring)."""
    check_friction(friction, sgnht=True, thermostat_steps=thermostat_steps)
    check_tame(tame)
    noise_scale = math.sqrt(1.0 - (1.0 - friction) ** 2)
    start = -math.log1p(-friction)
    rate = thermostat_rate(friction, thermostat_steps)

    def init(key: Array, position: Array, potential_fn: PotentialFn) -> SGNHTState:
        momentum = jax.random.normal(key, position.shape, position.dtype)
        return SGNHTState(position, momentum, jnp.full((), start, position.dtype))

    def step(
        key: Array, state: SGNHTState, potential_fn: PotentialFn, step_size: Array
    ) -> tuple[SGNHTState, StepInfo]:
        (potential, loss), grad = jax.value_and_grad(potential_fn, has_aux=True)(state.position)
        h = jnp.sqrt(step_size)
        damping = jnp.exp(-state.thermostat)
        grad, tamed = tame_drift(grad, step_size, 1.0, tame)
        momentum = _obabo(key, state.momentum, grad, h, damping, noise_scale)
        position = state.position + h * momentum
        thermostat = state.thermostat + rate * (jnp.mean(momentum**2) - 1.0)
        info = StepInfo(loss, potential, grad, _nan_like(grad), jnp.ones_like(grad), tamed)
        return SGNHTState(position, momentum, thermostat), info

    params = {"friction": friction, "thermostat_steps": thermostat_steps, "tame": tame}
    return Kernel("sgnht", init, step, "probe", False, params, score=leapfrog_log_acceptance)
