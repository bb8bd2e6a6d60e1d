"""The compiled sampling loop: chains under ``vmap``, steps under ``lax.scan``, inside one ``jit``.

One call of a :class:`SegmentRunner` advances every chain by ``num_draws`` draws of ``thin``
steps each, with no host round trip inside: minibatch indices are drawn on the device from keys
folded with the global step index, so chain i's trajectory depends only on (seed, i) and never
on how many chains run or how the run is cut into segments. The Python side (``sampling.api``)
calls the runner segment by segment to show progress, and nothing else.

Per draw the first step is recorded: L_B(w_t) and U_B(w_t) come free from the gradient
evaluation; L_B(w*) on the same minibatch (the paired control variate of reference section 6) is
a gather from a per-datum table of L(w*) computed once, when the loss is verified to be a per-
datum mean, and one forward pass otherwise; the MALA-acceptance diagnostic (Furman & Lau 2024,
App. D) costs one more gradient on the same minibatch, only every ``diag_every``-th draw
(``lax.cond`` on the unbatched draw index, so it is a real branch, not a select, under
``vmap``).

Probe sets (``sample(..., observe=...)``, ``sampling.observe``): on observed draws the per-row
(per-token) losses of each probe set at w_t are computed in a ``lax.cond`` branch (the draw index is
not batched over chains, so this is a real branch too) and written into the draw's record, NaN on
the other draws; the host keeps the observed draws only.

Divergence: a step whose potential or new position is non-finite, or whose loss rises by more
than ``explode`` above L_B(w*), freezes its chain at the last finite state and records the step
index in ``diverged_at``; later records of that chain are NaN. Healthy chains are unaffected.
The two checks are fused into one select over the state per step.

Performance notes (benchmarks/RESULTS.md): the data, w* and the table are arguments of the
compiled segment, never constants folded into it; everything else is what the kernel step costs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_ppl import compile_cache
from slt_ppl.compile_cache import CompiledProgram, dtype_of, keyed_call
from slt_ppl.kernels.base import Kernel
from slt_ppl.posterior import LocalPosterior
from slt_ppl.sampling.observe import NEVER, Probes, row_loss_fn
from slt_ppl.sampling.program_key import (
    Uncacheable,
    config_key,
    jaxpr_digest,
    loss_digest,
    loss_key,
    tagged,
)  # fmt: skip

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
    laplacian: Array  # tr(G·∇²(nβ·L_B))(w_t), Hutchinson, one probe; NaN off diagnostic draws
    grad_noise: Array  # tr(G·Σ_B)(w_t) from half-batch gradients; 0 full batch; NaN off diag draws
    tamed: Array  # steps of this draw (of ``thin``) whose drift was clipped (``kernels.base.tame_drift``)
    # probe name -> per-row (per-token) losses at w_t (``sampling.observe``); NaN off observed draws
    # inside the program, only observed draws once a segment is on the host
    observed: Any = None


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


def _tamed(info: Any) -> Array:
    """1.0 where the step clipped its drift (``kernels.base.tame_drift``), else 0.0."""
    dtype = info.potential.dtype
    return jnp.zeros((), dtype) if info.tamed is None else info.tamed.astype(dtype)


def heating_statistics(
    loss_fn: Callable[[Array, Any], Array],
    nbeta: Array,
    w: Array,
    precond: Array,
    data: dict[str, Array],
    idx: Array | None,
    key: Array,
) -> tuple[Array, Array]:
    """The two per-draw statistics that set the heating of an SGLD-type chain at w (seam 5):

    laplacian  = vᵀ∇²(nβ·L_B)(w)·v with v = G^½·z, z Rademacher: unbiased for tr(G·∇²(nβ·L_B))
                 (Hutchinson 1990), one Hessian-vector product (forward over reverse);
    grad_noise = m/(2B)·‖G^½(g₁ − g₂)‖², g_k = ∇(nβ·L_{B_k})(w) on the two halves (m rows each) of
                 the step's minibatch B of size B: unbiased for tr(G·Σ_B), Σ_B the covariance of the
                 minibatch gradient ∇(nβ·L_B), since Cov(g₁ − g₂) = 2Σ₁/m = 2B·Σ_B/m for rows drawn
                 i.i.d. (Σ₁ the per-row covariance). 0 for full batches (idx None).

    For a quadratic direction of precision h = nβh_L + γ, Euler–Maruyama SGLD with step ε and
    gradient-noise variance Σ has stationary variance (1 + εΣ/4)/(h(1 − εh/4)), so these two traces
    give the first-order heating of λ̂, (ε/8)·(laplacian + ρ·grad_noise) with ρ ≤ 1
    (``estimators.llc``).
    """
    root = jnp.sqrt(precond)
    v = root * jax.random.rademacher(key, w.shape, w.dtype)

    def scaled_loss(u: Array, rows: dict[str, Array]) -> Array:
        return nbeta * loss_fn(u, rows)

    batch = data if idx is None else {k: a[idx] for k, a in data.items()}
    hv = jax.jvp(lambda u: jax.grad(scaled_loss)(u, batch), (w,), (v,))[1]
    laplacian = jnp.vdot(v, hv)
    if idx is None or idx.shape[0] < 2:
        return laplacian, jnp.zeros((), w.dtype)
    m = idx.shape[0] // 2
    first = {k: a[idx[:m]] for k, a in data.items()}
    second = {k: a[idx[m : 2 * m]] for k, a in data.items()}
    diff = jax.grad(scaled_loss)(w, first) - jax.grad(scaled_loss)(w, second)
    noise = m / (2.0 * idx.shape[0]) * jnp.sum(precond * diff**2)
    return laplacian, noise


def _center_table_fn(
    loss_fn: Callable[[Array, Any], Array], chunk: int, key: Any
) -> Callable[[Array, dict[str, Array]], Array]:
    """``(center, data) -> ℓ``, ℓ_i = loss_fn(center, row i), ``chunk`` one-row batches at once
    (``key``: the loss's structural key at one row, None when it has none)."""

    def table(center: Array, data: dict[str, Array]) -> Array:
        def one(row: dict[str, Array]) -> Array:
            return loss_fn(center, {k: v[None] for k, v in row.items()})

        return jax.lax.map(one, data, batch_size=chunk)

    return functools.partial(
        keyed_call, None if key is None else ("center-table", chunk, key), table
    )


@dataclass(frozen=True)
class SegmentRunner:
    """Compiled runner of ``num_draws`` draws for all chains; see the module docstring.

    ``center_table``: "auto" (default) records L_B(w*) by gathering a per-datum table of L(w*) when
    the loss is verified to be a per-datum mean (see :meth:`center_losses`), otherwise by a forward
    pass; "off" always uses the forward pass.
    """

    posterior: LocalPosterior
    kernel: Kernel
    batch_size: int
    thin: int
    diag_every: int
    keep_draws: bool
    shared_batches: bool
    explode: float
    center_table: str = "auto"
    mesh: Any = None
    chunk: int = 100
    nbeta_factors: Any = None  # (C,) per-chain factors of nβ (temperatures), None = all 1
    probes: Probes | None = None  # probe sets observed every k-th sample draw (sampling.observe)
    full_loss: bool = False  # record L_n(w_t) on the full data (``defaults.choose_full_loss``)
    # what determines the kernel's code (registry name and options); None: the kernel object itself
    kernel_key: Any = None
    stats: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    programs: dict[int, Any] = field(default_factory=dict, compare=False, repr=False)

    def for_tuning(self) -> SegmentRunner:
        """The runner the step-size tuner probes with (one step per draw, no kept draws).

        When this runner already has ``thin == 1`` and keeps no draws it is returned itself, so the
        tuner's probes and the sampling run share one compiled program (the diagnostic frequency is
        an argument of the program, not a constant of it). Otherwise a variant that shares the
        center table and the timing stats.
        """
        if self.thin == 1 and not self.keep_draws:
            return self
        twin = dataclasses.replace(self, thin=1, keep_draws=False, programs={})
        object.__setattr__(twin, "stats", self.stats)
        if "_table" in self.__dict__:
            twin.__dict__["_table"] = self.__dict__["_table"]
        return twin

    def with_thin(self, thin: int) -> SegmentRunner:
        """This runner with ``thin`` steps per draw (itself if unchanged); shares the center table
        and the timing stats, compiles its own programs."""
        return self._variant(thin=int(thin))

    def with_full_loss(self, full_loss: bool) -> SegmentRunner:
        """This runner recording the full-data loss at every draw, or the paired minibatch loss."""
        return self._variant(full_loss=bool(full_loss))

    def _variant(self, **changes: Any) -> SegmentRunner:
        if all(getattr(self, k) == v for k, v in changes.items()):
            return self
        twin = dataclasses.replace(self, **changes, programs={})
        object.__setattr__(twin, "stats", self.stats)
        if "_table" in self.__dict__:
            twin.__dict__["_table"] = self.__dict__["_table"]
        return twin

    # -- minibatches and potentials -------------------------------------------------------------

    def batch(
        self, batch_key: Array, t: Array, data: dict[str, Array] | None = None
    ) -> dict[str, Array]:
        """The minibatch of global step ``t`` (the full data for full-batch kernels)."""
        idx = self._indices(batch_key, t)
        data = self.posterior.data if data is None else data
        if idx is None:
            return data
        return {k: v[idx] for k, v in data.items()}

    def _indices(self, batch_key: Array, t: Array) -> Array | None:
        if self.kernel.full_batch or self.batch_size >= self.posterior.n:
            return None
        return minibatch_indices(
            jax.random.fold_in(batch_key, t), self.batch_size, self.posterior.n
        )

    def potential_fn(
        self, batch: dict[str, Array], posterior: LocalPosterior | None = None
    ) -> Callable[[Array], tuple[Array, Array]]:
        """w ↦ (U_B(w), L_B(w)) on ``batch``."""
        post = self.posterior if posterior is None else posterior
        return lambda w: post.potential(w, batch)

    @cached_property
    def _table(self) -> Array | None:
        t0 = time.perf_counter()
        table = self.center_losses()
        self.stats["center_table_s"] = time.perf_counter() - t0
        return table

    def center_losses(self) -> Array | None:
        """Per-datum losses ℓ_i = L_{{i}}(w*) if L_B(w*) = mean_{i∈B} ℓ_i holds, else None.

        With the table, L_B(w*) on a minibatch is a gather of ``batch_size`` numbers instead of a
        forward pass (the paired control variate then costs nothing per step). The identity is
        checked on two random minibatches (relative tolerance 1e-4; float32 rounding is ~1e-6);
        models whose loss is not a mean of per-datum terms (batch statistics, a likelihood term
        outside the data plate) fail the check and keep the forward pass. The table is built 1024
        rows at a time.
        """
        post = self.posterior
        if self.center_table == "off" or self.kernel.full_batch or self.batch_size >= post.n:
            return None
        try:
            chunk = min(1024, post.n)
            table_key = loss_key(post.loss_fn, post.center, post.data, {1})
            table = _center_table_fn(post.loss_fn, chunk, table_key)(post.center, post.data)
            forward_key = loss_key(post.loss_fn, post.center, post.data, {self.batch_size})
            forward = functools.partial(keyed_call, tagged("loss", forward_key), post.loss_fn)
            key = jax.random.PRNGKey(20240611)
            for j in range(2):
                idx = jax.random.randint(jax.random.fold_in(key, j), (self.batch_size,), 0, post.n)
                direct = float(forward(post.center, {k: v[idx] for k, v in post.data.items()}))
                gathered = float(jnp.mean(table[idx]))
                if not (
                    math.isfinite(direct) and abs(direct - gathered) <= 1e-4 * (1.0 + abs(direct))
                ):
                    return None
        except Exception:  # a model that cannot run on one-row batches keeps the forward pass
            return None
        if table.shape != (post.n,) or not bool(jnp.all(jnp.isfinite(table))):
            return None
        return table

    # -- one step, one draw ---------------------------------------------------------------------

    def init(self, keys: Array, positions: Array) -> ChainState:
        """Initial states of all chains (keys: (C, 2) chain keys; positions: (C, d)).

        Also builds the center table (once per runner), so the timed segments do not include it.
        """
        _ = self._table

        def init_fn(targets, keys, positions, factors):
            def one(key: Array, position: Array, factor: Any) -> ChainState:
                post = _tempered(self.traced_posterior(targets), factor)
                full = self.potential_fn(post.data, post)
                ks = self.kernel.init(jax.random.fold_in(key, 2**30), position, full)
                return ChainState(ks, jnp.asarray(-1, jnp.int32))

            in_axes = (0, 0, None if factors is None else 0)
            return jax.vmap(one, in_axes=in_axes)(keys, positions, factors)

        program = self._shared_program(("init",), lambda: jax.jit(init_fn))
        state = program(self.posterior_args(), keys, positions, self.nbeta_factors)
        if self.mesh is not None:
            from slt_ppl.sampling.sharding import shard_chains

            state = shard_chains(state, self.mesh)
        return state

    # -- what the compiled programs take as arguments, and what they are keyed on -------------------

    def posterior_args(self) -> tuple[Any, ...]:
        """The posterior's traced inputs: (data, w*, (nβ, γ, L_n(w*))). nβ, γ and L_n(w*) are
        weakly typed scalars, so they promote exactly as the Python floats they replace."""
        post = self.posterior
        scalars = (post.nbeta, post.gamma, post.info.get("loss_center_full", math.nan))
        return post.data, post.center, tuple(jnp.asarray(float(x)) for x in scalars)

    def traced_posterior(self, targets: tuple[Any, ...]) -> LocalPosterior:
        """The runner's posterior with the traced inputs of :meth:`posterior_args`."""
        data, center, (nbeta, gamma, loss_center) = targets
        info = {**self.posterior.info, "loss_center_full": loss_center}
        return dataclasses.replace(
            self.posterior, data=data, center=center, nbeta=nbeta, gamma=gamma, info=info
        )

    @cached_property
    def program_key(self) -> tuple[Any, ...] | None:
        """The structural key of this runner's programs (``sampling.program_key``), or None when
        it cannot be described (its programs are then this runner's own)."""
        if not compile_cache.programs_enabled():
            return None
        try:
            return self._structural_key()
        except Uncacheable:
            return None

    def _structural_key(self) -> tuple[Any, ...]:
        post = self.posterior
        minibatch = not (self.kernel.full_batch or self.batch_size >= post.n)
        # row counts the programs evaluate the loss at: the full data (init, full-batch kernels,
        # full-batch heating statistics), the minibatch and its two halves (heating statistics)
        rows = {post.n} | ({self.batch_size, self.batch_size // 2} if minibatch else set())
        loss = loss_digest(post.loss_fn, post.center, post.data, rows - {0})
        kernel = self.kernel_key if self.kernel_key is not None else ("object", id(self.kernel))
        probes = None
        if self.probes is not None:
            per_row, w = row_loss_fn(post), _abstract(post.center)
            probes = (self.probes.every, tuple(sorted(self.probes.shapes.items())), tuple(
                (name, jaxpr_digest(per_row, w, _abstract(probe)))
                for name, probe in sorted(self.probes.sets.items())
            ))  # fmt: skip
        mesh = None
        if self.mesh is not None:
            mesh = (tuple(d.id for d in self.mesh.devices.flat), tuple(self.mesh.axis_names))
        return (
            "segment-runner", type(post), post.backend, post.n, loss, kernel, self.batch_size,
            self.thin, self.keep_draws, self.shared_batches, float(self.explode),
            self.center_table, self.nbeta_factors is None, probes, mesh, config_key(),
            self.full_loss,
        )  # fmt: skip

    def _shared_program(self, tag: tuple[Any, ...], make: Callable[[], Any]) -> Callable[..., Any]:
        """The program ``tag`` of this runner (``make()``: its jitted function), from the
        process-wide cache when a runner with the same structural key built it; calls add their
        compile time to ``stats["compile_time_s"]``."""
        key = self.program_key
        if key is None:
            program = CompiledProgram(make())
        else:
            program = compile_cache.shared_program((key, tag), lambda: CompiledProgram(make()))
        return functools.partial(program, stats=self.stats)

    def _step(
        self,
        ctx: _Context,
        state: ChainState,
        key: Array,
        batch: dict[str, Array],
        step_size: Array,
    ) -> tuple[Any, Any, Array]:
        """One kernel step; returns (new kernel state, info, finite) without freezing anything."""
        new_ks, info = self.kernel.step(
            key, state.kernel_state, self.potential_fn(batch, ctx.post), step_size
        )
        finite = jnp.isfinite(info.potential) & jnp.all(jnp.isfinite(_position(new_ks)))
        return new_ks, info, finite

    @staticmethod
    def _commit(state: ChainState, new_ks: Any, good: Array, t: Array) -> ChainState:
        """Take the step where ``good`` and the chain is healthy, else freeze it and mark it."""
        healthy = state.diverged_at < 0
        take = good & healthy
        kernel_state = jax.tree_util.tree_map(
            lambda a, b: jnp.where(take, a, b), new_ks, state.kernel_state
        )
        # an int32 step index past 2³¹ wraps negative, which would read as "healthy" (−1): mark
        # such a divergence with the largest index instead (it happened in the burn-in windows
        # of thinned two-temperature runs until session 8, ``stepsize.adapt_burnin``)
        t = t.astype(jnp.int32)
        marker = jnp.where(t < 0, jnp.iinfo(jnp.int32).max, t)
        diverged_at = jnp.where(healthy & ~good, marker, state.diverged_at)
        return ChainState(kernel_state, diverged_at)

    def _draw(
        self,
        ctx: _Context,
        chain_key: Array,
        batch_key: Array,
        step_size: Array,
        state: ChainState,
        i: Array,
    ) -> tuple[ChainState, DrawRecord]:
        post, kernel = ctx.post, self.kernel
        t0 = i * self.thin
        idx = self._indices(batch_key, t0)
        batch = post.data if idx is None else {k: v[idx] for k, v in post.data.items()}
        key, probe_key = jax.random.split(jax.random.fold_in(chain_key, t0))
        w = _position(state.kernel_state)
        new_ks, info, finite = self._step(ctx, state, key, batch, step_size)
        ok = finite & (state.diverged_at < 0)
        dtype = w.dtype
        nan = jnp.full((), jnp.nan, dtype)

        if kernel.full_batch:
            loss = (info.potential - post.localization(w)) / post.nbeta
            loss_center = jnp.asarray(post.info["loss_center_full"], dtype)
        elif self.full_loss:  # no minibatch noise in the trace (``defaults.choose_full_loss``)
            loss = post.loss_fn(w, post.data).astype(dtype)
            loss_center = jnp.asarray(post.info["loss_center_full"], dtype)
        else:
            loss = info.loss
            if ctx.table is not None and idx is not None:
                loss_center = jnp.mean(ctx.table[idx]).astype(loss.dtype)
            else:
                loss_center = post.loss_fn(post.center, batch)

        if kernel.proposal == "metropolis":
            acceptance = info.acceptance
        else:
            pot = self.potential_fn(batch, post)

            def diagnose(_: None) -> Array:
                if kernel.score is not None:  # the kernel scores its own move (momentum kernels)
                    log_a = kernel.score(pot, state.kernel_state, new_ks, info, step_size)
                else:  # the step is a Langevin proposal: score it as MALA would
                    w_new, g = _position(new_ks), info.grad
                    log_a = mala_log_acceptance(
                        pot, w, info.potential, g, w_new, step_size, info.precond
                    )
                return jnp.where(jnp.isnan(log_a), 0.0, jnp.exp(jnp.minimum(log_a, 0.0)))

            acceptance = jax.lax.cond(
                (i % ctx.diag_every) == 0, diagnose, lambda _: nan, operand=None
            )

        if kernel.proposal == "metropolis":  # exact kernels: no heating to estimate
            laplacian = grad_noise = nan
        else:
            stats_key = jax.random.fold_in(probe_key, 1)

            def heating(_: None) -> tuple[Array, Array]:
                return heating_statistics(
                    post.loss_fn, post.nbeta, w, info.precond, post.data, idx, stats_key
                )

            laplacian, grad_noise = jax.lax.cond(
                (i % ctx.diag_every) == 0, heating, lambda _: (nan, nan), operand=None
            )

        exploded = (loss - loss_center) > self.explode * (1.0 + jnp.abs(loss_center))
        # one select over the state per step: finite and not exploded (the two checks of the
        # reference implementation, fused; a chain that was already frozen stays frozen)
        new_state = self._commit(state, new_ks, finite & ~exploded, t0)
        alive = ok & ~exploded
        record = DrawRecord(
            loss=jnp.where(alive, loss, nan),
            loss_center=loss_center,
            acceptance=jnp.where(alive, acceptance, nan),
            grad_norm=jnp.where(alive, jnp.linalg.norm(info.grad), nan),
            distance=jnp.where(alive, jnp.linalg.norm(w - post.center), nan),
            position=jnp.where(alive, w, jnp.nan) if self.keep_draws else jnp.zeros((0,), dtype),
            laplacian=jnp.where(alive, laplacian, nan),
            grad_noise=jnp.where(alive, grad_noise, nan),
            tamed=jnp.where(alive, _tamed(info), nan),  # the draw's first step; ``rest`` adds
        )

        record = record._replace(observed=self._observe(ctx, w, i, alive))

        def rest(carry: tuple[ChainState, Array], j: Array) -> tuple[Any, None]:
            chain, tamed = carry
            t = t0 + j
            b = self.batch(batch_key, t, post.data)
            k = jax.random.fold_in(chain_key, t)
            ks, info, fin = self._step(ctx, chain, k, b, step_size)
            return (self._commit(chain, ks, fin, t), tamed + _tamed(info)), None

        if self.thin > 1:
            (new_state, tamed), _ = jax.lax.scan(
                rest, (new_state, record.tamed), jnp.arange(1, self.thin)
            )
            record = record._replace(tamed=tamed)
        return new_state, record

    def _observe(self, ctx: _Context, w: Array, i: Array, alive: Array) -> dict[str, Array]:
        """Per-row (per-token) losses of every probe set at w on observed draws (a real branch:
        ``i`` is not batched over chains), NaN-filled otherwise and for dead chains."""
        if self.probes is None:
            return {}
        per_row = row_loss_fn(self.posterior)
        shapes, every = self.probes.shapes, self.probes.every
        hit = (i >= ctx.observe_from) & ((i - ctx.observe_from) % every == 0)

        def measure(_: None) -> dict[str, Array]:
            return {n: per_row(w, rows).astype(w.dtype) for n, rows in ctx.probe_data.items()}

        def skip(_: None) -> dict[str, Array]:
            return {n: jnp.full(shapes[n], jnp.nan, w.dtype) for n in shapes}

        values = jax.lax.cond(hit, measure, skip, None)
        return {n: jnp.where(alive, v, jnp.nan) for n, v in values.items()}

    # -- compiled segments ----------------------------------------------------------------------

    def build(self, num_draws: int) -> CompiledSegment:
        """``run(states, chain_keys, batch_keys, step_size, start_draw[, diag_every])`` advancing
        every chain by ``num_draws`` draws.

        A segment is cut into pieces of ``chunk`` draws (plus one shorter remainder), and each piece
        length is compiled once per runner: the tuner's probes, the burn-in and the sampling
        segments all call the same program, so a run compiles one sampling program instead of one
        per segment length (compilation, not sampling, dominated short runs: 3 programs of 3-10 s
        each for a 5-layer DLN). The pieces are dispatched back to back without a host round trip.

        The data, w* and the center table are arguments of the compiled function, not constants
        baked into it (constants make XLA constant-fold the data: long compiles, duplicated memory).
        With a ``mesh`` the chain axis of states, keys and records is sharded over its devices.
        """
        return CompiledSegment(self, num_draws)

    def program(self, length: int) -> Callable[..., tuple[ChainState, DrawRecord]]:
        """The compiled piece of ``length`` draws (looked up once per runner and length; shared
        with every runner of the same structural key, see :attr:`program_key`)."""
        if length not in self.programs:
            self.programs[length] = self._shared_program(
                ("segment", length), lambda: self._jit_segment(length)
            )
        return self.programs[length]

    def _jit_segment(self, length: int) -> Any:
        fn = self.segment_fn(length)
        if self.mesh is None:
            return jax.jit(fn)
        from slt_ppl.sampling.sharding import segment_shardings

        in_shardings, out_shardings = segment_shardings(self.mesh, self.shared_batches)
        return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings)

    def segment_args(self, observe_from: int = NEVER) -> tuple[Any, ...]:
        """The traced inputs of a segment besides the chain states: (posterior inputs (data, w*,
        (nβ, γ, L_n(w*))), center table, per-chain nβ factors, probe sets, first observed draw)."""
        factors = self.nbeta_factors
        probe_data = {} if self.probes is None else self.probes.sets
        return (
            self.posterior_args(), self._table, factors, probe_data,
            jnp.asarray(observe_from, jnp.int32),
        )  # fmt: skip

    def segment_fn(self, num_draws: int) -> Callable[..., tuple[ChainState, DrawRecord]]:
        """Un-jitted ``run(args, states, chain_keys, batch_keys, step_size, start, diag_every)``."""
        batch_axis = None if self.shared_batches else 0

        def run(args, states, chain_keys, batch_keys, step_size, start, diag_every):
            targets, table, factors, probe_data, observe_from = args
            post = self.traced_posterior(targets)
            ctx = _Context(post, table, diag_every, probe_data, observe_from)

            def one_chain(state, chain_key, batch_key, factor):
                draws = start + jnp.arange(num_draws)
                chain_ctx = ctx._replace(post=_tempered(ctx.post, factor))
                eps = chain_step_size(step_size, factor)
                return jax.lax.scan(
                    lambda s, i: self._draw(chain_ctx, chain_key, batch_key, eps, s, i),
                    state,
                    draws,
                )

            factor_axis = None if factors is None else 0
            return jax.vmap(one_chain, in_axes=(0, 0, batch_axis, factor_axis))(
                states, chain_keys, batch_keys, factors
            )

        return run


# Below this many rows one 32-bit word per index, reduced mod n, is uniform to n/2³² ≤ 1.5e-5
# relative (``jax.random.randint`` spends two words per index to remove that bias).
FAST_INDEX_MAX_ROWS = 1 << 16


def minibatch_indices(key: Array, batch_size: int, n: int) -> Array:
    """``batch_size`` row indices drawn uniformly with replacement from ``range(n)``.

    For n ≤ ``FAST_INDEX_MAX_ROWS``: ``bits(key) mod n``, one threefry word per index; each row's
    probability is 1/n to within a relative n/2³² ≤ 1.5e-5 (far below any Monte Carlo error of a
    minibatch gradient). Else ``jax.random.randint`` (exact). Written here because the index draw
    (once per step when the chains share minibatches) was a quarter of a tiny model's step:
    a step of 16 chains at d = 2, batch 256, took ≈ 30 µs with ``randint`` and ≈ 22 µs with one
    word (idle 2-core CPU, ``benchmarks/tiny_step_speed.py``; benchmarks/RESULTS.md, session 14).
    """
    if n <= FAST_INDEX_MAX_ROWS:
        bits = jax.random.bits(key, (batch_size,), jnp.uint32)
        return (bits % jnp.uint32(n)).astype(jnp.int32)
    return jax.random.randint(key, (batch_size,), 0, n)


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs of the arrays of ``tree`` (tracing inputs for ``program_key``)."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), dtype_of(x)), tree)


class CompiledSegment:
    """``num_draws`` draws for all chains as a sequence of compiled pieces (see
    :meth:`SegmentRunner.build`); records come back as NumPy arrays, draws along axis 1."""

    def __init__(self, runner: SegmentRunner, num_draws: int) -> None:
        self.runner = runner
        self.num_draws = int(num_draws)
        chunk = max(1, int(runner.chunk))
        full, rest = divmod(self.num_draws, chunk)
        self.pieces = [chunk] * full + ([rest] if rest else [])

    def __call__(
        self,
        states: ChainState,
        chain_keys: Array,
        batch_keys: Array,
        step_size: Any,
        start: Any,
        diag_every: int | None = None,
        observe_from: int = NEVER,
    ) -> tuple[ChainState, DrawRecord]:
        """Advance all chains by the segment's draws, starting at global draw ``start``;
        ``diag_every`` defaults to the runner's; probe sets are observed from global draw
        ``observe_from`` on (never by default), and only observed draws come back."""
        runner = self.runner
        args = runner.segment_args(observe_from)
        eps = jnp.asarray(step_size)
        every = jnp.asarray(runner.diag_every if diag_every is None else diag_every, jnp.int32)
        offset = int(start)
        records = []
        for length in self.pieces:
            call = (args, states, chain_keys, batch_keys, eps, jnp.asarray(offset), every)
            states, rec = runner.program(length)(*call)
            if runner.probes is not None:  # keep the observed draws only (gathered on the device)
                keep = runner.probes.observed(offset, length, int(observe_from))
                rec = rec._replace(observed={n: a[:, keep] for n, a in rec.observed.items()})
            records.append(rec)
            offset += length
        if len(records) == 1:
            return states, jax.device_get(records[0])
        return states, concat_records(jax.device_get(records))


def concat_records(pieces: list[DrawRecord]) -> DrawRecord:
    """Records of consecutive pieces joined along the draw axis (probe losses per probe set)."""
    fields = {
        f: np.concatenate([np.asarray(getattr(p, f)) for p in pieces], axis=1)
        for f in DrawRecord._fields
        if f != "observed"
    }
    observed = pieces[0].observed or {}
    joined = {n: np.concatenate([p.observed[n] for p in pieces], axis=1) for n in observed}
    return DrawRecord(**fields, observed=joined)


def chain_step_size(step_size: Any, factor: Any) -> Any:
    """ε/f: the step size of a chain at nβ·f (``sampling.temperatures``, per-temperature step
    sizes); ``step_size`` itself when ``factor`` is None."""
    return step_size if factor is None else step_size / factor


def _tempered(post: LocalPosterior, factor: Any) -> LocalPosterior:
    """The posterior at nβ·factor (the same γ and center); itself when ``factor`` is None."""
    if factor is None:
        return post
    return dataclasses.replace(post, nbeta=post.nbeta * factor)


class _Context(NamedTuple):
    """Traced per-call inputs: the posterior with traced data and center, and the center table."""

    post: LocalPosterior
    table: Array | None
    diag_every: Array
    probe_data: dict[str, dict[str, Array]]
    observe_from: Array
