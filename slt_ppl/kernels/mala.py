"""Full-batch MALA (Roberts & Rosenthal 1998) through BlackJAX's implementation.

Proposal w' = w − (ε/2)∇U(w) + √ε·ξ, accepted with probability
min{1, exp[U(w) − U(w') + log q(w|w') − log q(w'|w)]}; BlackJAX's step size is h = ε/2.
The potential is U(w) = nβ·L_n(w) + γ/2‖w − w*‖² on the full data, so the chain targets the local
posterior exactly: it is the ground truth the SG kernels are compared against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from blackjax.mcmc import mala as bj_mala

from slt_ppl.kernels.base import Kernel, PotentialFn, StepInfo

Array = jax.Array


def mala() -> Kernel:
    """Metropolis-adjusted Langevin kernel (Roberts & Rosenthal 1998): proposal
    w' = w − (ε/2)∇U(w) + √ε·ξ, accepted with probability
    min{1, exp[U(w) − U(w') + log q(w|w') − log q(w'|w)]}; its state is BlackJAX's ``MALAState``."""
    bj_kernel = bj_mala.build_kernel()

    def init(key: Array, position: Array, potential_fn: PotentialFn) -> bj_mala.MALAState:
        return bj_mala.init(position, lambda w: -potential_fn(w)[0])

    def step(
        key: Array, state: bj_mala.MALAState, potential_fn: PotentialFn, step_size: Array
    ) -> tuple[bj_mala.MALAState, StepInfo]:
        def logdensity(w: Array) -> Array:
            return -potential_fn(w)[0]

        new_state, info = bj_kernel(key, state, logdensity, step_size / 2.0)
        grad = -state.logdensity_grad
        acceptance = jnp.minimum(1.0, info.acceptance_rate).astype(grad.dtype)
        nan = jnp.full((), jnp.nan, grad.dtype)
        return new_state, StepInfo(nan, -state.logdensity, grad, acceptance, jnp.ones_like(grad))

    return Kernel("mala", init, step, "metropolis", True, {})
