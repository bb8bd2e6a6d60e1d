"""The torch step program: all chains as one (C, d) tensor, the posterior's potential evaluated for
all chains by one ``torch.func.vmap``'d forward pass and differentiated by one autograd pass of the
chain sum (:func:`batched_grad`) — no Python loop over chains, no model copies.

The same program as :mod:`slt_ppl.sampling.loop`, step for step, behind the same runner interface
(``init(chain_keys, positions)``, ``build(k)(state, chain_keys, batch_keys, ε, start,
diag_every)``, ``for_tuning()``), so the backend-neutral driver (``sampling.driver``) and the tuner
(``sampling.stepsize``) drive both. Per draw the first step is recorded (L_B(w_t) and U_B(w_t) from
the gradient evaluation, L_B(w*) on the same minibatch — a gather from a per-datum table at w* when
the loss is a per-datum mean, else a forward pass —, ‖∇U_B‖, ‖w_t − w*‖); every
``diag_every``-th draw the MALA-acceptance diagnostic (Furman & Lau 2024, App. D, U and ∇U at both
points on the same minibatch) and the heating statistics ``laplacian`` and ``grad_noise``
(:meth:`TorchSegmentRunner.heating`) are recorded; chain c may run at nβ·``nbeta_factors[c]``
(temperatures); on observed draws (``sampling.observe``) the per-row losses of each probe set
are evaluated for all chains in one vmapped call; a chain whose potential or new position is
non-finite, or whose L_B − L_B(w*) exceeds ``explode``·(1 + |L_B(w*)|), is frozen at its last good
state and the step recorded in ``diverged_at``; later records of that chain are NaN.

Randomness is counter-based, as in the JAX loop: ``chain_keys`` are one 64-bit seed per chain and
``batch_keys`` one seed (shared minibatches) or one per chain; at global step t chain c's generator
is reseeded from (chain_keys[c], t) (:class:`~slt_ppl.kernels_torch.base.ChainNoise`) and the
minibatch indices come from (batch key, t). Chain i's draws therefore depend only on (seed, i), not
on the number of chains or the segmenting, and a run resumed from a checkpoint continues bit for
bit. Torch draws still differ from JAX draws (different generators); only the statistics agree.

Everything stays on the posterior's device: records go into preallocated device tensors, and a
segment ends with a single copy to the host (no ``.item()`` on the hot path).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from slt_ppl.kernels_torch.base import ChainNoise, StepInfo, TorchKernel, mix
from slt_ppl.posterior_torch import TorchLocalPosterior
from slt_ppl.sampling.loop import DrawRecord
from slt_ppl.sampling.observe import NEVER, Probes, row_loss_fn

Tensor = torch.Tensor
RECORD_FIELDS = tuple(f for f in DrawRecord._fields if f != "observed")
INIT_TAG = 1 << 62  # counters of the kernel's init draws (steps use 0, 1, 2, ...)


class TorchChainState(NamedTuple):
    kernel_state: Any  # NamedTuple of (C, ...) tensors with a ``position`` field
    diverged_at: Tensor  # (C,) int64, −1 while healthy


def select(mask: Tensor, new: Any, old: Any) -> Any:
    """Per chain: fields of ``new`` where ``mask`` (C,) holds, else of ``old`` (NamedTuples of
    tensors)."""
    return type(new)(
        *(
            torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)
            for a, b in zip(new, old, strict=True)
        )
    )


def mala_log_acceptance(
    w: Tensor, potential: Tensor, grad: Tensor, w_new: Tensor, potential_new: Tensor,
    grad_new: Tensor, step_size: float, precond: Tensor,
) -> Tensor:  # fmt: skip
    """log A = U(w) − U(w') + log q(w|w') − log q(w'|w), with
    log q(b|a) = −‖(b − a + (ε/2)G∇U(a))/√(εG)‖²/2 (Furman & Lau 2024, App. D), per chain."""
    forward = w_new - w + 0.5 * step_size * precond * grad
    backward = w - w_new + 0.5 * step_size * precond * grad_new
    log_q_fwd = -0.5 * torch.sum(forward**2 / (step_size * precond), -1)
    log_q_bwd = -0.5 * torch.sum(backward**2 / (step_size * precond), -1)
    return potential - potential_new + log_q_bwd - log_q_fwd


def batched_grad(
    batched: Callable, one: Callable, w: Tensor, batch: Mapping[str, Tensor], per_chain: bool,
    factors: Tensor | None,
) -> tuple[Tensor, Any]:  # fmt: skip
    """(∇f_c(w_c), f(W)) for every chain c, where ``batched`` is f vmapped over chains (returning
    f_c, or a tuple whose first element is f_c, shape (C,)) and ``one`` is the single-chain f.

    The forward pass runs vmapped; the gradient is ordinary reverse-mode autograd of Σ_c f_c with
    respect to W, which is row c's ∇f_c because chains share no parameters. Measured on the
    106k-parameter tiny LM (benchmarks/devinterp_lm_profile.py, CPU seconds, 1 thread): bit-identical
    gradients to ``vmap(grad(f))`` and 17 % less CPU per chain-step at C = 1, ~3 % at C = 4-8 (no
    functorch ``grad`` transform wrapped around every op). One chain skips vmap altogether (a
    plain autograd pass, 10-20 % cheaper again); its rounding may differ from the batched path by an
    ulp (unbatched matmuls), as the chain-count tests allow."""
    with torch.enable_grad():
        if w.shape[0] == 1:
            row = w[0].detach().requires_grad_(True)
            sub = {k: v[0] for k, v in batch.items()} if per_chain else batch
            out = one(row, sub, None if factors is None else factors[0])
            value = out[0] if isinstance(out, tuple) else out
            (grad,) = torch.autograd.grad(value, row)
            return grad[None], _detach(out, unsqueeze=True)
        rows = w.detach().requires_grad_(True)
        out = batched(rows, batch, factors)
        value = out[0] if isinstance(out, tuple) else out
        (grad,) = torch.autograd.grad(value.sum(), rows)
        return grad, _detach(out)


def _detach(out: Any, unsqueeze: bool = False) -> Any:
    if isinstance(out, tuple):
        return tuple(_detach(o, unsqueeze) for o in out)
    out = out.detach()
    return out[None] if unsqueeze else out


class _Streams(NamedTuple):
    """The random streams of one segment call: per-chain noise and minibatch generators."""

    noise: ChainNoise
    batch_seeds: list[int]  # one (shared minibatches) or one per chain
    batch_gen: torch.Generator


def _tamed(info: StepInfo) -> Tensor:
    """Per chain 1.0 where the step clipped its drift (``tame_drift``), else 0.0."""
    zero = torch.zeros_like(info.potential)
    return zero if info.tamed is None else info.tamed.to(zero.dtype)


class _Step(NamedTuple):
    """One kernel step before freezing: new state, info, finiteness and the minibatch used."""

    new_ks: Any
    info: StepInfo
    finite: Tensor
    vg: Callable
    batch: Mapping[str, Tensor]
    per_chain: bool
    idx: Tensor | None


@dataclass(frozen=True)
class TorchSegmentRunner:
    """Runs ``num_draws`` draws of all chains; see the module docstring. Same fields and methods as
    :class:`slt_ppl.sampling.loop.SegmentRunner` that the driver and the tuner use."""

    posterior: TorchLocalPosterior
    kernel: TorchKernel
    batch_size: int
    thin: int
    diag_every: int
    keep_draws: bool
    shared_batches: bool
    explode: float
    nbeta_factors: Any = None  # (C,) per-chain factors of nβ (temperatures), None = all 1
    center_table: str = "auto"  # "off": L_B(w*) always by a forward pass
    records_heating: bool = True  # laplacian and grad_noise are recorded (the tuner reads them)
    probes: Probes | None = None  # probe sets observed every k-th sample draw (sampling.observe)
    full_loss: bool = False  # record L_n(w_t) on the full data (``defaults.choose_full_loss``)
    stats: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    _fns: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        post = self.posterior
        factors = self.nbeta_factors
        f_dim = None if factors is None else 0
        if factors is not None:
            self._fns["factors"] = torch.as_tensor(
                np.asarray(factors), dtype=post.center.dtype, device=post.device
            )
        self._fns["nbeta"] = post.nbeta if factors is None else post.nbeta * self._fns["factors"]

        def potential(w: Tensor, batch: Mapping[str, Tensor], factor: Any) -> Any:
            if factor is None:
                return post.potential(w, batch)
            loss = post.loss_fn(w, batch)
            return post.nbeta * factor * loss + post.localization(w), loss

        def scaled_loss(w: Tensor, batch: Mapping[str, Tensor], factor: Any) -> Tensor:
            return post.nbeta * (1.0 if factor is None else factor) * post.loss_fn(w, batch)

        def hvp(w: Tensor, v: Tensor, batch: Mapping[str, Tensor], factor: Any) -> Tensor:
            # reverse over reverse: ∇⟨∇f, v⟩ = ∇²f·v; measured 2× faster than torch.func.jvp of
            # grad (forward over reverse) on the 10k DLN (31 vs 64 ms for 8 chains; a gradient
            # takes 30 ms)
            grad = torch.func.grad(scaled_loss)
            return torch.func.grad(lambda u: torch.dot(grad(u, batch, factor), v))(w)

        vmap = torch.func.vmap
        self._fns["potential_one"] = potential
        for kind, b_dim in (("shared", None), ("indep", 0)):
            # forward passes vmapped over chains, gradients by plain autograd (batched_grad)
            self._fns[kind] = vmap(potential, in_dims=(0, b_dim, f_dim))
            self._fns[f"hvp_{kind}"] = vmap(hvp, in_dims=(0, 0, b_dim, f_dim))
            self._fns[f"scaled_{kind}"] = vmap(scaled_loss, in_dims=(0, b_dim, f_dim))
        self._fns["center_indep"] = vmap(post.loss_fn, in_dims=(None, 0))
        self._fns["full_loss"] = vmap(post.loss_fn, in_dims=(0, None))
        if self.probes is not None:  # ℓ of every chain on a probe set, one batched call
            self._fns["observe"] = vmap(row_loss_fn(post), in_dims=(0, None))

    def for_tuning(self) -> TorchSegmentRunner:
        """The runner the step-size tuner probes with (one step per draw, no kept draws)."""
        if self.thin == 1 and not self.keep_draws:
            return self
        twin = dataclasses.replace(self, thin=1, keep_draws=False, stats={}, _fns={})
        object.__setattr__(twin, "stats", self.stats)
        if "table" in self._fns:
            twin._fns["table"] = self._fns["table"]
        return twin

    def with_thin(self, thin: int) -> TorchSegmentRunner:
        """This runner with ``thin`` steps per draw (itself if unchanged), sharing the center
        table and the timing stats."""
        return self._variant(thin=int(thin))

    def with_full_loss(self, full_loss: bool) -> TorchSegmentRunner:
        """This runner recording the full-data loss at every draw, or the paired minibatch loss."""
        return self._variant(full_loss=bool(full_loss))

    def _variant(self, **changes: Any) -> TorchSegmentRunner:
        if all(getattr(self, k) == v for k, v in changes.items()):
            return self
        twin = dataclasses.replace(self, **changes, stats={}, _fns={})
        object.__setattr__(twin, "stats", self.stats)
        if "table" in self._fns:
            twin._fns["table"] = self._fns["table"]
        return twin

    # -- minibatches and potentials -------------------------------------------------------------

    def _streams(self, chain_keys: Any, batch_keys: Any) -> _Streams:
        device = self.posterior.device
        seeds = np.atleast_1d(np.asarray(batch_keys, dtype=np.uint64)).tolist()
        return _Streams(ChainNoise(chain_keys, device), seeds, torch.Generator(device=device))

    def batch(self, streams: _Streams, t: int) -> tuple[Mapping[str, Tensor], bool, Tensor | None]:
        """The minibatch of global step ``t``, whether it is per chain, and its row indices (drawn
        with replacement on the device from (batch key, t); None for the full data)."""
        post = self.posterior
        if self.kernel.full_batch or self.batch_size >= post.n:
            return post.data, False, None
        gen, device = streams.batch_gen, post.device
        rows = []
        for seed in streams.batch_seeds:
            gen.manual_seed(mix(seed, t))
            rows.append(torch.randint(0, post.n, (self.batch_size,), generator=gen, device=device))
        idx = rows[0] if self.shared_batches else torch.stack(rows)
        return {k: v[idx] for k, v in post.data.items()}, not self.shared_batches, idx

    def center_losses(self) -> Tensor | None:
        """Per-datum losses ℓ_i = L_{{i}}(w*) if L_B(w*) = mean_{i∈B} ℓ_i holds, else None: with
        the table, L_B(w*) on a minibatch is a gather instead of a forward pass. The same rule as
        ``SegmentRunner.center_losses`` (checked on two random minibatches, relative tolerance
        1e-4; models that are not per-datum means, or cannot run on one-row batches, keep the
        forward pass)."""
        post = self.posterior
        if self.center_table == "off" or self.kernel.full_batch or self.batch_size >= post.n:
            return None

        def one(row: Mapping[str, Tensor]) -> Tensor:
            return post.loss_fn(post.center, {k: v.unsqueeze(0) for k, v in row.items()})

        per_rows = torch.func.vmap(one)
        gen = torch.Generator(device=post.device).manual_seed(20240611)
        try:
            with torch.no_grad():
                table = torch.cat([
                    per_rows({k: v[start : start + 1024] for k, v in post.data.items()})
                    for start in range(0, post.n, 1024)
                ])  # fmt: skip
                for _ in range(2):
                    idx = torch.randint(
                        0, post.n, (self.batch_size,), generator=gen, device=post.device
                    )
                    direct = float(
                        post.loss_fn(post.center, {k: v[idx] for k, v in post.data.items()})
                    )
                    gathered = float(torch.mean(table[idx]))
                    if not (
                        math.isfinite(direct)
                        and abs(direct - gathered) <= 1e-4 * (1.0 + abs(direct))
                    ):
                        return None
        except Exception:  # a model that cannot run on one-row batches keeps the forward pass
            return None
        if table.shape != (post.n,) or not bool(torch.isfinite(table).all()):
            return None
        return table

    def value_and_grad(self, batch: Mapping[str, Tensor], per_chain: bool) -> Callable:
        """W (C, d) → (U_B, L_B, ∇U_B) of every chain on ``batch`` (see :func:`batched_grad`)."""
        kind = "indep" if per_chain else "shared"
        fn, one = self._fns[kind], self._fns["potential_one"]
        factors = self._fns.get("factors")

        def vg(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            grad, (potential, loss) = batched_grad(fn, one, w, batch, per_chain, factors)
            return potential, loss, grad

        return vg

    def _scaled_one(self, w: Tensor, batch: Mapping[str, Tensor], factor: Any) -> Tensor:
        """nβ·factor·L_B(w) of one chain (the heating statistics' gradient target)."""
        post = self.posterior
        return post.nbeta * (1.0 if factor is None else factor) * post.loss_fn(w, batch)

    # -- one step, one draw ---------------------------------------------------------------------

    def init(self, chain_keys: Any, positions: Tensor) -> TorchChainState:
        """Initial states of all chains (chain_keys: one seed per chain; positions: (C, d)); also
        builds the center table once per runner, so the timed segments do not include it."""
        if "table" not in self._fns:
            t0 = time.perf_counter()
            self._fns["table"] = self.center_losses()
            self.stats["center_table_s"] = time.perf_counter() - t0
        noise = ChainNoise(chain_keys, self.posterior.device).at(INIT_TAG)
        vg = self.value_and_grad(self.posterior.data, False)
        with torch.no_grad():
            ks = self.kernel.init(noise, positions.clone(), vg)
        diverged = torch.full((positions.shape[0],), -1, dtype=torch.int64, device=positions.device)
        return TorchChainState(ks, diverged)

    def _step(self, state: TorchChainState, streams: _Streams, t: int, step_size: float) -> _Step:
        """One kernel step at global step ``t`` (nothing frozen yet)."""
        batch, per_chain, idx = self.batch(streams, t)
        vg = self.value_and_grad(batch, per_chain)
        new_ks, info = self.kernel.step(streams.noise.at(t), state.kernel_state, vg, step_size)
        finite = torch.isfinite(info.potential) & torch.isfinite(new_ks.position).all(-1)
        return _Step(new_ks, info, finite, vg, batch, per_chain, idx)

    @staticmethod
    def _commit(state: TorchChainState, new_ks: Any, good: Tensor, t: int) -> TorchChainState:
        """Take the step where ``good`` and the chain is healthy, else freeze it and mark it."""
        healthy = state.diverged_at < 0
        kernel_state = select(good & healthy, new_ks, state.kernel_state)
        return TorchChainState(kernel_state, torch.where(healthy & ~good, t, state.diverged_at))

    def _acceptance(
        self, old_ks: Any, info: StepInfo, new_ks: Any, vg: Callable, step_size: float,
        diagnose: bool,
    ) -> Tensor:  # fmt: skip
        """The acceptance record: the kernel's own (MALA), or on diagnostic draws the log
        acceptance of the actual move — scored by the kernel (``score``, momentum kernels) or as a
        Langevin proposal (Furman & Lau 2024, App. D) — clipped to [0, 1]; NaN otherwise."""
        kernel = self.kernel
        if kernel.proposal == "metropolis":
            return info.acceptance
        if not diagnose:
            return torch.full_like(info.potential, float("nan"))
        if kernel.score is not None:  # the kernel scores its own move (momentum kernels)
            log_a = kernel.score(vg, old_ks, new_ks, info, step_size)
        else:  # the step is a Langevin proposal: score it as MALA would
            w, w_new = old_ks.position, new_ks.position
            u_new, _, g_new = vg(w_new)
            log_a = mala_log_acceptance(
                w, info.potential, info.grad, w_new, u_new, g_new, step_size, info.precond
            )
        return torch.where(torch.isnan(log_a), 0.0, torch.exp(torch.clamp(log_a, max=0.0)))

    def heating(
        self, w: Tensor, precond: Tensor, batch: Mapping[str, Tensor], per_chain: bool,
        noise: ChainNoise,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The heating statistics of ``sampling.loop.heating_statistics`` for every chain (seam 2):
        laplacian = vᵀ∇²(nβ·L_B)(w)v, v = G^½z with z Rademacher (Hutchinson), unbiased for
        tr(G·∇²(nβ·L_B)); grad_noise = m/(2B)·‖G^½(g₁ − g₂)‖², g_k the gradients of nβ·L on the two
        halves (m rows each) of the step's minibatch, unbiased for tr(G·Σ_B); 0 for full
        batches."""
        kind = "indep" if per_chain else "shared"
        factors = self._fns.get("factors")
        v = torch.sqrt(precond) * torch.where(noise.uniform(w) < 0.5, -1.0, 1.0).to(w.dtype)
        laplacian = torch.sum(v * self._fns[f"hvp_{kind}"](w, v, batch, factors), dim=-1)
        size = next(iter(batch.values())).shape[1 if per_chain else 0]
        if self.kernel.full_batch or self.batch_size >= self.posterior.n or size < 2:
            return laplacian, torch.zeros_like(laplacian)
        m = size // 2
        axis = 1 if per_chain else 0
        first = {k: a.narrow(axis, 0, m) for k, a in batch.items()}
        second = {k: a.narrow(axis, m, m) for k, a in batch.items()}
        fn = self._fns[f"scaled_{kind}"]
        one = self._scaled_one
        g1 = batched_grad(fn, one, w, first, per_chain, factors)[0]
        diff = g1 - batched_grad(fn, one, w, second, per_chain, factors)[0]
        return laplacian, m / (2.0 * size) * torch.sum(precond * diff**2, dim=-1)

    def _draw(
        self, state: TorchChainState, streams: _Streams, step_size: float, i: int,
        diag_every: int, out: dict[str, Tensor], j: int, slot: int | None = None,
    ) -> TorchChainState:  # fmt: skip
        post = self.posterior
        t0 = i * self.thin
        w = state.kernel_state.position
        new_ks, info, finite, vg, batch, per_chain, idx = self._step(state, streams, t0, step_size)
        ok = finite & (state.diverged_at < 0)
        nan = torch.full_like(info.potential, float("nan"))
        table = self._fns.get("table")
        if self.kernel.full_batch:
            loss = (info.potential - post.localization(w)) / self._fns["nbeta"]
            loss_center = torch.full_like(nan, post.info["loss_center_full"])
        elif self.full_loss:  # no minibatch noise in the trace (``defaults.choose_full_loss``)
            loss = self._fns["full_loss"](w, post.data).to(w.dtype)
            loss_center = torch.full_like(nan, post.info["loss_center_full"])
        elif table is not None and idx is not None:
            loss, loss_center = info.loss, torch.mean(table[idx], dim=-1).expand(w.shape[0])
        elif per_chain:
            loss, loss_center = info.loss, self._fns["center_indep"](post.center, batch)
        else:
            loss, loss_center = info.loss, post.loss_fn(post.center, batch).expand(w.shape[0])
        diagnose = i % diag_every == 0
        acceptance = self._acceptance(state.kernel_state, info, new_ks, vg, step_size, diagnose)
        if diagnose and self.kernel.proposal != "metropolis":  # exact kernels: no heating
            laplacian, grad_noise = self.heating(w, info.precond, batch, per_chain, streams.noise)
        else:
            laplacian = grad_noise = nan
        exploded = (loss - loss_center) > self.explode * (1.0 + torch.abs(loss_center))
        state = self._commit(state, new_ks, finite & ~exploded, t0)
        alive = ok & ~exploded
        out["loss"][:, j] = torch.where(alive, loss, nan)
        out["loss_center"][:, j] = loss_center
        out["acceptance"][:, j] = torch.where(alive, acceptance, nan)
        grad_norm = torch.linalg.vector_norm(info.grad, dim=-1)
        out["grad_norm"][:, j] = torch.where(alive, grad_norm, nan)
        distance = torch.linalg.vector_norm(w - post.center, dim=-1)
        out["distance"][:, j] = torch.where(alive, distance, nan)
        out["laplacian"][:, j] = torch.where(alive, laplacian, nan)
        out["grad_noise"][:, j] = torch.where(alive, grad_noise, nan)
        if self.keep_draws:
            out["position"][:, j] = torch.where(alive[:, None], w, float("nan"))
        if slot is not None:  # an observed draw: per-row losses of every probe set at w
            for name, rows in self.probes.sets.items():
                values = self._fns["observe"](w, rows).to(w.dtype)
                mask = alive.view(-1, *([1] * (values.dim() - 1)))
                out[f"observe_{name}"][:, slot] = torch.where(mask, values, float("nan"))
        tamed = _tamed(info)
        for k in range(1, self.thin):
            step = self._step(state, streams, t0 + k, step_size)
            state = self._commit(state, step.new_ks, step.finite, t0 + k)
            tamed = tamed + _tamed(step.info)
        out["tamed"][:, j] = torch.where(alive, tamed, nan)
        return state

    def chain_step_sizes(self, step_size: float) -> float | Tensor:
        """ε/f_c per chain as a (C, 1) tensor when the chains run at several temperatures
        (``sampling.temperatures``), else ``step_size`` itself (the kernels' fast scalar path)."""
        factors = self._fns.get("factors")
        return step_size if factors is None else step_size / factors[:, None]

    def run(
        self, state: TorchChainState, chain_keys: Any, batch_keys: Any, step_size: float,
        start: int, num_draws: int, diag_every: int | None = None, observe_from: int = NEVER,
    ) -> tuple[TorchChainState, DrawRecord]:  # fmt: skip
        """Advance every chain by ``num_draws`` draws from global draw ``start``, observing the
        probe sets from global draw ``observe_from`` on; one host copy at the end."""
        center = self.posterior.center
        num_chains, d = state.kernel_state.position.shape
        every = self.diag_every if diag_every is None else int(diag_every)
        kw = {"dtype": center.dtype, "device": center.device}
        out = {
            name: torch.full((num_chains, num_draws), float("nan"), **kw) for name in RECORD_FIELDS
        }
        out["position"] = torch.empty((num_chains, num_draws, d if self.keep_draws else 0), **kw)
        slots: dict[int, int] = {}
        if self.probes is not None:
            keep = self.probes.observed(start, num_draws, observe_from)
            slots = {int(j): k for k, j in enumerate(keep)}
            for name, shape in self.probes.shapes.items():
                out[f"observe_{name}"] = torch.full((num_chains, len(keep), *shape), math.nan, **kw)
        streams = self._streams(chain_keys, batch_keys)
        eps = self.chain_step_sizes(float(step_size))
        with torch.no_grad():
            for j in range(num_draws):
                state = self._draw(state, streams, eps, start + j, every, out, j, slots.get(j))
        host = {k: v.cpu().numpy() for k, v in out.items()}
        names = self.probes.shapes if self.probes is not None else {}
        observed = {n: host.pop(f"observe_{n}") for n in names}
        return state, DrawRecord(**host, observed=observed)

    def build(self, num_draws: int) -> Callable[..., tuple[TorchChainState, DrawRecord]]:
        """``run(state, chain_keys, batch_keys, step_size, start[, diag_every])`` advancing every
        chain by ``num_draws`` draws: the call shape of ``SegmentRunner.build``."""

        def run(
            state, chain_keys, batch_keys, step_size, start, diag_every=None, observe_from=NEVER
        ):
            return self.run(
                state,
                chain_keys,
                batch_keys,
                float(step_size),
                int(start),
                num_draws,
                diag_every,
                int(observe_from),
            )

        return run
