"""Sampling kernels (pure ``init``/``step`` pairs) and their registry by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slt_ppl.errors import SettingError
from slt_ppl.kernels.base import Kernel, StepInfo
from slt_ppl.kernels.mala import mala
from slt_ppl.kernels.momentum import sghmc, sgnht
from slt_ppl.kernels.preconditioners import Preconditioner, diagonal, identity, rmsprop
from slt_ppl.kernels.sgld import rmsprop_sgld, sgld

SG_KERNELS: dict[str, Callable[..., Kernel]] = {
    "sgld": sgld,
    "rmsprop_sgld": rmsprop_sgld,
    "sghmc": sghmc,
    "sgnht": sgnht,
}
FULL_BATCH_KERNELS: dict[str, Callable[..., Kernel]] = {"mala": mala}
NUMPYRO_KERNELS = ("hmc", "nuts")
KERNEL_NAMES = (*SG_KERNELS, *FULL_BATCH_KERNELS, *NUMPYRO_KERNELS)


def get_kernel(kernel: str | Kernel, **options: Any) -> Kernel:
    """A :class:`Kernel` from its name (``options`` go to the builder) or a ready kernel."""
    if isinstance(kernel, Kernel):
        return kernel
    return build_named(kernel, {**SG_KERNELS, **FULL_BATCH_KERNELS}, KERNEL_NAMES, options)


def build_named(
    name: Any, builders: dict[str, Callable[..., Any]], names: tuple[str, ...], options: dict
) -> Any:
    """Look ``name`` up in ``builders`` and build it with ``options``; our own error for a bad name
    or bad options (shared by the JAX and torch registries)."""
    if name not in builders:
        raise SettingError(f"unknown kernel {name!r}; choose one of {names}")
    try:
        return builders[name](**options)
    except (TypeError, ValueError) as err:
        raise SettingError(f"bad options {options} for kernel {name!r}: {err}") from err


__all__ = [
    "KERNEL_NAMES",
    "Kernel",
    "Preconditioner",
    "StepInfo",
    "diagonal",
    "get_kernel",
    "identity",
    "mala",
    "rmsprop",
    "rmsprop_sgld",
    "sghmc",
    "sgld",
    "sgnht",
]
