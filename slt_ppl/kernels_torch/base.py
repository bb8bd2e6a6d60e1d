"""The torch kernel contract: the JAX contract (``slt_ppl.kernels.base``) batched over chains.

    state = kernel.init(gen, positions, value_and_grad)
    state, info = kernel.step(gen, state, value_and_grad, step_size)

``positions`` is a (C, d) tensor, one row per chain; ``value_and_grad(W) -> (U, L, ∇U)`` evaluates
the potential U_B, the loss L_B and the gradient of every chain at once (shapes (C,), (C,), (C, d);
the sampler builds it from a ``torch.func.vmap``'d forward pass and one autograd pass,
``sampling.torch_loop.batched_grad``); ``gen`` is the source of
randomness: either a ``torch.Generator`` (one stream for all chains, as in the kernel tests) or the
sampler's :class:`ChainNoise` (one stream per chain, keyed by (chain seed, step), so chain i's
draws depend neither on the number of chains nor on segmenting). Kernels draw only through
:func:`normal` and :func:`uniform`. States are NamedTuples of tensors whose leading axis is the
chain, so the sampler can freeze diverged chains with one ``torch.where`` per field.

Step-size convention as in JAX: ε is the Langevin step, w ← w − (ε/2)∇U + √ε·ξ; momentum kernels use
h = √ε. Torch draws differ from JAX draws (different generators); only the statistics agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

Tensor = torch.Tensor
ValueAndGrad = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


class StepInfo(NamedTuple):
    """About the pre-step positions (per chain): loss L_B (NaN for full-batch kernels), potential
    U_B,
    grad ∇U_B, acceptance (Metropolis probability for MALA, NaN for SG kernels), precond G
    (ones), tamed (C,) whether the step clipped the chain's drift (``tame_drift``; None for
    kernels that never do). ``grad`` is the gradient the step moved with (tamed where clipped)."""

    loss: Tensor
    potential: Tensor
    grad: Tensor
    acceptance: Tensor
    precond: Tensor
    tamed: Tensor | None = None


class TorchKernel(NamedTuple):
    """A batched torch sampling kernel; ``proposal``, ``full_batch`` and ``score`` as in
    ``kernels.base.Kernel`` (``score(value_and_grad, state, new_state, info, step_size)`` returns
    the per-chain log acceptance, shape (C,)); ``pool`` as ``Preconditioner.pool``."""

    name: str
    init: Callable[[torch.Generator, Tensor, ValueAndGrad], Any]
    step: Callable[[torch.Generator, Any, ValueAndGrad, float], tuple[Any, StepInfo]]
    proposal: str
    full_batch: bool
    params: dict[str, Any]
    score: Callable[[ValueAndGrad, Any, Any, StepInfo, float], Tensor] | None = None
    # pool(state, groups) -> state: an adaptive preconditioner pooled over each group of chains
    # and frozen (``kernels.preconditioners.pool_chains``); None for kernels without one
    pool: Callable[[Any, Any], Any] | None = None


MASK64 = (1 << 64) - 1


def mix(*words: int) -> int:
    """A 64-bit seed from integer words (SplitMix64 finalizer over each word in turn; Steele et al.
    2014): the torch analogue of ``jax.random.fold_in``, so keys are counters, not stream states.
    Written here because torch has no counter-based generator API (its Philox is internal)."""
    h = 0x9E3779B97F4A7C15
    for word in words:
        h = (h ^ (int(word) & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & MASK64
        h ^= h >> 31
    return h


class ChainNoise:
    """One random stream per chain, reseeded from (chain seed, counter) by :meth:`at`.

    ``seeds`` holds one 64-bit seed per chain (the sampler derives them from (seed, chain index)
    with :func:`mix`); ``at(t)`` reseeds chain c's generator with mix(seeds[c], t), so the numbers a
    chain draws at step t are a function of (seed, c, t) alone, exactly like the JAX loop's
    ``fold_in(chain_key, t)``. Draws inside one step come in program order from that generator.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.seeds = [int(s) for s in seeds]
        self.gens = [torch.Generator(device=device) for _ in self.seeds]

    def at(self, counter: int) -> ChainNoise:
        """Reseed every chain's generator for ``counter`` (a step index or a tag); returns self."""
        for seed, gen in zip(self.seeds, self.gens, strict=True):
            gen.manual_seed(mix(seed, counter))
        return self

    def normal(self, like: Tensor) -> Tensor:
        """N(0, 1) noise shaped like ``like`` (leading axis = chains), row c from chain c."""
        out = torch.empty_like(like)
        for row, gen in zip(out, self.gens, strict=True):
            row.normal_(generator=gen)
        return out

    def uniform(self, like: Tensor) -> Tensor:
        """U(0, 1) numbers shaped like ``like`` (leading axis = chains), row c from chain c."""
        out = torch.empty_like(like)
        for row, gen in zip(out, self.gens, strict=True):
            row.uniform_(generator=gen)
        return out


def normal(gen: torch.Generator | ChainNoise, like: Tensor) -> Tensor:
    """Standard normal noise shaped like ``like`` from ``gen``, on ``like``'s device."""
    if isinstance(gen, ChainNoise):
        return gen.normal(like)
    return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


def uniform(gen: torch.Generator | ChainNoise, like: Tensor) -> Tensor:
    """U(0, 1) numbers shaped like ``like`` from ``gen``, on ``like``'s device."""
    if isinstance(gen, ChainNoise):
        return gen.uniform(like)
    return torch.rand(like.shape, generator=gen, device=like.device, dtype=like.dtype)


def nan_like(x: Tensor) -> Tensor:
    """A NaN per chain (shape (C,)) for the chains of ``x`` (C, d)."""
    return torch.full(x.shape[:1], float("nan"), dtype=x.dtype, device=x.device)


def tame_drift(
    grad: Tensor, step_size: float | Tensor, precond: Tensor | float, limit: float | None
) -> tuple[Tensor, Tensor | None]:
    """Per chain (the gradient the step moves with, whether a coordinate was clipped):
    g_i/max(1, √(ε·G_i)·|g_i|/(2·limit)), as ``slt_ppl.kernels.base.tame_drift`` (which says why);
    ``limit`` None: no clipping."""
    if limit is None:
        return grad, None
    spread = step_size * precond  # ε·G: a float, or a tensor (per-chain ε or a preconditioner)
    if isinstance(spread, Tensor):
        ratio = grad.abs() * (0.5 / limit) * torch.sqrt(spread)
    else:
        ratio = grad.abs() * (0.5 * math.sqrt(spread) / limit)
    return grad / torch.clamp(ratio, min=1.0), (ratio > 1.0).any(dim=-1)
