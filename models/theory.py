"""Closed-form (global) learning coefficients used as ground truth (reference section 4)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction


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
