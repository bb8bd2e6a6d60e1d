"""Marchenko–Pastur (MP) bulk fit of an ESD (Martin & Mahoney, JMLR 2021, Sec. 3 and 5).

For ``W`` (N × M, N ≥ M) with i.i.d. entries of variance σ², the eigenvalues of ``WᵀW/N`` follow the
MP law with ``Q = N/M ≥ 1`` on ``[σ²(1 − 1/√Q)², σ²(1 + 1/√Q)²]``, density

    ρ(x) = Q √((λ₊ − x)(x − λ₋)) / (2π σ² x).

The layer's eigenvalues are ``λ = scale · sv²`` (``scale = 1/N`` in the slt_ppl convention, 1 or 0.5
for WeightWatcher's), so σ² is fitted on ``sv²/N`` and the edge reported in the layer's units.

* σ² is fitted robustly by matching medians: ``σ² = median(sv²/N) / m_Q`` with ``m_Q`` the median of
  MP(Q, σ² = 1); a few spikes barely move a median, unlike the trace.
* Bulk edge ``λ₊ = scale·N·σ²(1 + 1/√Q)²``.
* Spikes are eigenvalues above the Tracy–Widom margin (Johnstone, Ann. Stat. 2001):
  ``scale·σ²(μ + t·s)`` with ``μ = (√(N − 1) + √M)²``,
  ``s = (√(N − 1) + √M)(1/√(N − 1) + 1/√M)^{1/3}`` and ``t = 2.0234``, the 99% quantile of TW₁.
* ``mp_softrank = λ₊ / λmax`` and ``mp_D`` is the KS distance between the ESD and the fitted MP CDF.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TW1_Q99 = 2.0234


@dataclass(frozen=True)
class MPFit:
    """Marchenko–Pastur bulk fit of one ESD."""

    sigma2: float
    lambda_plus: float
    tw_threshold: float
    num_spikes: int
    softrank: float
    D: float


@lru_cache(maxsize=256)
def _mp_cdf_grid(q: float, size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Grid (x, CDF) of MP(Q, σ²=1), integrated in θ with x = a + (b − a)(1 − cos θ)/2."""
    a = (1.0 - 1.0 / np.sqrt(q)) ** 2
    b = (1.0 + 1.0 / np.sqrt(q)) ** 2
    theta = np.linspace(0.0, np.pi, size)
    x = a + (b - a) * (1.0 - np.cos(theta)) / 2.0
    # ρ(x) dx = Q ((b − a)/2)² sin²θ / (2π x) dθ
    dens = q * ((b - a) / 2.0) ** 2 * np.sin(theta) ** 2 / (2.0 * np.pi * np.maximum(x, 1e-300))
    cum = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2.0 * np.diff(theta))])
    cum /= cum[-1]
    return x, cum


def mp_cdf(x: np.ndarray, q: float, sigma2: float) -> np.ndarray:
    """CDF of the MP law with ratio ``Q = N/M ≥ 1`` and variance ``sigma2`` at ``x``."""
    gx, gc = _mp_cdf_grid(float(q))
    return np.interp(np.asarray(x) / sigma2, gx, gc, left=0.0, right=1.0)


def mp_median(q: float) -> float:
    """Median of MP(Q, σ² = 1)."""
    gx, gc = _mp_cdf_grid(float(q))
    return float(np.interp(0.5, gc, gx))


def fit_mp(evals: np.ndarray, n: int, m: int, scale: float) -> MPFit:
    """Fit the MP bulk of ascending eigenvalues ``evals`` of a layer of N × M slices."""
    ev = np.asarray(evals, dtype=np.float64)
    q = n / m
    per_entry = ev / (scale * n)  # sv² / N
    sigma2 = float(np.median(per_entry) / mp_median(q))
    lam_max = float(ev[-1])
    lambda_plus = scale * n * sigma2 * (1.0 + 1.0 / np.sqrt(q)) ** 2
    rn, rm = np.sqrt(max(n - 1, 1)), np.sqrt(m)
    mu = (rn + rm) ** 2
    s = (rn + rm) * (1.0 / rn + 1.0 / rm) ** (1.0 / 3.0)
    tw = scale * sigma2 * (mu + TW1_Q99 * s)
    threshold = max(tw, lambda_plus)
    num_spikes = int(np.sum(ev > threshold))
    if sigma2 > 0:
        k = ev.size
        cdf = mp_cdf(per_entry, q, sigma2)
        j = np.arange(k)
        d = float(np.max(np.maximum(np.abs(cdf - j / k), np.abs(cdf - (j + 1) / k))))
    else:
        d = float("nan")
    softrank = lambda_plus / lam_max if lam_max > 0 else float("nan")
    return MPFit(sigma2, float(lambda_plus), float(threshold), num_spikes, float(softrank), d)
