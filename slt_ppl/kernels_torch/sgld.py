"""SGLD (Welling & Teh 2011) and RMSprop-preconditioned SGLD (Li et al. 2016), batched over chains:

    w ← w − (ε/2)·G⊙∇U_B(w) + √(ε·G)⊙ξ,   ξ ~ N(0, I)

G = 1 is plain SGLD. RMSprop (as in ``slt_ppl.kernels.preconditioners.rmsprop``):
V ← αV + (1−α)g², V̂ = V/(1 − α^t) (bias correction, our addition), G = 1/(√V̂ + δ); the Γ correction
term of pSGLD is dropped, as Li et al. do in practice. With ``freeze_after`` = k, V stops changing
after k updates (``slt_ppl.sample`` sets k = burn-in), so the chain is then exact preconditioned SGLD.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from slt_ppl.kernels.base import TAME_LIMIT, check_tame
from slt_ppl.kernels.preconditioners import POOL_TRIM_FRACTION
from slt_ppl.kernels_torch.base import (
    StepInfo,
    Tensor,
    TorchKernel,
    ValueAndGrad,
    nan_like,
    normal,
    tame_drift,
)


class SGLDState(NamedTuple):
    """Batched (RMSprop-)SGLD state (C chains): position, RMSprop second moment and count."""

    position: Tensor  # (C, d)
    second_moment: Tensor  # (C, d) RMSprop V ((C, 0) for plain SGLD)
    count: Tensor  # (C,) RMSprop step count


def sgld(
    alpha: float | None = None,
    delta: float = 1e-5,
    freeze_after: int | None = None,
    tame: float | None = TAME_LIMIT,
) -> TorchKernel:
    """Plain SGLD (``alpha=None``) or RMSprop-preconditioned SGLD with decay ``alpha``; the drift
    clipped at ``tame`` noise standard deviations (``slt_ppl.kernels.base.tame_drift``)."""
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ValueError(f"rmsprop alpha must lie in (0, 1), got {alpha}")
    check_tame(tame)

    def init(gen: torch.Generator, position: Tensor, vg: ValueAndGrad) -> SGLDState:
        # plain SGLD keeps no second moment: a (C, 0) tensor, so freezing a chain costs nothing
        width = position.shape[1] if alpha is not None else 0
        zeros = position.new_zeros((position.shape[0], width))
        return SGLDState(position, zeros, torch.zeros_like(position[:, 0]))

    def step(
        gen: torch.Generator, state: SGLDState, vg: ValueAndGrad, step_size: float
    ) -> tuple[SGLDState, StepInfo]:
        potential, loss, grad = vg(state.position)
        v, count = state.second_moment, state.count
        noise = normal(gen, grad)
        if alpha is None:  # plain SGLD: G = 1, no preconditioner arithmetic on the hot path
            g_diag = torch.ones_like(grad)
            grad, tamed = tame_drift(grad, step_size, 1.0, tame)
            if isinstance(step_size, Tensor):  # per-chain ε, shape (C, 1) (temperatures)
                position = state.position - 0.5 * step_size * grad + step_size**0.5 * noise
            else:
                position = torch.add(state.position, grad, alpha=-0.5 * step_size)
                position.add_(noise, alpha=step_size**0.5)
        else:
            live = (
                (count < freeze_after)
                if freeze_after is not None
                else torch.ones_like(count, dtype=torch.bool)
            )
            v = torch.where(live[:, None], alpha * v + (1.0 - alpha) * grad**2, v)
            count = torch.where(live, count + 1.0, count)
            # V̂ = V/(1 − α^t), 0 before the first update (freeze_after = 0, i.e. no burn-in:
            # G = 1/δ as in the JAX ``preconditioners._rms_diagonal``; 0/0 made every chain NaN)
            seen = count[:, None] > 0
            v_hat = torch.where(
                seen, v / torch.where(seen, 1.0 - alpha ** count[:, None], 1.0), 0.0
            )
            g_diag = 1.0 / (torch.sqrt(v_hat) + delta)
            grad, tamed = tame_drift(grad, step_size, g_diag, tame)
            position = (
                state.position
                - 0.5 * step_size * g_diag * grad
                + torch.sqrt(step_size * g_diag) * noise
            )
        info = StepInfo(loss, potential, grad, nan_like(grad), g_diag, tamed)
        return SGLDState(position, v, count), info

    if alpha is None:
        params = {"preconditioner": "identity", "tame": tame}
        return TorchKernel("sgld", init, step, "langevin", False, params)
    params = {
        "preconditioner": "rmsprop",
        "alpha": alpha,
        "delta": delta,
        "freeze_after": -1 if freeze_after is None else int(freeze_after),
        "tame": tame,
    }
    pool = None if freeze_after is None else _rmsprop_pool(alpha, freeze_after)
    return TorchKernel("rmsprop_sgld", init, step, "langevin", False, params, pool=pool)


def _rmsprop_pool(alpha: float, freeze_after: int) -> Callable[[SGLDState, Any], SGLDState]:
    """RMSprop's pooling, as the JAX ``kernels.preconditioners.rmsprop`` ``pool``: every chain's V̂
    becomes its group's mean V̂ over the chains, ⌊C/8⌋ chains trimmed at each end of each coordinate
    when the group has ≥ 8 (``POOL_TRIM_FRACTION``), and is frozen: the count is raised to
    ``freeze_after`` (V stops at count ≥ freeze_after) and V rescaled so that V̂ = V/(1 − α^t) is the
    pooled value at the new count."""

    def pool(state: SGLDState, groups: Any) -> SGLDState:
        v, count = state.second_moment, state.count
        seen = count[:, None] > 0
        v_hat = torch.where(seen, v / torch.where(seen, 1.0 - alpha ** count[:, None], 1.0), 0.0)
        labels = np.asarray(groups)
        pooled = torch.empty_like(v_hat)
        for label in np.unique(labels):
            member = torch.as_tensor(labels == label, device=v_hat.device)
            chains = v_hat[member]
            k = int(POOL_TRIM_FRACTION * chains.shape[0])
            trimmed = torch.sort(chains, dim=0).values[k : chains.shape[0] - k]
            pooled[member] = trimmed.mean(dim=0)
        frozen = torch.clamp(count, min=float(max(1, freeze_after)))
        return SGLDState(state.position, pooled * (1.0 - alpha ** frozen[:, None]), frozen)

    return pool


def rmsprop_sgld(
    alpha: float = 0.99,
    delta: float = 1e-5,
    freeze_after: int | None = None,
    tame: float | None = TAME_LIMIT,
) -> TorchKernel:
    """pSGLD with the RMSprop preconditioner (Li et al. 2016)."""
    return sgld(alpha, delta, freeze_after, tame)
