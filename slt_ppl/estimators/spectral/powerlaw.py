"""Power-law fit of the ESD tail (Clauset, Shalizi & Newman, SIAM Review 2009).

For ascending eigenvalues ``x_0 ≤ … ≤ x_{n-1}`` every ``x_i`` except the largest is a candidate
``xmin``; its tail has ``k = n − i`` points and the continuous maximum-likelihood exponent is

    α_i = 1 + k / Σ_{j ≥ i} ln(x_j / x_i)                                   (CSN 2009, eq. 3.1)

and the Kolmogorov–Smirnov distance between the tail's empirical CDF and the fitted CDF
``F(x) = 1 − (x / x_i)^{1 − α_i}`` is ``D_i``. The fit keeps the candidate with the smallest
``D_i`` (CSN 2009, Sec. 3.3); ``sigma = (α − 1)/√k`` (CSN 2009, eq. 3.2).

All candidates are evaluated at once: suffix sums of ``ln x`` give every α_i, and the KS distances
come from a (candidates × points) matrix built on a strided view of ``ln x``, processed in blocks
of at most ``2**22`` entries so that memory stays bounded for very large pooled ESDs.

Two conventions:

* ``"slt_ppl"``: the KS statistic is the two-sided supremum ``max_j max(|F − (j−1)/k|, |F − j/k|)``
  (the exact KS distance for a continuous F). When the chosen tail is small (k < 20) α is
  bias-corrected: conditionally on ``xmin = x_i`` the other ``k − 1`` log-ratios are i.i.d.
  Exponential(α − 1), so ``Σ ~ Gamma(k − 1, α − 1)`` and ``α = 1 + (k − 2)/Σ`` is unbiased for α − 1
  (the ``(k − 2)/k`` correction of the MLE).
* ``"weightwatcher"`` reproduces WeightWatcher 0.7.7: one-sided empirical CDF ``j/k``
  (j = 0..k−1), candidates with α ≤ 1 get D = 1, and for fewer than 20 points it switches to its
  small-n fit: ``α = 1 + (k − 1)/Σ`` and tails shorter than 8 points get D = 1. (Its small-n code
  ranks candidates by ``J = D − 0.868/√k``, but the caller then re-selects by the smallest D, which
  is what 0.7.7 reports and what we reproduce.)

``fit_truncated_power_law`` fits ``p(x) ∝ x^{−α} e^{−λx}`` on the tail above the power-law ``xmin``
by maximum likelihood with scipy (the normalising integral by quadrature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SMALL_K = 20
WW_SMALL_K_MIN = 8
_BLOCK = 2**22


@dataclass(frozen=True)
class PowerLawFit:
    """Result of a power-law (or truncated power-law) fit of one ESD tail."""

    alpha: float
    D: float
    sigma: float
    xmin: float
    xmax: float
    num_tail: int
    xmins: np.ndarray  # every candidate xmin
    alphas: np.ndarray  # α for every candidate
    Ds: np.ndarray  # KS distance for every candidate
    Lambda: float = float("nan")  # truncation rate of a TPL fit
    status: str = "success"

    @property
    def ok(self) -> bool:
        """Whether the fit succeeded (``status == "success"``)."""
        return self.status == "success"


def _failed(x: np.ndarray, status: str) -> PowerLawFit:
    nan = float("nan")
    empty = np.empty(0)
    xmax = float(x[-1]) if x.size else nan
    return PowerLawFit(nan, nan, nan, nan, xmax, 0, empty, empty, empty, status=status)


def candidate_alphas(x: np.ndarray, correction: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """α for every candidate xmin of ascending ``x``: ``1 + (k − correction)/Σ``; returns (α, k)."""
    n = x.size
    logx = np.log(x)
    suffix = np.cumsum(logx[::-1])[::-1]
    k = np.arange(n, 1, -1, dtype=np.float64)  # tail sizes n .. 2 for candidates 0 .. n-2
    s = suffix[:-1] - k * logx[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + (k - correction) / s
    alphas[~(s > 0)] = np.nan
    return alphas, k


def ks_distances(x: np.ndarray, alphas: np.ndarray, *, two_sided: bool) -> np.ndarray:
    """KS distance of every candidate's tail against ``1 − (x/xmin)^{1−α}``, all at once.

    Row i of a strided (no-copy) window holds ``ln x_{i+t}``, t = 0..n−1, padded with +∞ beyond the
    data; there the fitted CDF is 1 and the empirical CDF (clipped at 1) is 1, so padding adds 0.
    """
    n = x.size
    m = alphas.size
    logx = np.log(x)
    window = sliding_window_view(np.concatenate([logx, np.full(n, np.inf)]), n)
    t = np.arange(n, dtype=np.float64)
    out = np.empty(m)
    start = 0
    while start < m:
        width = n - start
        stop = min(m, start + max(1, _BLOCK // width))
        k = (n - np.arange(start, stop, dtype=np.float64))[:, None]
        with np.errstate(invalid="ignore", over="ignore"):
            lr = window[start:stop, :width] - logx[start:stop, None]
            lr *= (1.0 - alphas[start:stop])[:, None]
            cdf = -np.expm1(lr, out=lr)
            dev = np.abs(cdf - np.minimum(t[:width] / k, 1.0))
            if two_sided:
                dev = np.maximum(dev, np.abs(cdf - np.minimum((t[:width] + 1.0) / k, 1.0)))
        out[start:stop] = dev.max(axis=1)
        start = stop
    out[~np.isfinite(alphas)] = np.inf
    return out


def fit_power_law(
    evals: np.ndarray, *, convention: str = "slt_ppl", threshold: float = 0.0
) -> PowerLawFit:
    """Fit a power law to the eigenvalues above ``threshold`` (see the module docstring)."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[np.isfinite(x) & (x > threshold)]
    if x.size < 2:
        return _failed(x, "failed: fewer than 2 eigenvalues above the zero threshold")
    ww = convention == "weightwatcher"
    if ww and x.size < SMALL_K:
        return _fit_ww_small(x)
    alphas, k = candidate_alphas(x)
    if ww:
        valid = np.isfinite(alphas) & (alphas > 1)
        Ds = np.ones_like(alphas)
        if valid.any():
            Ds[valid] = ks_distances(x, np.where(valid, alphas, np.nan), two_sided=False)[valid]
    else:
        Ds = ks_distances(x, alphas, two_sided=True)
    if not np.isfinite(Ds).any():
        return _failed(x, "failed: all eigenvalues tie")
    best = int(np.argmin(Ds))
    alpha = float(alphas[best])
    num_tail = int(k[best])
    if not ww and num_tail < SMALL_K:
        if num_tail < 3:
            return _failed(x, "failed: best tail has fewer than 3 points")
        alpha = float(candidate_alphas(x[best:], correction=2)[0][0])
    sigma = (alpha - 1.0) / np.sqrt(num_tail)
    return PowerLawFit(
        alpha, float(Ds[best]), float(sigma), float(x[best]), float(x[-1]), num_tail,
        x[:-1], alphas, Ds,
    )  # fmt: skip


