"""Closed-form (global) learning coefficients used as ground truth (reference section 4), and the
exact finite-n LLC estimand of a linear-Gaussian model (:func:`linear_gaussian_llc`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def regular(d: int) -> Fraction:
    """Regular model with d parameters: λ = d/2 (m = 1)."""
    return Fraction(d, 2)


def normal_crossing(powers: Sequence[int]) -> Fraction:
    """Regression y = x·Π w_i^{p_i} + noise at w* = 0: K ∝ Π w_i^{2p_i}, λ = 1/(2·max p_i).

    A power 0 leaves its w_i out of K (a free direction, held only by the prior or the
    localization), which adds nothing to λ."""
    if not powers or min(powers) < 0 or max(powers) < 1:
        raise ValueError("powers must be non-negative integers, at least one positive")
    return Fraction(1, 2 * max(powers))


def reduced_rank_regression(m: int, h: int, n: int, r: int) -> Fraction:
    """y = B·A·x, input M, hidden H, output N, true rank r (Aoyagi & Watanabe 2005)."""
    if not 0 <= r <= min(m, h, n):
        raise ValueError(f"rank r = {r} must lie in [0, min(M, H, N)]")
    if n + r <= m + h and m + r <= n + h and h + r <= m + n:
        num = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
        if (m + h + n + r) % 2 == 1:
            num += 1
        return Fraction(num, 8)
    if m + h < n + r:
        return Fraction(h * m - h * r + n * r, 2)
    if n + h < m + r:
        return Fraction(h * n - h * r + m * r, 2)
    return Fraction(m * n, 2)


def deep_linear_network(widths: Sequence[int], r: int) -> tuple[Fraction, int]:
    """(λ, m) of f(x) = W_M⋯W_1·x with widths H_0 (input) … H_M (output) and true rank r
    (Aoyagi 2024; Theorem B.1 of Furman & Lau 2024, arXiv 2402.03698).

    Δ_s = H_s − r sorted ascending; Σ is the shortest prefix of length ℓ+1 (ℓ ≥ 1) with
    (C1) max_Σ Δ < min_rest Δ, (C2) S = Σ_Σ Δ ≥ ℓ·max_Σ Δ, (C3) S < ℓ·min_rest Δ
    (min over nothing = ∞).
    With a = S − (⌈S/ℓ⌉ − 1)·ℓ:
        λ = [r(H_0 + H_M) − r²]/2 + [a(ℓ − a) + S²]/(4ℓ) − (1/4)·Σ_Σ Δ²,  m = a(ℓ − a) + 1.
    """
    widths = list(widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError("need at least two positive widths")
    if not 0 <= r <= min(widths):
        raise ValueError(f"rank r = {r} must lie in [0, min(widths)]")
    deltas = sorted(h - r for h in widths)
    for size in range(2, len(deltas) + 1):
        sigma, rest = deltas[:size], deltas[size:]
        ell = size - 1
        s = sum(sigma)
        rest_min = min(rest) if rest else math.inf
        if max(sigma) < rest_min and s >= ell * max(sigma) and s < ell * rest_min:
            a = s - (math.ceil(Fraction(s, ell)) - 1) * ell
            lam = (
                Fraction(r * (widths[0] + widths[-1]) - r * r, 2)
                + Fraction(a * (ell - a) + s * s, 4 * ell)
                - Fraction(sum(x * x for x in sigma), 4)
            )
            return lam, a * (ell - a) + 1
    raise ValueError(f"no admissible prefix for widths {widths}, r = {r}")  # cannot happen


def linear_gaussian_llc(
    hessian: np.ndarray, nbeta: float, gamma: float, offset: np.ndarray | None = None
) -> float:
    """Exact E_p[nβ·(L_n(w) − L_n(w*))] for a quadratic loss L_n(w) = L_n(ŵ) + ½(w − ŵ)ᵀH(w − ŵ)
    under the localized tempered posterior p(w) ∝ exp(−nβ·L_n(w) − γ/2·‖w − w*‖²).

    The loss is exactly quadratic for linear regression with Gaussian noise (H = XᵀX/(nσ²), ŵ the
    least-squares fit). p is then Gaussian with precision A = nβH + γI and mean ŵ + γA⁻¹δ,
    δ = ``offset`` = w* − ŵ, so (Gaussian moments, derived here, not from a paper)

        E_p[nβ(L_n(w) − L_n(w*))] = ½·tr(nβH·A⁻¹) + (nβ/2)·[γ²·δᵀA⁻¹HA⁻¹δ − δᵀHδ].

    At the MLE (δ = 0, the default) this is ½·tr(nβH(nβH + γI)⁻¹), which tends to the regular
    model's λ = d/2 as γ/(nβ·h_min) → 0. At the true parameter w₀ instead, nδᵀHδ ~ χ²_d, and
    for γ → 0 the value is d/2 − β·χ²_d/2: about d/2 − χ²_d/(2 log n) at β = 1/log n.

    Computed in the eigenbasis of H (eigenvalues h_i, u = Qᵀδ):
    Σ_i ½·nβh_i/(nβh_i + γ) + (nβ/2)·h_i·u_i²·[γ²/(nβh_i + γ)² − 1].
    """
    h = np.asarray(hessian, np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"hessian must be a square matrix, got shape {h.shape}")
    if not (nbeta > 0 and gamma >= 0):
        raise ValueError(f"need nbeta > 0 and gamma >= 0, got {nbeta}, {gamma}")
    eig, q = np.linalg.eigh(0.5 * (h + h.T))
    if eig.min() < -1e-12 * max(1.0, abs(eig).max()):
        raise ValueError("the Hessian of a quadratic loss must be positive semi-definite")
    eig = np.clip(eig, 0.0, None)
    prec = nbeta * eig + gamma
    if np.any(prec <= 0):
        raise ValueError("nβH + γI is singular: a flat direction needs gamma > 0")
    value = 0.5 * np.sum(nbeta * eig / prec)
    if offset is not None:
        u = q.T @ np.asarray(offset, np.float64).reshape(-1)
        value += 0.5 * nbeta * np.sum(eig * u**2 * ((gamma / prec) ** 2 - 1.0))
    return float(value)


def linear_regression_llc(
    x: np.ndarray,
    y: np.ndarray,
    center: np.ndarray,
    nbeta: float,
    gamma: float,
    noise: float = 1.0,
) -> float:
    """:func:`linear_gaussian_llc` for y = x·w + N(0, noise²) centered at ``center``: H = xᵀx/(n·noise²),
    ŵ the least-squares fit (float64), offset = center − ŵ."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64).reshape(-1)
    w_hat = np.linalg.lstsq(x, y, rcond=None)[0]
    hessian = x.T @ x / (x.shape[0] * noise**2)
    offset = np.asarray(center, np.float64).reshape(-1) - w_hat
    return linear_gaussian_llc(hessian, nbeta, gamma, offset)
