"""Abbas effective dimension, two-scale effective dimension (2sED) and its layerwise lower bound.

μ_i(θ) are the eigenvalues of the Fisher F(θ); the normalization F̂ = d·F/E_θ[tr F] (Abbas et al.
2021, arXiv 2011.00027) gives μ̂_i = c·μ_i with c = d/E_θ[tr F].

* Effective dimension (Abbas et al. 2021), κ = γn/(2π log n):
  d_{γ,n} = 2·log E_θ[√det(I + κF̂)] / log κ, with log √det(I + κF̂) = ½ Σ_i log1p(κ μ̂_i).
* 2sED (Datres, Leonardi, Figalli, Sutter 2024, arXiv 2401.09184; the form comes from a
  third-party reproduction, see docs/effective_dimension.md), a = ε^{ζ−1}:
  d_ζ(ε) = ζd + (1−ζ)·log E_θ[det(I + aF̂^{1/2})] / log a,
  with log det(I + aF̂^{1/2}) = Σ_i log1p(a √μ̂_i). Default ε = (log n / n)^{3/8}, ζ = 2/3 (the
  reproduction's choices, not verified against the paper).
* Lower 2sED (our reconstruction of the paper's layerwise bound for Markovian models): the same
  formula with log det(I + aF̂^{1/2}) replaced by Σ_l log det(I + aŜ_l^{1/2}), Ŝ_l the
  conditional (Schur complement) Fisher of layer l given the layers before it. For every θ,
  Σ_l log det(I + aŜ_l^{1/2}) ≤ log det(I + aF̂^{1/2}) (Weyl's majorant theorem: F̂ = RᵀR with R
  block upper triangular with diagonal blocks Ŝ_l^{1/2}; the eigenvalues of R are log-majorized
  by its singular values, and t ↦ log(1 + a·eᵗ) is convex and increasing). Hence lower 2sED ≤
  2sED for every set of draws, with equality for one layer. The expectation over θ splits exactly
  into layer terms, log E_θ[Π_l D_l] = Σ_l log E_{q_{<l}}[D_l] with q_{<l} ∝ Π_{m<l} D_m (the
  earlier layers enter as weights); ``layer_two_scale_ed`` reports ζ·d_l + (1−ζ)·term_l/log a per
  layer, and these sum to the lower 2sED.

Everything is in the log domain: E_θ is logsumexp − log(num_theta). Monte Carlo standard errors
come from a bootstrap over the θ draws (E_θ[tr F] is recomputed in each resample).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from scipy.special import logsumexp

from slt_ppl.errors import SettingError
from slt_ppl.estimators.fisher import fisher
from slt_ppl.estimators.fisher_spectra import FisherResult
from slt_ppl.estimators.parameter_distribution import ThetaSpec

__all__ = ["default_eps", "effective_dimension", "two_scale_ed"]

SOURCES = (
    "effective dimension: Abbas et al. 2021 (arXiv 2011.00027); 2sED: Datres, Leonardi, Figalli, "
    "Sutter 2024 (arXiv 2401.09184), form from a third-party reproduction; lower 2sED: slt_ppl "
    "reconstruction (Schur-complement layer factorization, Weyl majorant bound)"
)


def default_eps(n: np.ndarray | float) -> np.ndarray:
    """ε(n) = (log n / n)^{3/8}: the third-party reproduction's choice (not verified in the
    paper)."""
    n = np.asarray(n, dtype=np.float64)
    return (np.log(n) / n) ** 0.375


def _as_grid(values: Any, name: str) -> np.ndarray:
    grid = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise SettingError(f"{name} must be a finite number or a 1-D sequence, got {values!r}")
    return grid


def _check_n(n: Any) -> np.ndarray:
    grid = _as_grid(n, "n")
    if np.any(grid <= 1):
        raise SettingError(f"n must be > 1 (log n appears in the formulas), got {grid}")
    return grid


def _log_mean_exp(h: np.ndarray) -> np.ndarray:
    """log E_θ[exp h] over the last axis."""
    return logsumexp(h, axis=-1) - np.log(h.shape[-1])


def _logdet_sqrt(eigs: np.ndarray, c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Σ_i log1p(a·√(c·μ_i)): eigs (T, r), c (B,), a (A,) -> (B, A, T)."""
    root = np.sqrt(c[:, None, None] * eigs[None])  # (B, T, r)
    return np.log1p(a[None, :, None, None] * root[:, None]).sum(-1)