def _fit_ww_small(x: np.ndarray) -> PowerLawFit:
    """WeightWatcher 0.7.7's small-n fit (fewer than 20 eigenvalues)."""
    alphas_bc, k = candidate_alphas(x, correction=1)
    keep = (k >= WW_SMALL_K_MIN) & np.isfinite(alphas_bc) & (alphas_bc > 1)
    alphas = np.where(np.isfinite(alphas_bc) & (k >= WW_SMALL_K_MIN), alphas_bc, 0.0)
    Ds = np.ones_like(alphas)
    if keep.any():
        d = ks_distances(x, np.where(keep, alphas, np.nan), two_sided=False)
        Ds[keep] = d[keep]
    else:
        if not np.isfinite(alphas_bc[0]):
            return _failed(x, "failed: all eigenvalues tie")
        alphas[0] = alphas_bc[0]
        Ds[0] = ks_distances(x, alphas[:1].copy(), two_sided=False)[0]
    best = int(np.argmin(Ds))
    alpha = float(alphas[best])
    sigma = (alpha - 1.0) / np.sqrt(k[best])
    return PowerLawFit(
        alpha, float(Ds[best]), float(sigma), float(x[best]), float(x[-1]), int(k[best]),
        x[:-1], alphas, Ds,
    )  # fmt: skip


def _log_norm_integral(alpha: float, c: float) -> float:
    """ln ∫_1^∞ u^{−α} e^{−c u} du, by quadrature in t = ln u."""
    from scipy import integrate

    def f(t: float) -> float:
        return np.exp((1.0 - alpha) * t - c * np.expm1(t))

    with np.errstate(over="ignore"):
        val, _ = integrate.quad(f, 0.0, np.inf, limit=200)
    return float(np.log(val) - c) if val > 0 else float("inf")


def fit_truncated_power_law(evals: np.ndarray, pl: PowerLawFit) -> PowerLawFit:
    """Truncated power law ``p(x) ∝ x^{−α} e^{−λ x}`` on the tail above ``pl.xmin`` (MLE, scipy).

    The negative log-likelihood is ``Σ [α ln(x/xmin) + λ x] + k ln Z`` with
    ``Z = xmin ∫_1^∞ u^{−α} e^{−λ xmin u} du``; α and ``ln(λ·xmin)`` are optimised with L-BFGS-B.
    D is the KS distance against the TPL CDF, integrated numerically on a log grid.
    """
    from scipy import integrate, optimize

    if not pl.ok:
        return pl
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[np.isfinite(x) & (x >= pl.xmin)]
    xmin = pl.xmin
    k = x.size
    u = x / xmin
    s_log, s_u = float(np.log(u).sum()), float(u.sum())

    def nll(theta: np.ndarray) -> float:
        alpha, nu = float(theta[0]), float(theta[1])
        c = np.exp(nu)
        ln_z = _log_norm_integral(alpha, c)  # ln ∫_1^∞ u^-α e^{-c u} du
        if not np.isfinite(ln_z):
            return 1e300
        return alpha * s_log + c * s_u + k * ln_z

    start = np.array([max(pl.alpha, 1.05), np.log(1e-3)])
    res = optimize.minimize(nll, start, method="L-BFGS-B", bounds=[(1e-3, 20.0), (-20.0, 5.0)])
    alpha, c = float(res.x[0]), float(np.exp(res.x[1]))
    # CDF on the tail: integrate the density in t = ln u on a fine grid
    t_data = np.log(u)
    grid = np.linspace(0.0, max(t_data[-1], 1e-12), 4096)
    dens = np.exp((1.0 - alpha) * grid - c * np.expm1(grid))
    cum = integrate.cumulative_trapezoid(dens, grid, initial=0.0)
    total = np.exp(_log_norm_integral(alpha, c) + c)
    cdf = np.interp(t_data, grid, cum) / total
    j = np.arange(k)
    D = float(np.max(np.maximum(np.abs(cdf - j / k), np.abs(cdf - (j + 1) / k))))
    status = "success" if res.success else f"failed: TPL optimiser: {res.message}"
    return PowerLawFit(
        alpha, D, float((alpha - 1.0) / np.sqrt(k)), xmin, float(x[-1]), k,
        pl.xmins, pl.alphas, pl.Ds, Lambda=c / xmin, status=status,
    )  # fmt: skip
