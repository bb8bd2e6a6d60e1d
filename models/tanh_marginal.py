"""Exact LLC of the tanh network ``tanh_model`` at a = b = 0, with the output weights integrated out.

For y = Σ_k a_k·tanh(b_k·x) + N(0, σ²) (``models.numpyro_zoo.tanh_model``, flat coordinates
w = (a, b), center w* = 0) the localized tempered posterior at temperature factor f is

    p_f(a, b) ∝ exp(−f·nβ·(L_n(a, b) − L_n(0)) − (γ/2)·(‖a‖² + ‖b‖²)),
    f·nβ·(L_n(a, b) − L_n(0)) = (c/2)·(aᵀMa − 2·aᵀv),   c = f·nβ/(nσ²),

with Φ = tanh(x·bᵀ) (n × H), M = ΦᵀΦ and v = Φᵀy (expand ‖y − Φa‖² − ‖y‖²). Given b it is Gaussian
in a: precision P = c·M + γ·I, mean μ = c·P⁻¹v. Integrating a out exactly,

    log p_f(b) = −(γ/2)·‖b‖² − ½·log det P + (c²/2)·vᵀP⁻¹v + const,
    E_f[f·nβ·(L_n − L_n(0)) | b] = (c/2)·(tr(M·P⁻¹) + μᵀMμ − 2·μᵀv),

and λ_f = E_{p_f(b)}[E_f[· | b]] (Lau et al. 2023, arXiv 2308.12108: λ_f = f·nβ·(E_f[L_n] − L_n(w*)))
is an H-dimensional integral over b with a smooth, bounded integrand (the crossing valleys of the
(a, b) posterior, where NUTS diverges, are gone: they were the Gaussian in a). It is computed by the
trapezoid rule on the sinh grid of ``slt_ppl.reference_grid`` (b_k = s·sinh(t_k), t uniform),
using that the integrand is even in every b_k (flip the sign of b_k and a_k) so only b ≥ 0 is
gridded, and that M and v on a product grid come from one matrix T[g, i] = tanh(b_g·x_i):
M[j, k] = (T·Tᵀ)[g_j, g_k], v[k] = (T·y)[g_k]. Cost O(G·n + G²·n + G^H·H³) for G points per axis.
The numerical error is estimated as in ``reference_grid``: the change from half the resolution.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import gammaln

EDGE_SIGMA2 = 45.0  # (γ/2)·R² at the box edge: the b-prior factor e^-45 there
INNER_SCALE = (
    1e-4  # s: finest grid scale in b (posterior features start at b ≈ √(γ/(nβ·E x²)) ≈ 1e-2)
)
CHUNK = 200_000  # grid points per batched linear-algebra call


def tanh_loss_check(posterior: Any, noise: float, *, points: int = 4, seed: int = 0) -> None:
    """Check that ``posterior`` is ``tanh_model``'s at w* = 0 with coordinates w = (a, b): its
    ``loss_fn`` must equal (1/n)·Σ (y − tanh(x·bᵀ)·a)²/(2σ²) + ½·log(2πσ²) at random points.

    Raises ValueError on a difference above 1e-5·(1 + |L|) (float32 round-off is ~1e-7).
    """
    x, y = _data(posterior)
    hidden = posterior.dim // 2
    if not np.allclose(np.asarray(posterior.center), 0.0):
        raise ValueError("tanh_exact_llc needs the center a = b = 0")
    rng = np.random.default_rng(seed)
    for _ in range(points):
        w = rng.normal(scale=0.5, size=posterior.dim).astype(np.float32)
        a, b = w[:hidden].astype(np.float64), w[hidden:].astype(np.float64)
        resid = y - np.tanh(np.outer(x, b)) @ a
        mine = np.mean(resid**2) / (2 * noise**2) + 0.5 * math.log(2 * math.pi * noise**2)
        theirs = float(posterior.loss_fn(w, posterior.data))
        if abs(mine - theirs) > 1e-5 * (1 + abs(mine)):
            raise ValueError(f"loss {theirs} of the posterior differs from the tanh loss {mine}")


def tanh_exact_llc(
    posterior: Any,
    noise: float = 1.0,
    factors: Sequence[float] = (1.0,),
    *,
    rel_tol: float = 1e-5,
    dt: float = 0.4,
    max_halvings: int = 6,
) -> dict[str, Any]:
    """λ_f of the tanh posterior at a = b = 0 for each factor f (module docstring), with a
    integrated out analytically and b by sinh-grid quadrature.

    Args:
        posterior: the ``LocalPosterior`` of ``tanh_model`` (checked by :func:`tanh_loss_check`).
        noise: the model's σ.
        factors: temperature factors f multiplying nβ.
        rel_tol: stop when every λ_f changes by less than rel_tol·|λ_f| from half the resolution.
        dt, max_halvings: initial t-spacing, and how often it may halve.

    Returns:
        dict with ``llc`` and ``error`` (arrays over factors; error = the change from half the
        resolution), ``converged``, ``dt``, ``points`` (grid points in b ≥ 0), ``box``.
    """
    tanh_loss_check(posterior, noise)
    x, y = _data(posterior)
    hidden, gamma = posterior.dim // 2, float(posterior.gamma)
    cs = [float(f) * float(posterior.nbeta) / (len(x) * noise**2) for f in factors]
    box = math.sqrt(2 * EDGE_SIGMA2 / gamma)
    coarse = None
    for _ in range(max_halvings + 1):
        t = np.arange(0.0, math.asinh(box / INNER_SCALE) + dt, dt)
        fine = _grid_values(x, y, t, cs, gamma, hidden)
        if coarse is not None:
            error = np.abs(fine - coarse)
            if np.all(error <= rel_tol * np.abs(fine)):
                return {"llc": fine, "error": error, "converged": True, "dt": dt,
                        "points": len(t) ** hidden, "box": box}  # fmt: skip
        coarse, dt = fine, dt / 2
    return {"llc": fine, "error": error, "converged": False, "dt": 2 * dt,
            "points": len(t) ** hidden, "box": box}  # fmt: skip


def _data(posterior: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(posterior.data["x"], np.float64).reshape(-1)
    y = np.asarray(posterior.data["y"], np.float64).reshape(-1)
    return x, y


def _grid_values(x: np.ndarray, y: np.ndarray, t: np.ndarray, cs: Sequence[float], gamma: float,
                 hidden: int) -> np.ndarray:  # fmt: skip
    """λ_f (one per c = f·nβ/(nσ²)) = Σ w·E / Σ w over the product grid b_k = s·sinh(t_k), t ≥ 0 (t = 0 at half weight),
    one point per unordered tuple of grid indices (weighted by its multiplicity)."""
    b = INNER_SCALE * np.sinh(t)
    log_jac = np.log(INNER_SCALE * np.cosh(t)) - 0.5 * gamma * b**2
    log_jac[0] += math.log(0.5)
    tanh = np.tanh(np.outer(b, x))  # (G, n)
    gram, proj = tanh @ tanh.T, tanh @ y
    part_all, log_mult = _sorted_indices(len(t), hidden)
    logs: list[list[np.ndarray]] = [[] for _ in cs]
    values: list[list[np.ndarray]] = [[] for _ in cs]
    for lo in range(0, len(part_all), CHUNK):
        part = part_all[lo : lo + CHUNK]  # (B, H) grid indices, sorted within a row
        m = gram[part[:, :, None], part[:, None, :]]  # (B, H, H)
        v = proj[part]  # (B, H)
        base = log_jac[part].sum(1) + log_mult[lo : lo + CHUNK]
        for k, c in enumerate(cs):
            log_w, e = _conditional(m, v, c, gamma)
            logs[k].append(log_w + base)
            values[k].append(e)
    out = []
    for k in range(len(cs)):
        log_w, e = np.concatenate(logs[k]), np.concatenate(values[k])
        w = np.exp(log_w - log_w.max())
        out.append(np.sum(w * e) / np.sum(w))
    return np.asarray(out)


def _sorted_indices(size: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Index tuples g_1 ≤ … ≤ g_H of the product grid and log of how many grid points each stands
    for, H!/Π(multiplicity!): the integrand is symmetric under permuting the hidden units."""
    combos = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations_with_replacement(range(size), hidden)),
        dtype=np.int64,
    ).reshape(-1, hidden)
    log_mult = np.full(len(combos), math.lgamma(hidden + 1))
    for value_count in _run_lengths(combos):
        log_mult -= gammaln(value_count + 1.0)
    return combos, log_mult


