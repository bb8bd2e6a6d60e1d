"""slt_ppl: singular-learning-theory estimators for NumPyro and Pyro models.

Public names (one per idea): :func:`localize`, :func:`sample`, :func:`llc`, :func:`wbic`,
:func:`two_scale_ed`, :func:`effective_dimension`, :func:`spectral`, :func:`compare`,
:func:`exact_llc` (the exact reference of a small posterior), :func:`waic`; observables of a run
(:func:`bif`, :func:`susceptibility`, :func:`llc_decomposition`, :func:`probe_losses`,
:func:`top_pairs`); :func:`sweep` (many runs on Ray).
Heavy submodules are imported lazily so ``import slt_ppl`` stays fast and torch stays optional.
"""

from __future__ import annotations

import importlib
from typing import Any

from slt_ppl.errors import (
    CenterError,
    DataError,
    DataWarning,
    DivergenceError,
    DivergenceWarning,
    HealthWarning,
    ModelError,
    ResultError,
    SettingError,
    SLTError,
    SLTWarning,
    SuspiciousCenterWarning,
)

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "localize": ("slt_ppl.backends", "localize"),
    "LocalPosterior": ("slt_ppl.posterior", "LocalPosterior"),
    "sample": ("slt_ppl.sampling", "sample"),
    "llc": ("slt_ppl.estimators.llc", "llc"),
    "wbic": ("slt_ppl.estimators.wbic", "wbic"),
    "waic": ("slt_ppl.estimators.waic", "waic"),
    "compare": ("slt_ppl.compare", "compare"),
    "exact_llc": ("slt_ppl.reference", "exact_llc"),
    "diagnose": ("slt_ppl.diagnostics", "diagnose"),
    "two_scale_ed": ("slt_ppl.estimators.effective_dimension", "two_scale_ed"),
    "effective_dimension": ("slt_ppl.estimators.effective_dimension", "effective_dimension"),
    "fisher": ("slt_ppl.estimators.fisher", "fisher"),
    "spectral": ("slt_ppl.estimators.spectral", "spectral"),
    "bif": ("slt_ppl.estimators.observables", "bif"),
    "top_pairs": ("slt_ppl.estimators.observables", "top_pairs"),
    "susceptibility": ("slt_ppl.estimators.observables", "susceptibility"),
    "llc_decomposition": ("slt_ppl.estimators.observables", "llc_decomposition"),
    "probe_losses": ("slt_ppl.estimators.observables", "probe_losses"),
    "sweep": ("slt_ppl.sweep", "sweep"),
}

__all__ = [
    "CenterError",
    "DataError",
    "DataWarning",
    "DivergenceError",
    "DivergenceWarning",
    "HealthWarning",
    "ModelError",
    "ResultError",
    "SLTError",
    "SLTWarning",
    "SettingError",
    "SuspiciousCenterWarning",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slt_ppl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
