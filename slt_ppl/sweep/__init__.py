"""Sweeps on Ray: λ̂ (and WBIC, two-temperature λ̂) at every checkpoint of a training run times a
grid of ε, γ, nβ, temperatures, seeds, kernels, chains and weight restrictions, one Ray task each,
resumable, merged into one Zarr-backed ``xr.Dataset`` (docs/sweeps.md).

``slt_ppl.sweep(spec, out=..., address=...)`` runs a sweep; the module itself is callable so that
``import slt_ppl.sweep`` and ``slt_ppl.sweep(...)`` agree. Ray is imported only when a sweep runs.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from slt_ppl.sweep.dataset import open_sweep
from slt_ppl.sweep.plots import plot_along_training, plot_calibration, plot_sweep
from slt_ppl.sweep.runner import sweep
from slt_ppl.sweep.spec import SweepSpec, Task, expand, load_spec
from slt_ppl.sweep.task import run_task

__all__ = [
    "SweepSpec",
    "Task",
    "expand",
    "load_spec",
    "open_sweep",
    "plot_along_training",
    "plot_calibration",
    "plot_sweep",
    "run_task",
    "sweep",
]


class _CallableModule(types.ModuleType):
    """``slt_ppl.sweep`` is both this package and the function :func:`sweep`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