def _run_lengths(combos: np.ndarray) -> list[np.ndarray]:
    """For sorted rows, the length of the run each position starts (0 if it continues a run)."""
    hidden = combos.shape[1]
    out = []
    for k in range(hidden):
        starts = np.ones(len(combos), bool) if k == 0 else combos[:, k] != combos[:, k - 1]
        length = np.ones(len(combos))
        for j in range(k + 1, hidden):
            length += np.all(combos[:, k : j + 1] == combos[:, [k]], axis=1)
        out.append(np.where(starts, length, 0.0))
    return out


def _conditional(m: np.ndarray, v: np.ndarray, c: float, gamma: float
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """log ∫ da (up to a constant) and E[f·nβ·(L_n − L_n(0)) | b] for stacked M, v."""
    eye = np.eye(m.shape[-1])
    prec = c * m + gamma * eye
    _, logdet = np.linalg.slogdet(prec)
    inv = np.linalg.inv(prec)
    mu = c * np.einsum("bij,bj->bi", inv, v)
    log_w = -0.5 * logdet + 0.5 * c * np.einsum("bi,bi->b", mu, v)
    tr = np.einsum("bij,bji->b", m, inv)
    quad = np.einsum("bi,bij,bj->b", mu, m, mu)
    e = 0.5 * c * (tr + quad - 2 * np.einsum("bi,bi->b", mu, v))
    return log_w, e
