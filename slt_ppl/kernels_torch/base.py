"""The torch kernel contract: the JAX contract (``slt_ppl.kernels.base``) batched over chains.

    state = kernel.init(gen, positions, value_and_grad)
    state, info = kernel.step(gen, state, value_and_grad, step_size)

``positions`` is a (C, d) tensor, one row per chain; ``value_and_grad(W) -> (U, L, ∇U)``
evaluates the
potential U_B, the loss L_B and the gradient of every chain at once (shapes (C,), (C,), (C, d); the
sampler builds it with ``torch.func.vmap`` over ``torch.func.grad``); ``gen`` is the run's
``torch.Generator``. States are NamedTuples of tensors whose leading axis is the chain, so the
sampler
can freeze diverged chains with one ``torch.where`` per field.

Step-size convention as in JAX: ε is the Langevin step, w ← w − (ε/2)∇U + √ε·ξ; momentum kernels use
h = √ε. Torch draws differ from JAX draws (different generators); only the statistics agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

Tensor = torch.Tensor
ValueAndGrad = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


class StepInfo(NamedTuple):
    """About the pre-step positions (per chain): loss L_B (NaN for full-batch kernels), potential
    U_B,
    grad ∇U_B, acceptance (Metropolis probability for MALA, NaN for SG kernels), precond G
    (ones)."""

    loss: Tensor
    potential: Tensor
    grad: Tensor
    acceptance: Tensor
    precond: Tensor


class TorchKernel(NamedTuple):
    """A batched torch sampling kernel; ``proposal``, ``full_batch`` and ``score`` as in
    ``kernels.base.Kernel`` (``score(value_and_grad, state, new_state, info, step_size)`` returns
    the per-chain log acceptance, shape (C,))."""

    name: str
    init: Callable[[torch.Generator, Tensor, ValueAndGrad], Any]
    step: Callable[[torch.Generator, Any, ValueAndGrad, float], tuple[Any, StepInfo]]
    proposal: str
    full_batch: bool
    params: dict[str, Any]
    score: Callable[[ValueAndGrad, Any, Any, StepInfo, float], Tensor] | None = None


def normal(gen: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal noise shaped like ``like`` from ``gen``, on ``like``'s device."""
    return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


def nan_like(x: Tensor) -> Tensor:
    """A NaN per chain (shape (C,)) for the chains of ``x`` (C, d)."""
    return torch.full(x.shape[:1], float("nan"), dtype=x.dtype, device=x.device)
