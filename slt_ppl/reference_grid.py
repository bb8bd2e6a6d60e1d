"""Exact LLC of a one- or two-parameter local posterior by quadrature on an adaptive sinh grid.

The target is the localized tempered posterior of ``slt_ppl.localize`` at temperature factor f,

    p_f(w) ∝ exp(−f·E(w) − (γ/2)·‖w − w*‖²),   E(w) = nβ·(L_n(w) − L_n(w*)),

and its LLC is λ_f = f·E_{p_f}[E(w)] = (f·nβ)·(E_{p_f}[L_n(w)] − L_n(w*)) (Lau et al. 2023,
arXiv 2308.12108, at the inverse temperature f·β). One evaluation of E on a grid gives every f.

Grid. Singular posteriors live in valleys that narrow far from w*: for y = x·w1·w2^p the valley
around w1 = 0 has width ≈ 1/(√a·|w2|^p), a = nβ·Σx²/(nσ²), down to ~1e-6 where the localization
still leaves mass. A uniform grid would need ~1e5 points per axis. Instead each coordinate is
w_i = w*_i + s·sinh(t_i) with t on a uniform grid of spacing dt: the spacing in w is ≈ s·dt near w*
and ≈ |w_i − w*_i|·dt far out, a fixed *relative* resolution at every scale from s to the box edge
R (the 1-D log grid of ``models.quadrature`` generalized to two signed coordinates). In t the
integrand p(w(t))·Π s·cosh(t_i) is smooth and decays at both ends, so the trapezoid rule converges
geometrically in dt. We take s = 1e-9·R₀ (features below that are far finer than any posterior
width here, and each factor 10 in s costs only 2·log(10)/dt points per axis).

Adaptivity. (i) The box: R₀ = √(2·45/γ) puts the localization factor at e^-45 on the edge; while
the weight in the outermost shell (the last 0.25 of the t-range, |w − w*| > 0.78·R) exceeds 1e-10
of the total (for any temperature factor), R doubles (so an energy that is negative somewhere, or γ
= 0, is handled; a posterior that never decays is reported as an error). (ii) The resolution: the
value on the grid is compared with the value on every second point (spacing 2·dt, no new
evaluations); while they differ by more than the tolerance, dt halves. For a geometrically
converging rule the error of the fine value is far below that difference, so the difference is
reported as a (conservative) numerical error estimate, plus what the edge shell contributes to λ_f
(a bound on what the next shell out would add, the weights decaying outward).

Everything is evaluated in float64 (JAX's ``enable_x64`` context; torch tensors cast), so the
cancellation in L_n(w) − L_n(w*) costs nothing (in float32 it would add ~nβ·1e-7 per point).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from slt_ppl.errors import SettingError

EDGE_SIGMA2 = 45.0  # (γ/2)·R₀² at the first box edge: localization factor e^-45 ≈ 3e-20
INNER_SCALE = 1e-9  # s = INNER_SCALE·R₀, the finest scale of the grid around w*
EDGE_SHELL_T = 0.25  # width in t of the shell whose weight decides whether the box grows
EDGE_TOL = 1e-10  # allowed weight fraction in that shell
MAX_BOX_DOUBLINGS = 12


@dataclass(frozen=True)
class GridValue:
    """λ_f for every factor, the numerical error estimate, and the final grid."""

    llc: np.ndarray  # (num_factors,)
    error: np.ndarray  # (num_factors,) |fine − coarse| + the edge shell's contribution
    converged: bool
    box: float  # R
    inner_scale: float  # s
    dt: float
    points: int  # grid points of the final grid
    evaluations: int  # loss evaluations in total


def _axis(s: float, box: float, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """t-grid and u = s·sinh(t) on [−T, T], T = asinh(R/s) rounded up to a multiple of 2·dt."""
    half = math.ceil(math.asinh(box / s) / (2 * dt)) * 2
    t = dt * np.arange(-half, half + 1)
    return t, s * np.sinh(t)


def _values(
    energy: np.ndarray, log_jac: np.ndarray, dist2: np.ndarray, gamma: float, factors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """λ_f = f·Σ w_f·E / Σ w_f with log w_f = −f·E − γ/2·‖u‖² + log J, for each f; also the
    normalized weights (num_factors, *grid) for the edge check."""
    finite = np.isfinite(energy)
    e = np.where(finite, energy, 0.0)
    out, weights = [], []
    for f in factors:
        logw = np.where(finite, -f * e - 0.5 * gamma * dist2 + log_jac, -np.inf)
        w = np.exp(logw - logw.max())
        w /= w.sum()
        out.append(f * float(np.sum(w * e)))
        weights.append(w)
    return np.asarray(out), np.stack(weights)


def grid_llc(
    energy_fn: Callable[[np.ndarray], np.ndarray],
    center: np.ndarray,
    gamma: float,
    factors: Sequence[float] = (1.0,),
    *,
    rel_tol: float = 1e-4,
    abs_tol: float = 1e-6,
    dt: float = 0.1,
    max_points: int = 3_000_000,
) -> GridValue:
    """λ_f = f·E_{p_f}[E(w)] for a d ≤ 2 posterior by adaptive sinh-grid quadrature (module doc).

    Args:
        energy_fn: maps points (m, d) (float64) to E(w) = nβ·(L_n(w) − L_n(w*)), shape (m,);
            non-finite values count as zero weight (overflow far out), NaN raises.
        center: w* (d,). gamma: γ ≥ 0. factors: temperature factors f > 0.
        rel_tol, abs_tol: stop refining when |λ(dt) − λ(2dt)| ≤ max(abs_tol, rel_tol·|λ|).
        dt: the first t-spacing. max_points: stop refining (converged=False) beyond this grid size.
    """
    center = np.asarray(center, np.float64)
    d = center.size
    if d not in (1, 2):
        raise SettingError(f"grid quadrature handles d = 1 or 2 parameters, got d = {d}")
    factors = np.asarray(factors, np.float64)
    box = math.sqrt(2 * EDGE_SIGMA2 / gamma) if gamma > 0 else 10.0 * (1.0 + np.abs(center).max())
    s = INNER_SCALE * box
    evaluations, doublings = 0, 0
    while True:
        t, u = _axis(s, box, dt)
        mesh_u = np.meshgrid(*([u] * d), indexing="ij")
        mesh_t = np.meshgrid(*([t] * d), indexing="ij")
        points = np.stack([m.ravel() for m in mesh_u], axis=-1) + center
        energy = np.asarray(energy_fn(points), np.float64).reshape(mesh_u[0].shape)
        evaluations += energy.size
        if np.isnan(energy).any():
            bad = points[np.isnan(energy).ravel()][0]
            raise SettingError(f"the loss is NaN at w = {bad.tolist()} inside the quadrature box")
        log_jac = sum(np.log(s * np.cosh(m)) for m in mesh_t)
        dist2 = sum(m * m for m in mesh_u)
        llc, weights = _values(energy, log_jac, dist2, gamma, factors)
        outer = np.max([np.abs(m) for m in mesh_t], axis=0) > t[-1] - EDGE_SHELL_T
        edge = float(weights[:, outer].sum(axis=1).max())
        if edge > EDGE_TOL:
            doublings += 1
            if doublings > MAX_BOX_DOUBLINGS:
                raise SettingError(
                    f"the posterior mass does not decay: {edge:.2g} of it lies at |w − w*| ≈ "
                    f"{box:.3g} after {MAX_BOX_DOUBLINGS} doublings of the box (γ = {gamma}); "
                    "is the posterior proper? Use gamma > 0."
                )
            box *= 2.0
            continue
        coarse_idx = tuple([slice(None, None, 2)] * d)
        coarse, _ = _values(
            energy[coarse_idx], log_jac[coarse_idx], dist2[coarse_idx], gamma, factors
        )
        # what the outer shell adds to each λ_f: a bound on what a further shell would add
        e_abs = np.abs(np.where(np.isfinite(energy), energy, 0.0))[outer]
        tail = np.asarray([f * np.sum(w[outer] * e_abs) + w[outer].sum() * abs(v)
                           for f, w, v in zip(factors, weights, llc, strict=True)])  # fmt: skip
        error = np.abs(llc - coarse) + tail
        done = np.all(np.abs(llc - coarse) <= np.maximum(abs_tol, rel_tol * np.abs(llc)))
        next_points = (2 * t.size - 1) ** d
        if done or next_points > max_points:
            return GridValue(llc, error, bool(done), box, s, dt, int(energy.size), evaluations)
        dt /= 2.0
