"""Heavy-tailed spectral (WeightWatcher-style) metrics of a model's weight matrices.

``spectral(weights, ...)`` returns per-layer metrics as an ``xarray.Dataset``;
``spectral.correlate(table, target, group)`` runs the within-group / pooled trend analysis.
"""

from __future__ import annotations

from slt_ppl.estimators.spectral.api import spectral
from slt_ppl.estimators.spectral.correlate import correlate

spectral.correlate = correlate  # type: ignore[attr-defined]

__all__ = ["correlate", "spectral"]
