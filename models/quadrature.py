"""Exact finite-n LLC of a two-parameter normal-crossing regression, by one-dimensional quadrature.

The model is y = x·w1·w2^p + N(0, 1) (``models.numpyro_zoo.normal_crossing_model`` with powers
(1, p)), centered at w* = 0. The sampler targets the localized tempered posterior of
``slt_ppl.localize`` (``slt_ppl/posterior.py``): the model's prior is not part of it and L_n is the
mean negative log-likelihood of the observed site only,

    p(w) ∝ exp(−nβ·(L_n(w) − L_n(w*)) − (γ/2)·‖w‖²),
    L_n(w) = (1/n)·Σ_i [½·(y_i − x_i·u)² + ½·log 2π],

with u = w1·w2^p. So L_n depends on w only through u and

    L_n(u) − L_n(0) = (1/n)·Σ_i [½x_i²u² − x_i y_i u] = (u²·Sxx − 2u·Sxy)/(2n),

Sxx = Σ x_i², Sxy = Σ x_i y_i. Write β = nβ/n, a = β·Sxx, b = β·Sxy and c = w2^p. Then

    nβ·(L_n(w) − L_n(0)) = (a/2)·u² − b·u = (a/2)·c²·w1² − b·c·w1,

and for fixed w2 the target is Gaussian in w1 with precision P = a·c² + γ and mean μ = b·c/P.
Integrating w1 out:

    q(w2) = ∫ p(w1, w2) dw1 ∝ P^(−1/2) · exp(b²c²/(2P) − γ·w2²/2),

    g(w2) = E[(a/2)·u² − b·u | w2] = (a·c²/2)·(μ² + 1/P) − b·c·μ
          = a·c²/(2P) + (b²c²/P)·(a·c²/(2P) − 1),

and the exact LLC of the posterior the sampler targets is

    λ_exact(n, γ) = nβ·E_p[L_n(w) − L_n(w*)] = ∫ q(w2)·g(w2) dw2 / ∫ q(w2) dw2.

Both q and g depend on w2 only through c² = w2^(2p), so they are even in w2. The remaining integral
is done on w2 = e^s, s ∈ [s_lo, s_hi], with the trapezoid rule on a uniform grid in s: the
integrand in s is smooth and decays like e^s at the left end and like a Gaussian at the right end,
so the rule converges geometrically, and the log grid resolves the crossover scale
|w2| ≈ (γ/a)^(1/(2p)) (where a·c² = γ) however small it is. The grid ends are chosen so that the
dropped tails are below 1e-16 relatively (see :func:`_grid`); :func:`crossing_llc` returns the value
on ``num`` points, and the tests check it against twice the points and a brute-force 2-D grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["crossing_llc", "crossing_llc_from_data", "crossing_power"]


def crossing_power(powers: Sequence[int]) -> int:
    """The power p of a two-parameter crossing with powers (1, p) or (p, 1)."""
    powers = tuple(int(q) for q in powers)
    if len(powers) != 2 or 1 not in powers or min(powers) < 1:
        raise ValueError(f"need two powers, one of them 1, got {powers}")
    return powers[1] if powers[0] == 1 else powers[0]


def _grid(p: int, a: float, gamma: float, num: int) -> np.ndarray:
    """s-grid for w2 = e^s. The left end sits 40 units of s (a factor e^-40 ≈ 4e-18 in the
    measure e^s ds) below the crossover |w2| = (γ/a)^(1/(2p)) or below 1, whichever is smaller;
    the right end where the Gaussian factor exp(−γ·w2²/2) is below e^-45 ≈ 3e-20."""
    cross = (gamma / a) ** (1.0 / (2 * p)) if a > 0 else 1.0
    s_lo = min(math.log(cross), 0.0) - 40.0
    s_hi = math.log(math.sqrt(90.0 / gamma)) + 0.5
    return np.linspace(s_lo, s_hi, num)


def crossing_llc(
    p: int,
    sxx: float,
    sxy: float,
    n: int,
    gamma: float,
    nbeta: float | None = None,
    *,
    num: int = 4001,
) -> float:
    """λ_exact = nβ·E_p[L_n(w) − L_n(0)] for y = x·w1·w2^p + N(0, 1) at w* = 0 (module docstring).

    Args:
        p: the power of w2 (the power of w1 is 1).
        sxx, sxy: Σ x_i² and Σ x_i·y_i of the data.
        n: number of data points.
        gamma: localization strength γ > 0.
        nbeta: nβ; default n/log n (``slt_ppl.posterior.default_nbeta``).
        num: quadrature points on the log grid of w2.
    """
    if p < 1:
        raise ValueError(f"p must be a positive integer, got {p}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive (the w2 integral diverges at γ = 0), got {gamma}")
    if nbeta is None:
        nbeta = n / math.log(n)
    beta = nbeta / n
    a, b = beta * float(sxx), beta * float(sxy)
    s = _grid(p, a, gamma, num)
    w2 = np.exp(s)
    c2 = np.exp(2 * p * s)
    prec = a * c2 + gamma
    # log of q(w2)·(dw2/ds), up to a constant
    logq = -0.5 * np.log(prec) + b * b * c2 / (2 * prec) - 0.5 * gamma * w2 * w2 + s
    weight = np.exp(logq - logq.max())
    frac = a * c2 / prec
    g = 0.5 * frac + (b * b * c2 / prec) * (0.5 * frac - 1.0)
    # trapezoid on a uniform grid; the end weights are negligible (both ends are e^-40 small)
    return float(np.sum(weight * g) / np.sum(weight))


def crossing_llc_from_data(
    x: ArrayLike,
    y: ArrayLike,
    powers: Sequence[int],
    gamma: float,
    nbeta: float | None = None,
    *,
    num: int = 4001,
) -> float:
    """:func:`crossing_llc` with Sxx, Sxy and n taken from the data (computed in float64)."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
    return crossing_llc(
        crossing_power(powers), float(x @ x), float(x @ y), x.size, gamma, nbeta, num=num
    )
