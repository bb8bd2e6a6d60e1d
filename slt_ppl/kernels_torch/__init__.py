"""Torch sampling kernels, batched over chains, with the names and semantics of
``slt_ppl.kernels``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slt_ppl.kernels import build_named
from slt_ppl.kernels_torch.base import StepInfo, TorchKernel
from slt_ppl.kernels_torch.mala import mala
from slt_ppl.kernels_torch.momentum import sghmc, sgnht
from slt_ppl.kernels_torch.sgld import rmsprop_sgld, sgld

SG_KERNELS: dict[str, Callable[..., TorchKernel]] = {
    "sgld": sgld,
    "rmsprop_sgld": rmsprop_sgld,
    "sghmc": sghmc,
    "sgnht": sgnht,
}
FULL_BATCH_KERNELS: dict[str, Callable[..., TorchKernel]] = {"mala": mala}
PYRO_KERNELS = ("hmc", "nuts")
KERNEL_NAMES = (*SG_KERNELS, *FULL_BATCH_KERNELS, *PYRO_KERNELS)


def get_kernel(kernel: str | TorchKernel, **options: Any) -> TorchKernel:
    """A :class:`TorchKernel` from its name (``options`` go to the builder) or a ready kernel."""
    if isinstance(kernel, TorchKernel):
        return kernel
    return build_named(kernel, {**SG_KERNELS, **FULL_BATCH_KERNELS}, KERNEL_NAMES, options)


__all__ = [
    "KERNEL_NAMES",
    "StepInfo",
    "TorchKernel",
    "get_kernel",
    "mala",
    "rmsprop_sgld",
    "sghmc",
    "sgld",
    "sgnht",
]
