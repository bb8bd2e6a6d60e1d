"""The compiled sampling loop: chains under ``vmap``, steps under ``lax.scan``, inside one ``jit``.

One call of a :class:`SegmentRunner` advances every chain by ``num_draws`` draws of ``thin`` steps each,
with no host round trip inside: minibatch indices are drawn on the device from keys folded with the
global step index, so chain i's trajectory depends only on (seed, i) and never on how many chains run
or how the run is cut into segments. The Python side (``sampling.api``) calls the runner segment by
segment to show progress, and nothing else.

Per draw the first step is recorded: L_B(w_t) and U_B(w_t) come free from the gradient evaluation;
L_B(w*) on the same minibatch costs one forward pass (the paired control variate of reference
section 6); the MALA-acceptance diagnostic (Furman & Lau 2024, App. D) costs one more gradient on the
same minibatch, only every ``diag_every``-th draw (``lax.cond`` on the unbatched draw index, so it is a
real branch, not a select, under ``vmap``).

Divergence: a step whose potential or new position is non-finite, or whose loss rises by more than
``explode`` above L_B(w*), freezes its chain at the last finite state and records the step index in
``diverged_at``; later records of that chain are NaN. Healthy chains are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slt_ppl.kernels.base import Kernel
from slt_ppl.posterior import LocalPosterior

Array = jax.Array


class ChainState(NamedTuple):
    kernel_state: Any
    diverged_at: Array  # int32 step index of the first bad step, −1 while healthy


class DrawRecord(NamedTuple):
    loss: Array
    loss_center: Array
    acceptance: Array
    grad_norm: Array
    distance: Array
    position: Array  # shape (0,) unless draws are kept


def mala_log_acceptance(
    potential_fn: Callable[[Array], tuple[Array, Array]],
    w: Array,
    potential: Array,
    grad: Array,
    w_new: Array,
    step_size: Array,
    precond: Array,
) -> Array:
    """log A of the Langevin move w → w' scored as a MALA proposal (Furman & Lau 2024, App. D):

    log A = U(w) − U(w') + log q(w|w') − log q(w'|w),
    log q(b|a) = −‖(b − a + (ε/2)G⊙∇U(a)) / √(εG)‖²/2,

    with U and ∇U at both points on the same minibatch and the same diagonal G in both directions.
    """
    (potential_new, _), grad_new = jax.value_and_grad(potential_fn, has_aux=True)(w_new)
    forward = w_new - w + 0.5 * step_size * precond * grad
    backward = w - w_new + 0.5 * step_size * precond * grad_new
    log_q_fwd = -0.5 * jnp.sum(forward**2 / (step_size * precond))
    log_q_bwd = -0.5 * jnp.sum(backward**2 / (step_size * precond))
    return potential - potential_new + log_q_bwd - log_q_fwd


def _position(kernel_state: Any) -> Array:
    return kernel_state.position


@dataclass(frozen=True)
class SegmentRunner:
    """Compiled runner of ``num_draws`` draws for all chains; see the module docstring."""

    posterior: LocalPosterior
    kernel: Kernel
    batch_size: int
    thin: int
    diag_every: int
    keep_draws: bool
    shared_batches: bool
    explode: float

    def batch(self, batch_key: Array, t: Array) -> dict[str, Array]:
        post = self.posterior
        if self.kernel.full_batch or self.batch_size >= post.n:
            return post.data
        idx = jax.random.randint(jax.random.fold_in(batch_key, t), (self.batch_size,), 0, post.n)
        return {k: v[idx] for k, v in post.data.items()}

    def potential_fn(self, batch: dict[str, Array]) -> Callable[[Array], tuple[Array, Array]]:
        return lambda w: self.posterior.potential(w, batch)

    def init(self, keys: Array, positions: Array) -> ChainState:
        """Initial states of all chains (keys: (C, 2) chain keys; positions: (C, d))."""
        full = self.potential_fn(self.posterior.data)

        def one(key: Array, position: Array) -> ChainState:
            ks = self.kernel.init(jax.random.fold_in(key, 2**30), position, full)
            return ChainState(ks, jnp.asarray(-1, jnp.int32))

        return jax.jit(jax.vmap(one))(keys, positions)

    def _guarded_step(
        self, state: ChainState, key: Array, batch: dict[str, Array], step_size: Array, t: Array
    ) -> tuple[ChainState, Any, Array]:
        pot = self.potential_fn(batch)
        new_ks, info = self.kernel.step(key, state.kernel_state, pot, step_size)
        ok = jnp.isfinite(info.potential) & jnp.all(jnp.isfinite(_position(new_ks)))
        ok = ok & (state.diverged_at < 0)
        kernel_state = jax.tree_util.tree_map(
            lambda a, b: jnp.where(ok, a, b), new_ks, state.kernel_state
        )
        newly_bad = (~ok) & (state.diverged_at < 0)
        diverged_at = jnp.where(newly_bad, t.astype(jnp.int32), state.diverged_at)
        return ChainState(kernel_state, diverged_at), info, ok

    def _draw(
        self, chain_key: Array, batch_key: Array, step_size: Array, state: ChainState, i: Array
    ) -> tuple[ChainState, DrawRecord]:
        post, kernel = self.posterior, self.kernel
        t0 = i * self.thin
        batch = self.batch(batch_key, t0)
        key, probe_key = jax.random.split(jax.random.fold_in(chain_key, t0))
        w = _position(state.kernel_state)
        new_state, info, ok = self._guarded_step(state, key, batch, step_size, t0)
        dtype = w.dtype
        nan = jnp.full((), jnp.nan, dtype)

        if kernel.full_batch:
            loss = (info.potential - post.localization(w)) / post.nbeta
            loss_center = jnp.asarray(post.info["loss_center_full"], dtype)
        else:
            loss = info.loss
            loss_center = post.loss_fn(post.center, batch)

        if kernel.proposal == "metropolis":
            acceptance = info.acceptance
        else:
            pot = self.potential_fn(batch)

            def diagnose(_: None) -> Array:
                if kernel.proposal == "langevin":
                    w_new = _position(new_state.kernel_state)
                else:  # momentum kernels: a Langevin probe of the same ε from w
                    noise = jax.random.normal(probe_key, w.shape, dtype)
                    w_new = w - 0.5 * step_size * info.grad + jnp.sqrt(step_size) * noise
                log_a = mala_log_acceptance(
                    pot, w, info.potential, info.grad, w_new, step_size, info.precond
                )
                return jnp.where(jnp.isnan(log_a), 0.0, jnp.exp(jnp.minimum(log_a, 0.0)))

            acceptance = jax.lax.cond(
                (i % self.diag_every) == 0, diagnose, lambda _: nan, operand=None
            )

        exploded = (loss - loss_center) > self.explode * (1.0 + jnp.abs(loss_center))
        bad_now = exploded & (new_state.diverged_at < 0)
        new_state = new_state._replace(
            diverged_at=jnp.where(bad_now, t0.astype(jnp.int32), new_state.diverged_at),
            kernel_state=jax.tree_util.tree_map(
                lambda old, new: jnp.where(bad_now, old, new),
                state.kernel_state,
                new_state.kernel_state,
            ),
        )
        alive = ok & ~exploded
        record = DrawRecord(
            loss=jnp.where(alive, loss, nan),
            loss_center=loss_center,
            acceptance=jnp.where(alive, acceptance, nan),
            grad_norm=jnp.where(alive, jnp.linalg.norm(info.grad), nan),
            distance=jnp.where(alive, jnp.linalg.norm(w - post.center), nan),
            position=jnp.where(alive, w, jnp.nan) if self.keep_draws else jnp.zeros((0,), dtype),
        )

        def rest(carry: ChainState, j: Array) -> tuple[ChainState, None]:
            t = t0 + j
            b = self.batch(batch_key, t)
            k = jax.random.fold_in(chain_key, t)
            carry, _, _ = self._guarded_step(carry, k, b, step_size, t)
            return carry, None

        if self.thin > 1:
            new_state, _ = jax.lax.scan(rest, new_state, jnp.arange(1, self.thin))
        return new_state, record

    def build(self, num_draws: int) -> Callable[..., tuple[ChainState, DrawRecord]]:
        """A jitted ``run(states, chain_keys, batch_keys, step_size, start_draw)`` for ``num_draws``."""

        def one_chain(state, chain_key, batch_key, step_size, start):
            draws = start + jnp.arange(num_draws)
            return jax.lax.scan(
                lambda s, i: self._draw(chain_key, batch_key, step_size, s, i), state, draws
            )

        batch_axis = None if self.shared_batches else 0
        run = jax.vmap(one_chain, in_axes=(0, 0, batch_axis, None, None))
        return jax.jit(run)
