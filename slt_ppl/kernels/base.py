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
import jax.numpy as jnp

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
    tamed: whether the step clipped its drift (:func:`tame_drift`); None for kernels that never do.

    ``grad`` is the gradient the step moved with: ∇U_B(w), tamed where ``tamed`` is True.
    """

    loss: Array
    potential: Array
    grad: Array
    acceptance: Array
    precond: Array
    tamed: Array | None = None


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


# drift clipped at this many noise standard deviations per coordinate (:func:`tame_drift`)
TAME_LIMIT = 3.0


def check_tame(limit: float | None) -> None:
    """ValueError for a taming limit that is neither None (off) nor positive."""
    if limit is not None and not limit > 0:
        raise ValueError(
            f"tame must be a positive number of noise standard deviations or None, got {limit}"
        )


def tame_drift(
    grad: Array, step_size: Array, precond: Array | float, limit: float | None
) -> tuple[Array, Array]:
    """(gradient the step moves with, whether any coordinate was clipped):

        g̃_i = g_i / max(1, r_i),   r_i = √(ε·G_i)·|g_i| / (2·limit),

    i.e. the drift (ε/2)·G_i·g_i of coordinate i is clipped at ``limit`` standard deviations
    √(ε·G_i) of the step's noise (None: no clipping). A coordinate-wise taming in the sense of
    Brosse, Durmus, Moulines & Sabanis (2019, "The tamed unadjusted Langevin algorithm"), scaled by
    the noise instead of by 1 so that it is invariant to the units of w.

    Why: Euler–Maruyama is transient for drifts that grow faster than linearly (Mattingly, Stuart
    & Higham 2002): at any ε a chain that wanders far enough into a steep region overshoots and
    explodes. At singular centers the valleys end in such walls (U ∝ w1⁴·w2⁶ on a crossing): one
    of 16 RMSprop-SGLD chains on x·w1²·w2³ (n = 5000) went out to |w2| = 4.5 and diverged after
    1.4·10⁶ steps at a tuned, healthy ε (session 8). In a direction of curvature h the ratio r is
    √(εh)/(2·limit)·|z| for a standard normal z, so with the tuned εh ≤ 0.3 a step is clipped only
    when |z| > 11 at the default limit 3: the chain is exactly Euler–Maruyama wherever the
    discretization is accurate, and the clipped steps are counted (``sample_stats.tamed``) and
    checked by the verdict (``diagnostics``, check ``tamed``).
    """
    if limit is None:
        return grad, jnp.zeros((), bool)
    ratio = 0.5 * jnp.sqrt(step_size * precond) * jnp.abs(grad) / limit
    return grad / jnp.maximum(1.0, ratio), jnp.any(ratio > 1.0)