def _logdet_plain(eigs: np.ndarray, c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """½ Σ_i log1p(a·c·μ_i): eigs (T, r), c (B,), a (A,) -> (B, A, T)."""
    scaled = c[:, None, None] * eigs[None]
    return 0.5 * np.log1p(a[None, :, None, None] * scaled[:, None]).sum(-1)


def _resamples(num_theta: int, num_bootstrap: int, seed: int) -> np.ndarray:
    """Row 0: the draws themselves; rows 1..B: bootstrap resamples of the θ indices."""
    rng = np.random.default_rng(seed + 7919)
    boot = rng.integers(0, num_theta, size=(num_bootstrap, num_theta))
    return np.concatenate([np.arange(num_theta)[None], boot], axis=0)


def _normalizers(fr: FisherResult, idx: np.ndarray) -> np.ndarray:
    mean_trace = fr.trace[idx].mean(axis=1)
    if np.any(mean_trace <= 0):
        raise SettingError("E_θ[tr F] is zero: the likelihood does not depend on the parameters")
    return fr.d / mean_trace


def _estimate_and_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row 0 is the estimate; the std over the bootstrap rows is its Monte Carlo standard error."""
    se = (
        values[1:].std(axis=0, ddof=1) if values.shape[0] > 2 else np.full(values.shape[1:], np.nan)
    )
    return values[0], se


def _abbas(fr: FisherResult, n: np.ndarray, gamma: float, idx: np.ndarray, c: np.ndarray):
    kappa = gamma * n / (2.0 * np.pi * np.log(n))
    h = _logdet_plain(fr.eigenvalues, c, kappa)  # (B, N, T) but over the resampled θ below
    h = np.take_along_axis(h, idx[:, None, :], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ed = 2.0 * _log_mean_exp(h) / np.log(kappa)[None]
    ed = np.where(kappa[None] > 1.0, ed, np.nan)
    return (*_estimate_and_se(ed), kappa)


def _fisher_result(model, data, kwargs) -> FisherResult:
    if isinstance(model, FisherResult):
        return model
    if data is None:
        raise SettingError("data are required unless a FisherResult is passed")
    return fisher(model, data, **kwargs)


def _data_size(model, data, fr: FisherResult) -> int:
    if isinstance(model, FisherResult):
        raise SettingError("pass n (or eps) when the Fisher is given as a FisherResult")
    del fr
    lengths = [int(v.shape[0]) for v in data.values() if hasattr(v, "shape") and len(v.shape) >= 1]
    return max(lengths)


def _common_attrs(fr: FisherResult, num_bootstrap: int) -> dict[str, Any]:
    attrs = {
        "d": fr.d,
        "num_theta": fr.num_theta,
        "num_samples": fr.num_samples,
        "num_bootstrap": num_bootstrap,
        "mean_trace_fisher": float(fr.trace.mean()),
        "normalization": "F_hat = d * F / E_theta[tr F] (Abbas et al. 2021)",
        "sources": SOURCES,
    }
    attrs.update({f"fisher_{k}": v for k, v in fr.notes.items()})
    return attrs


def effective_dimension(
    model: Callable | FisherResult,
    data: Mapping[str, Any] | None = None,
    *,
    n: float | Sequence[float] | None = None,
    gamma: float = 1.0,
    theta: ThetaSpec = "prior",
    num_theta: int = 8,
    num_samples: int | None = None,
    num_y: int = 1,
    empirical: bool = False,
    seed: int = 0,
    backend: str | None = None,
    num_bootstrap: int = 200,
) -> xr.Dataset:
    """Abbas et al. (2021) effective dimension d_{γ,n} = 2·log E_θ[√det(I + κF̂)] / log κ.

    κ = γn/(2π log n), γ ∈ (0, 1], F̂ = d·F/E_θ[tr F]; n defaults to the number of data points
    (scalar or grid). Values with κ ≤ 1 (log κ ≤ 0) are NaN. ``model`` may be a
    :class:`FisherResult`. Returns a Dataset with ``effective_dimension`` and its bootstrap
    ``effective_dimension_se`` over n.
    """
    if not 0 < gamma <= 1:
        raise SettingError(f"gamma must be in (0, 1], got {gamma}")
    fr = _fisher_result(
        model,
        data,
        dict(
            theta=theta,
            num_theta=num_theta,
            num_samples=num_samples,
            num_y=num_y,
            empirical=empirical,
            seed=seed,
            backend=backend,
        ),
    )
    n_grid = _check_n(_data_size(model, data, fr) if n is None else n)
    idx = _resamples(fr.num_theta, num_bootstrap, seed)
    c = _normalizers(fr, idx)
    ed, se, kappa = _abbas(fr, n_grid, gamma, idx, c)
    ds = xr.Dataset(
        {"effective_dimension": ("n", ed), "effective_dimension_se": ("n", se)},
        coords={"n": n_grid, "kappa": ("n", kappa)},
    )
    ds.attrs.update(_common_attrs(fr, num_bootstrap), gamma=gamma)
    return ds


def two_scale_ed(
    model: Callable | FisherResult,
    data: Mapping[str, Any] | None = None,
    *,
    n: float | Sequence[float] | None = None,
    eps: float | Sequence[float] | None = None,
    zeta: float | Sequence[float] = 2.0 / 3.0,
    gamma: float = 1.0,
    layers: Mapping[str, Sequence[str]] | None = None,
    theta: ThetaSpec = "prior",
    num_theta: int = 8,
    num_samples: int | None = None,
    num_y: int = 1,
    empirical: bool = False,
    seed: int = 0,
    backend: str | None = None,
    num_bootstrap: int = 200,
) -> xr.Dataset:
    """Two-scale effective dimension d_ζ(ε) (Datres et al. 2024) and its layerwise lower bound.

    d_ζ(ε) = ζd + (1−ζ)·log E_θ[det(I + ε^{ζ−1}F̂^{1/2})] / log ε^{ζ−1}, ζ ∈ [0, 1), ε ∈ (0, 1),
    F̂ = d·F/E_θ[tr F]. The scale axis is ``n`` (ε = (log n/n)^{3/8}, n defaulting to the data
    size) unless ``eps`` is given (then the axis is ``eps``). Variables: ``two_scale_ed``,
    ``lower_two_scale_ed`` (≤ two_scale_ed, see the module docstring), ``layer_two_scale_ed``
    (per-layer terms of the lower bound), ``effective_dimension`` (Abbas et al. 2021 at each n,
    with ``gamma``) and bootstrap standard errors ``*_se``. ``layers`` maps layer names to latent
    sites (default: one layer per site, in model order); ``model`` may be a :class:`FisherResult`.
    """
    zeta_grid = _as_grid(zeta, "zeta")
    if np.any((zeta_grid < 0) | (zeta_grid >= 1)):
        raise SettingError(f"zeta must lie in [0, 1), got {zeta_grid}")
    if not 0 < gamma <= 1:
        raise SettingError(f"gamma must be in (0, 1], got {gamma}")
    if eps is not None:
        eps_grid = _as_grid(eps, "eps")
        if np.any((eps_grid <= 0) | (eps_grid >= 1)):
            raise SettingError(f"eps must lie in (0, 1), got {eps_grid}")
    if n is not None:
        _check_n(n)
    fr = _fisher_result(
        model,
        data,
        dict(
            theta=theta,
            num_theta=num_theta,
            num_samples=num_samples,
            num_y=num_y,
            empirical=empirical,
            seed=seed,
            backend=backend,
            layers=layers,
        ),
    )
    if eps is None:
        n_grid = _check_n(_data_size(model, data, fr) if n is None else n)
        eps_grid, scale = default_eps(n_grid), "n"
    else:
        n_grid = _check_n(n) if n is not None else None
        if n_grid is None and not isinstance(model, FisherResult):
            n_grid = _check_n(_data_size(model, data, fr))
        scale = "eps"
    idx = _resamples(fr.num_theta, num_bootstrap, seed)
    c = _normalizers(fr, idx)
    log_eps = np.log(eps_grid)
    # a = ε^{ζ−1}, grid (S, Z) flattened; log a = (ζ−1)·log ε
    log_a = (zeta_grid[None, :] - 1.0) * log_eps[:, None]
    a_flat = np.exp(log_a).ravel()

    def _mean_log(eigs: np.ndarray) -> np.ndarray:
        h = _logdet_sqrt(eigs, c, a_flat)  # (B, S·Z, T)
        return np.take_along_axis(h, idx[:, None, :], axis=-1)

    shape = (idx.shape[0], *log_a.shape)
    full = _log_mean_exp(_mean_log(fr.eigenvalues)).reshape(shape)
    weight = (1.0 - zeta_grid)[None, None, :] / log_a[None]
    sed, sed_se = _estimate_and_se(zeta_grid[None, None, :] * fr.d + weight * full)

    layer_names = list(fr.layers)
    running = np.zeros((idx.shape[0], a_flat.size, fr.num_theta))
    previous = np.zeros(shape)
    layer_vals = []
    for name in layer_names:
        running = running + _mean_log(fr.conditional_eigenvalues[name])
        current = _log_mean_exp(running).reshape(shape)
        d_l = fr.layers[name].size
        layer_vals.append(zeta_grid[None, None, :] * d_l + weight * (current - previous))
        previous = current
    layer_arr = np.stack(layer_vals, axis=1)  # (B, L, S, Z)
    lower_all = layer_arr.sum(axis=1)
    lower, lower_se = _estimate_and_se(lower_all)
    layer_est, layer_se = _estimate_and_se(layer_arr)

    dims = (scale, "zeta")
    coords: dict[str, Any] = {"zeta": zeta_grid, "layer": layer_names}
    if scale == "n":
        coords.update(n=n_grid, eps=("n", eps_grid))
    else:
        coords.update(eps=eps_grid)
    ds = xr.Dataset(
        {
            "two_scale_ed": (dims, sed),
            "two_scale_ed_se": (dims, sed_se),
            "lower_two_scale_ed": (dims, lower),
            "lower_two_scale_ed_se": (dims, lower_se),
            "layer_two_scale_ed": (("layer", *dims), layer_est),
            "layer_two_scale_ed_se": (("layer", *dims), layer_se),
            "layer_size": ("layer", np.array([fr.layers[k].size for k in layer_names])),
        },
        coords=coords,
    )
    if n_grid is not None:
        ed, ed_se, kappa = _abbas(fr, n_grid, gamma, idx, c)
        ed_dim = "n" if scale == "n" else "n_data"
        if scale != "n":
            ds = ds.assign_coords(n_data=n_grid)
        ds["effective_dimension"] = (ed_dim, ed)
        ds["effective_dimension_se"] = (ed_dim, ed_se)
        ds = ds.assign_coords(kappa=(ed_dim, kappa))
    ds.attrs.update(
        _common_attrs(fr, num_bootstrap),
        gamma=gamma,
        eps_rule="(log n / n)^(3/8) (third-party reproduction, unverified)"
        if eps is None
        else "given",
        lower_bound=(
            "sum over layers of log det(I + a S_l^(1/2)), S_l = Schur complement of layer l given "
            "earlier layers; <= log det(I + a F^(1/2)) by Weyl's majorant theorem"
        ),
    )
    return ds
