"""SGLD (Welling & Teh 2011) and preconditioned SGLD (Li et al. 2016) on U(w) = nβ·L_B(w) + γ/2‖w − w*‖².

    w ← w − (ε/2)·G⊙∇U_B(w) + √(ε·G)⊙ξ,   ξ ~ N(0, I)

G = 1 gives plain SGLD, computed by BlackJAX's overdamped-Langevin solver (h = ε/2). BlackJAX has no
preconditioned variant, so the G ≠ 1 update is written here; the Γ correction term of pSGLD (the
divergence of G) is dropped, as Li et al. do in practice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.sgmcmc.diffusions import overdamped_langevin

from slt_ppl.kernels.base import TAME_LIMIT, Kernel, PotentialFn, StepInfo, check_tame, tame_drift
from slt_ppl.kernels.preconditioners import Preconditioner, identity, rmsprop

Array = jax.Array


class SGLDState(NamedTuple):
    """Chain state of (preconditioned) SGLD: the position and the preconditioner's state."""

    position: Array
    precond_state: Any


def sgld(preconditioner: Preconditioner | None = None, tame: float | None = TAME_LIMIT) -> Kernel:
    """Build an (optionally preconditioned) SGLD kernel:
    w ← w − (ε/2)·G⊙∇U_B(w) + √(ε·G)⊙ξ, ξ ~ N(0, I), G = 1 without a preconditioner
    (Welling & Teh 2011; preconditioned: Li et al. 2016, without the Γ correction term), the drift
    of each coordinate clipped at ``tame`` noise standard deviations (``kernels.base.tame_drift``;
    None: never)."""
    check_tame(tame)
    precond = preconditioner or identity()
    langevin = overdamped_langevin()

    def init(key: Array, position: Array, potential_fn: PotentialFn) -> SGLDState:
        return SGLDState(position, precond.init(position))

    def step(
        key: Array, state: SGLDState, potential_fn: PotentialFn, step_size: Array
    ) -> tuple[SGLDState, StepInfo]:
        (potential, loss), grad = jax.value_and_grad(potential_fn, has_aux=True)(state.position)
        precond_state, g_diag = precond.update(state.precond_state, grad)
        grad, tamed = tame_drift(grad, step_size, g_diag, tame)
        if precond.name == "identity":
            new_position = langevin(key, state.position, -grad, step_size / 2.0)
        else:
            noise = jax.random.normal(key, state.position.shape, state.position.dtype)
            new_position = (
                state.position
                - 0.5 * step_size * g_diag * grad
                + jnp.sqrt(step_size * g_diag) * noise
            )
        info = StepInfo(loss, potential, grad, jnp.full((), jnp.nan, grad.dtype), g_diag, tamed)
        return SGLDState(new_position, precond_state), info

    return Kernel(
        name="sgld" if precond.name == "identity" else f"sgld_{precond.name}",
        init=init,
        step=step,
        proposal="langevin",
        full_batch=False,
        params={"preconditioner": precond.name, "tame": tame},
        preconditioner=precond,
    )


def rmsprop_sgld(
    alpha: float = 0.99,
    delta: float = 1e-5,
    freeze_after: int | None = None,
    tame: float | None = TAME_LIMIT,
) -> Kernel:
    """pSGLD with the RMSprop preconditioner (Li et al. 2016): V ← αV + (1−α)g²,
    G = 1/(√V̂ + δ), then the SGLD step with G (:func:`sgld`); ``slt_ppl.sample`` freezes the
    preconditioner at the end of burn-in unless told otherwise (see ``preconditioners.rmsprop``)."""
    kernel = sgld(rmsprop(alpha, delta, freeze_after), tame=tame)
    return kernel._replace(
        name="rmsprop_sgld",
        params={
            "preconditioner": "rmsprop",
            "alpha": alpha,
            "delta": delta,
            "freeze_after": -1 if freeze_after is None else int(freeze_after),
            "tame": tame,
        },
    )
