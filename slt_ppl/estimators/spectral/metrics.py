"""Per-layer heavy-tailed metrics (Martin & Mahoney, JMLR 2021; Nat. Commun. 2021).

With λ the layer's eigenvalues (all of them, numerical zeros included, for the norm metrics):

* ``alpha``               power-law exponent of the ESD tail (see :mod:`.powerlaw`)
* ``alpha_weighted``      α̂ = α · log10 λmax
* ``log_spectral_norm``   log10 λmax  (= log10 ‖W‖₂², divided by N in the slt_ppl convention)
* ``log_norm``            log10 Σλ    (= log10 ‖W‖_F², ditto)
* ``stable_rank``         Σλ / λmax
* ``log_alpha_norm``      log10 Σ λ^α (Schatten α-norm to the power α)
* ``D``, ``sigma``, ``xmin``, ``xmax``, ``num_tail``: the power-law fit
* ``mp_sigma2``, ``mp_lambda_plus``, ``mp_threshold``, ``num_spikes``, ``mp_softrank``, ``mp_D``:
  the Marchenko–Pastur bulk fit (see :mod:`.marchenko_pastur`)
* ``zero_threshold``: eigenvalues at or below it are numerical zeros, left out of the fit
* ``warning``: comma-separated labels: ``"failed fit"``, ``"over-trained"`` (α < 2),
  ``"under-trained"`` (α > 6), ``"random-like"`` (no spike above the Tracy–Widom margin and the
  ESD within KS distance ``0.02 + 3/M`` of the fitted MP law; finite-size deviations of a Gaussian
  matrix from MP shrink like 1/M, and this bound sits above the largest ``mp_D`` of 20 Gaussian
  matrices for each of M = 10, 20, 32, 64, 100, 150).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slt_ppl.estimators.spectral.marchenko_pastur import fit_mp
from slt_ppl.estimators.spectral.powerlaw import (
    PowerLawFit,
    fit_power_law,
    fit_truncated_power_law,
)

OVER_TRAINED = 2.0
UNDER_TRAINED = 6.0


def random_like_bound(m: int) -> float:
    """Largest MP KS distance still called random-like for slices with M columns."""
    return 0.02 + 3.0 / m


WW_EVALS_THRESH = 1e-5

FLOAT_METRICS = (
    "alpha",
    "alpha_weighted",
    "log_spectral_norm",
    "log_norm",
    "stable_rank",
    "log_alpha_norm",
    "D",
    "sigma",
    "xmin",
    "xmax",
    "Lambda",
    "mp_sigma2",
    "mp_lambda_plus",
    "mp_threshold",
    "mp_softrank",
    "mp_D",
    "zero_threshold",
)
INT_METRICS = ("num_evals", "num_nonzero", "num_tail", "num_spikes")


def zero_threshold(evals: np.ndarray, m: int, eps: float, convention: str) -> float:
    """Eigenvalues at or below this are numerical zeros and never enter the power-law fit.

    WeightWatcher: the absolute 1e-5. slt_ppl: the rank tolerance of ``numpy.linalg.matrix_rank``
    for a Hermitian matrix, ``λmax · M · eps`` (eps of the dtype the decomposition ran in).
    """
    if convention == "weightwatcher":
        return WW_EVALS_THRESH
    return float(np.nanmax(evals)) * m * eps


def fit(evals: np.ndarray, *, fit_kind: str, convention: str, threshold: float) -> PowerLawFit:
    """Power-law (``"PL"``) or truncated power-law (``"TPL"``) fit of one ESD."""
    pl = fit_power_law(evals, convention=convention, threshold=threshold)
    if fit_kind == "TPL":
        return fit_truncated_power_law(evals[evals > threshold], pl)
    return pl


def layer_metrics(
    evals: np.ndarray,
    *,
    n: int,
    m: int,
    scale: float,
    eps: float,
    convention: str,
    fit_kind: str,
) -> dict[str, Any]:
    """All metrics of one layer (one draw) from its ascending eigenvalues."""
    out: dict[str, Any] = dict.fromkeys(FLOAT_METRICS, np.nan)
    out.update(dict.fromkeys(INT_METRICS, 0))
    out["num_evals"] = int(evals.size)
    if not np.all(np.isfinite(evals)):
        out["warning"] = "failed fit,non-finite weights"
        return out
    lam_max = float(evals[-1])
    total = float(evals.sum())
    threshold = zero_threshold(evals, m, eps, convention)
    out["zero_threshold"] = threshold
    out["num_nonzero"] = int(np.sum(evals > threshold))
    if lam_max <= 0:
        out["warning"] = "failed fit,all-zero weights"
        return out
    out["log_spectral_norm"] = np.log10(lam_max)
    out["log_norm"] = np.log10(total)
    out["stable_rank"] = total / lam_max
    res = fit(evals, fit_kind=fit_kind, convention=convention, threshold=threshold)
    labels = []
    if res.ok:
        a = res.alpha
        out.update(
            alpha=a, D=res.D, sigma=res.sigma, xmin=res.xmin, xmax=res.xmax, Lambda=res.Lambda
        )
        out["num_tail"] = res.num_tail
        out["alpha_weighted"] = a * np.log10(lam_max)
        pos = evals[evals > 0]
        log_terms = a * np.log(pos)
        top = log_terms.max()
        out["log_alpha_norm"] = (top + np.log(np.exp(log_terms - top).sum())) / np.log(10)
        if a < OVER_TRAINED:
            labels.append("over-trained")
        elif a > UNDER_TRAINED:
            labels.append("under-trained")
    else:
        labels.append("failed fit")
    mp = fit_mp(evals, n, m, scale)
    out.update(
        mp_sigma2=mp.sigma2,
        mp_lambda_plus=mp.lambda_plus,
        mp_threshold=mp.tw_threshold,
        mp_softrank=mp.softrank,
        mp_D=mp.D,
    )
    out["num_spikes"] = mp.num_spikes
    if mp.num_spikes == 0 and mp.D <= random_like_bound(m):
        labels.append("random-like")
    out["warning"] = ",".join(labels)
    out["_fit"] = res
    return out
