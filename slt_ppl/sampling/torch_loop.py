"""The torch sampling loop: all chains as one (C, d) tensor, gradients by ``torch.func.vmap`` over
``torch.func.grad`` of the posterior's potential — no Python loop over chains, no model copies.

Mirrors :mod:`slt_ppl.sampling.loop` step for step: per draw the first step is recorded (L_B(w_t)
and
U_B(w_t) from the gradient evaluation, L_B(w*) on the same minibatch, ‖∇U_B‖, ‖w_t − w*‖); the
MALA-acceptance diagnostic (Furman & Lau 2024, App. D) is computed every ``diag_every``-th draw
with U
and ∇U at both points on the same minibatch; a chain whose potential or new position is
non-finite, or
whose L_B − L_B(w*) exceeds ``explode``·(1 + |L_B(w*)|), is frozen at its last good state and the
step
recorded in ``diverged_at``; later records of that chain are NaN.

Everything stays on the posterior's device: minibatch indices are drawn there from the run's
``torch.Generator``, records go into preallocated device tensors, and one segment ends with a single
copy to the host (no ``.item()`` on the hot path). Unlike the JAX loop, randomness is one sequential
stream per run, so a chain's draws depend on the number of chains and the segmenting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from slt_ppl.kernels_torch.base import StepInfo, TorchKernel
from slt_ppl.posterior_torch import TorchLocalPosterior

Tensor = torch.Tensor
RECORD_FIELDS = ("loss", "loss_center", "acceptance", "grad_norm", "distance", "position")


class TorchChainState(NamedTuple):
    kernel_state: Any  # NamedTuple of (C, ...) tensors with a ``position`` field
    diverged_at: Tensor  # (C,) int64, −1 while healthy


class TorchDrawRecord(NamedTuple):
    """Per-draw records on the host, arrays shaped (C, num_draws[, d])."""

    loss: np.ndarray
    loss_center: np.ndarray
    acceptance: np.ndarray
    grad_norm: np.ndarray
    distance: np.ndarray
    position: np.ndarray


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
    """log A = U(w) − U(w') + log q(w|w') − log q(w'|w), log q(b|a) = −‖(b − a +
    (ε/2)G∇U(a))/√(εG)‖²/2
    (Furman & Lau 2024, App. D), per chain."""
    forward = w_new - w + 0.5 * step_size * precond * grad
    backward = w - w_new + 0.5 * step_size * precond * grad_new
    log_q_fwd = -0.5 * torch.sum(forward**2 / (step_size * precond), -1)
    log_q_bwd = -0.5 * torch.sum(backward**2 / (step_size * precond), -1)
    return potential - potential_new + log_q_bwd - log_q_fwd


@dataclass(frozen=True)
class TorchSegmentRunner:
    """Runs ``num_draws`` draws of all chains; see the module docstring. Same fields as
    :class:`slt_ppl.sampling.loop.SegmentRunner`, so
    :func:`slt_ppl.sampling.stepsize.tune_step_size`
    drives it unchanged."""

    posterior: TorchLocalPosterior
    kernel: TorchKernel
    batch_size: int
    thin: int
    diag_every: int
    keep_draws: bool
    shared_batches: bool
    explode: float
    _fns: dict[str, Callable] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        post = self.posterior
        vg_one = torch.func.grad_and_value(post.potential, has_aux=True)
        self._fns["shared"] = torch.func.vmap(vg_one, in_dims=(0, None))
        self._fns["indep"] = torch.func.vmap(vg_one, in_dims=(0, 0))
        self._fns["center_indep"] = torch.func.vmap(post.loss_fn, in_dims=(None, 0))

    def batch(self, gen: torch.Generator, num_chains: int) -> tuple[Mapping[str, Tensor], bool]:
        """A minibatch (indices drawn with replacement on the device) and whether it is per
        chain."""
        post = self.posterior
        if self.kernel.full_batch or self.batch_size >= post.n:
            return post.data, False
        shape = (self.batch_size,) if self.shared_batches else (num_chains, self.batch_size)
        idx = torch.randint(0, post.n, shape, generator=gen, device=post.device)
        return {k: v[idx] for k, v in post.data.items()}, not self.shared_batches

    def value_and_grad(self, batch: Mapping[str, Tensor], per_chain: bool) -> Callable:
        """W (C, d) → (U_B, L_B, ∇U_B) of every chain on ``batch``."""
        fn = self._fns["indep" if per_chain else "shared"]

        def vg(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            grad, (potential, loss) = fn(w, batch)
            return potential, loss, grad

        return vg

    def init(self, gen: torch.Generator, positions: Tensor) -> TorchChainState:
        """Initial states of all chains (positions: (C, d))."""
        vg = self.value_and_grad(self.posterior.data, False)
        with torch.no_grad():
            ks = self.kernel.init(gen, positions.clone(), vg)
        diverged = torch.full((positions.shape[0],), -1, dtype=torch.int64, device=positions.device)
        return TorchChainState(ks, diverged)

    def _guarded_step(
        self, state: TorchChainState, gen: torch.Generator, vg: Callable, step_size: float, t: int
    ) -> tuple[TorchChainState, StepInfo, Tensor]:
        new_ks, info = self.kernel.step(gen, state.kernel_state, vg, step_size)
        healthy = state.diverged_at < 0
        ok = torch.isfinite(info.potential) & torch.isfinite(new_ks.position).all(-1) & healthy
        kernel_state = select(ok, new_ks, state.kernel_state)
        diverged_at = torch.where(~ok & healthy, t, state.diverged_at)
        return TorchChainState(kernel_state, diverged_at), info, ok

    def _draw(
        self, state: TorchChainState, gen: torch.Generator, step_size: float, i: int,
        out: dict[str, Tensor], j: int,
    ) -> TorchChainState:  # fmt: skip
        post, kernel = self.posterior, self.kernel
        t0 = i * self.thin
        w = state.kernel_state.position
        num_chains = w.shape[0]
        batch, per_chain = self.batch(gen, num_chains)
        vg = self.value_and_grad(batch, per_chain)
        new_state, info, ok = self._guarded_step(state, gen, vg, step_size, t0)
        nan = torch.full((num_chains,), float("nan"), dtype=w.dtype, device=w.device)

        if kernel.full_batch:
            loss = (info.potential - post.localization(w)) / post.nbeta
            loss_center = torch.full_like(nan, post.info["loss_center_full"])
        elif per_chain:
            loss = info.loss
            loss_center = self._fns["center_indep"](post.center, batch)
        else:
            loss = info.loss
            loss_center = post.loss_fn(post.center, batch).expand(num_chains)

        if kernel.proposal == "metropolis":
            acceptance = info.acceptance
        elif i % self.diag_every == 0:
            if kernel.score is not None:  # the kernel scores its own move (momentum kernels)
                log_a = kernel.score(
                    vg, state.kernel_state, new_state.kernel_state, info, step_size
                )
            else:  # the step is a Langevin proposal: score it as MALA would
                w_new = new_state.kernel_state.position
                u_new, _, g_new = vg(w_new)
                log_a = mala_log_acceptance(
                    w, info.potential, info.grad, w_new, u_new, g_new, step_size, info.precond
                )
            acceptance = torch.where(
                torch.isnan(log_a), 0.0, torch.exp(torch.clamp(log_a, max=0.0))
            )
        else:
            acceptance = nan

        exploded = (loss - loss_center) > self.explode * (1.0 + torch.abs(loss_center))
        bad_now = exploded & (new_state.diverged_at < 0)
        new_state = TorchChainState(
            select(bad_now, state.kernel_state, new_state.kernel_state),
            torch.where(bad_now, t0, new_state.diverged_at),
        )
        alive = ok & ~exploded
        out["loss"][:, j] = torch.where(alive, loss, nan)
        out["loss_center"][:, j] = loss_center
        out["acceptance"][:, j] = torch.where(alive, acceptance, nan)
        out["grad_norm"][:, j] = torch.where(
            alive, torch.linalg.vector_norm(info.grad, dim=-1), nan
        )
        out["distance"][:, j] = torch.where(
            alive, torch.linalg.vector_norm(w - post.center, dim=-1), nan
        )
        if self.keep_draws:
            out["position"][:, j] = torch.where(alive[:, None], w, float("nan"))
        for k in range(1, self.thin):
            b, pc = self.batch(gen, num_chains)
            new_state, _, _ = self._guarded_step(
                new_state, gen, self.value_and_grad(b, pc), step_size, t0 + k
            )
        return new_state

    def run(
        self, state: TorchChainState, gen: torch.Generator, step_size: float, start: int,
        num_draws: int,
    ) -> tuple[TorchChainState, TorchDrawRecord]:  # fmt: skip
        """Advance every chain by ``num_draws`` draws from draw index ``start``; one host copy at
        the end."""
        center = self.posterior.center
        num_chains, d = state.kernel_state.position.shape
        kw = {"dtype": center.dtype, "device": center.device}
        out = {name: torch.empty((num_chains, num_draws), **kw) for name in RECORD_FIELDS[:-1]}
        out["position"] = torch.empty((num_chains, num_draws, d if self.keep_draws else 0), **kw)
        step_size = float(step_size)
        with torch.no_grad():
            for j in range(num_draws):
                state = self._draw(state, gen, step_size, start + j, out, j)
        host = {k: v.cpu().numpy() for k, v in out.items()}
        return state, TorchDrawRecord(**host)

    def build(self, num_draws: int) -> Callable[..., tuple[TorchChainState, TorchDrawRecord]]:
        """``run(state, gen, batch_gen, step_size, start[, diag_every])`` for ``num_draws`` draws —
        the signature :func:`slt_ppl.sampling.stepsize.tune_step_size` calls (``batch_gen`` is
        unused: one generator drives chains and minibatches). The diagnostic frequency is the
        runner's own (the torch tuner builds its runner with ``diag_every=1``); a different one is
        refused rather than ignored."""

        def run(
            state: TorchChainState,
            gen: torch.Generator,
            _: Any,
            step_size: Any,
            start: Any,
            diag_every: int | None = None,
        ):
            if diag_every is not None and int(diag_every) != self.diag_every:
                raise ValueError(
                    f"this runner computes the diagnostic every {self.diag_every} draws, "
                    f"not {diag_every}"
                )
            return self.run(state, gen, float(step_size), int(start), num_draws)

        return run
