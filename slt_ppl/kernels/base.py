"""The kernel contract, in the BlackJAX style: a pair of pure functions over a small NamedTuple state.

    state = kernel.init(key, position, potential_fn)
    state, info = kernel.step(key, state, potential_fn, step_size)

``potential_fn(w) -> (U(w), L(w))`` is the potential on the current minibatch (full data for full-batch
kernels) with the loss as auxiliary output. Kernels know nothing about models, data or batches; all
randomness comes in through ``key``; ``step_size`` is an argument (not a closure constant) so a tuner can
change it without recompiling.

Step-size convention (reference section 2): ε is the Langevin step,
    w ← w − (ε/2)·∇U(w) + √ε·ξ.
BlackJAX writes the same diffusion as x + h·∇log p + √(2h)·ξ, so h = ε/2 for the Langevin kernels. The
momentum kernels (SGHMC, SGNHT) use the leapfrog step h = √ε: one leapfrog step with a fresh momentum is
exactly a Langevin step of size ε = h², so one ε means comparable discretization across kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Array = jax.Array
PotentialFn = Callable[[Array], tuple[Array, Array]]
ScoreFn = Callable[[PotentialFn, Any, Any, "StepInfo", Array], Array]


class StepInfo(NamedTuple):
    """What one step reports about the position it started from.

    loss: L_B(w) (NaN for full-batch kernels, whose sampler derives it from the potential).
    potential: U_B(w).
    grad: ∇U_B(w).
    acceptance: Metropolis acceptance probability of the step (MALA), NaN for SG kernels.
    precond: the diagonal preconditioner G used by the step (ones when none).
    """

    loss: Array
    potential: Array
    grad: Array
    acceptance: Array
    precond: Array


class Kernel(NamedTuple):
    """A sampling kernel.

    proposal: how the sampler computes the acceptance diagnostic of an SG step:
        "langevin" — the step *is* a Langevin proposal w' = w − (ε/2)G∇U + √(εG)ξ: score that transition;
        "probe" — momentum kernels (SGHMC, SGNHT); their ``score`` scores the move;
        "metropolis" — the kernel already accepts/rejects (MALA): report its own acceptance.
    full_batch: the kernel must see the whole data set every step.
    score: ``score(potential_fn, state, new_state, info, step_size) -> log A``, the log acceptance
        of the kernel's *actual* move state → new_state scored on the same minibatch (``info`` is
        the step's report about ``state``); the sampler's acceptance diagnostic uses it every
        ``diag_every`` draws. None: the sampler scores the move as a Langevin proposal.
    """

    name: str
    init: Callable[[Array, Array, PotentialFn], Any]
    step: Callable[[Array, Any, PotentialFn, Array], tuple[Any, StepInfo]]
    proposal: str
    full_batch: bool
    params: dict[str, Any]
    # the kernel's diagonal Preconditioner, if any: read by the step-size caps, pooled over the
    # chains after the ε adaptation (``preconditioners.pool_chains``)
    preconditioner: Any = None
    score: ScoreFn | None = None
