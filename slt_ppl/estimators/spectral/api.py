"""``spectral``: heavy-tailed self-regularization metrics of every layer of a model.

Martin & Mahoney, "Implicit self-regularization in deep neural networks", JMLR 22 (2021);
"Predicting trends in the quality of state-of-the-art neural networks without access to training
or testing data", Nat. Commun. 12 (2021); power-law fitting after Clauset, Shalizi & Newman,
SIAM Rev. 51 (2009).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import xarray as xr

from slt_ppl.errors import ResultError, SettingError, SLTWarning
from slt_ppl.estimators.spectral.esd import layer_eigenvalues
from slt_ppl.estimators.spectral.layers import (
    describe_skipped,
    extract_layers,
    nothing_left_error,
    shape_str,
)
from slt_ppl.estimators.spectral.metrics import FLOAT_METRICS, INT_METRICS, layer_metrics

CONVENTIONS = ("slt_ppl", "weightwatcher")
FITS = ("PL", "TPL")
SAMPLE_DIMS = ("chain", "draw")
MODEL_METRICS = (
    "alpha",
    "alpha_weighted",
    "log_alpha_norm",
    "log_spectral_norm",
    "log_norm",
    "stable_rank",
    "D",
    "mp_softrank",
)
ALPHA_BASED = ("alpha", "alpha_weighted", "log_alpha_norm")


def _posterior_arrays(weights: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Parameter draws ``(chain, draw, ...)`` from a DataTree's ``posterior`` group, if any."""
    if isinstance(weights, xr.DataTree):
        if "posterior" not in weights.children:
            groups = sorted(weights.children)
            raise ResultError(
                f"spectral: the DataTree has no 'posterior' group with parameter draws "
                f"(groups: {groups}); sample with kept draws first"
            )
        ds = weights["posterior"].to_dataset()
    elif isinstance(weights, xr.Dataset) and all(d in weights.dims for d in SAMPLE_DIMS):
        ds = weights
    else:
        return None
    missing = [name for name, v in ds.data_vars.items() if not set(SAMPLE_DIMS) <= set(v.dims)]
    if missing:
        raise ResultError(f"spectral: posterior variables {missing} lack the dims {SAMPLE_DIMS}")
    arrays = {str(name): v.transpose(*SAMPLE_DIMS, ...).values for name, v in ds.data_vars.items()}
    coords = {d: ds[d].values if d in ds.coords else np.arange(ds.sizes[d]) for d in SAMPLE_DIMS}
    return arrays, coords


def _check_settings(
    convention: str, fit: str, min_evals: int, max_evals: int | None, exclude: float | None
) -> None:
    if convention not in CONVENTIONS:
        raise SettingError(f"spectral: convention={convention!r} is not one of {CONVENTIONS}")
    if fit not in FITS:
        raise SettingError(f"spectral: fit={fit!r} is not one of {FITS}")
    if not isinstance(min_evals, int | np.integer) or min_evals < 2:
        raise SettingError(f"spectral: min_evals={min_evals!r} must be an integer >= 2")
    if max_evals is not None and (not isinstance(max_evals, int | np.integer) or max_evals < 2):
        raise SettingError(f"spectral: max_evals={max_evals!r} must be None or an integer >= 2")
    if max_evals is not None and max_evals < min_evals:
        raise SettingError(f"spectral: max_evals={max_evals} < min_evals={min_evals}")
    if exclude is not None and not exclude > 0:
        raise SettingError(f"spectral: exclude_alpha_ge={exclude!r} must be positive or None")


def _summary(ds: xr.Dataset, names: list[str], hdi_prob: float) -> xr.Dataset:
    """Mean, sd and HDI over (chain, draw) per variable, with arviz_stats (numpy fallback)."""
    sub = ds[names]
    try:
        import arviz_stats

        s = arviz_stats.summary(
            sub,
            kind="stats",
            fmt="xarray",
            ci_prob=hdi_prob,
            ci_kind="hdi",
            round_to="none",
            skipna=True,
        )
        return s.rename({name: f"{name}_summary" for name in names})
    except Exception as err:  # arviz_stats rejects some inputs (e.g. all-NaN); fall back
        lo, hi = (1 - hdi_prob) / 2, (1 + hdi_prob) / 2
        stats = [
            sub.mean(SAMPLE_DIMS, skipna=True),
            sub.std(SAMPLE_DIMS, skipna=True, ddof=1),
            sub.quantile(lo, SAMPLE_DIMS, skipna=True).drop_vars("quantile"),
            sub.quantile(hi, SAMPLE_DIMS, skipna=True).drop_vars("quantile"),
        ]
        pct = round(100 * hdi_prob)
        labels = ["mean", "sd", f"eti{pct}_lb", f"eti{pct}_ub"]
        out = xr.concat(stats, dim="summary").assign_coords(summary=labels)
        out.attrs["summary_note"] = f"arviz_stats failed ({err}); equal-tailed intervals"
        return out.rename({name: f"{name}_summary" for name in names})


def spectral(
    weights: Any,
    *,
    convention: Literal["slt_ppl", "weightwatcher"] = "slt_ppl",
    min_evals: int = 8,
    max_evals: int | None = None,
    exclude_alpha_ge: float | None = 8.0,
    fit: Literal["PL", "TPL"] = "PL",
    backend: Literal["numpy", "jax", "torch"] | None = None,
    method: Literal["auto", "gram", "svd"] = "auto",
    conv_layout: Literal["auto", "channels_first", "channels_last"] = "auto",
    keep_evals: bool | None = None,
    hdi_prob: float = 0.94,
) -> xr.Dataset:
    """Heavy-tailed spectral metrics of every weight matrix (Martin & Mahoney, JMLR 2021).

    Per layer, the ESD is the set of eigenvalues of ``X = WᵀW / N`` (``convention="slt_ppl"``, the
    normalization of Martin & Mahoney JMLR 2021) or of ``X = WᵀW`` with Conv2D eigenvalues × 0.5
    (``convention="weightwatcher"``, WeightWatcher 0.7.7's defaults), ``W`` (N × M) transposed so
    N ≥ M; Conv1d/Conv2d kernels are sliced per kernel position and the slices' eigenvalues pooled.
    The ESD tail is fitted by a power law ``p(λ) ∝ λ^{−α}`` for ``λ ≥ xmin`` (continuous MLE
    ``α = 1 + k/Σ ln(λ_i/xmin)``, ``xmin`` minimising the KS distance; Clauset, Shalizi & Newman
    2009), and the bulk by a Marchenko–Pastur law. See ``docs/spectral.md`` for every formula.

    Args:
        weights: a torch ``nn.Module`` or state dict, a JAX/flax/equinox pytree, a NumPyro/Pyro
            center dict ``{site: array}``, an ``.npz`` mapping, or an slt_ppl sampling result
            (``xarray.DataTree`` whose ``posterior`` group holds draws with dims
            ``(chain, draw, ...)``); for draws every metric gets dims ``(chain, draw, layer)`` and
            a ``<metric>_summary`` variable (mean, sd, HDI) is added.
        convention: ``"slt_ppl"`` or ``"weightwatcher"`` (see :mod:`.esd`, :mod:`.powerlaw`).
        min_evals: layers with fewer eigenvalues (M × number of kernel slices) are skipped
            (WeightWatcher's default, 8).
        max_evals: layers with more eigenvalues are skipped (default None: no limit; WeightWatcher
            silently skips above 15000).
        exclude_alpha_ge: layers with α at or above this are left out of the model averages of
            the α-based metrics (alpha, alpha_weighted, log_alpha_norm); None keeps every layer.
        fit: ``"PL"`` power law or ``"TPL"`` truncated power law ``λ^{−α} e^{−Λλ}``.
        backend: ``"numpy"``, ``"jax"`` or ``"torch"`` for the eigenvalues; None uses each
            array's own library (torch tensors stay on their device).
        method: ``"gram"`` (``eigvalsh(WᵀW)``), ``"svd"`` (``svdvals(W)²``) or ``"auto"``.
        conv_layout: how 3-D/4-D kernels are laid out (see :mod:`.layers`).
        keep_evals: store the eigenvalues (variable ``evals``, NaN-padded) for plots; default True
            for a single model and False for posterior draws.
        hdi_prob: probability mass of the HDI in the posterior summary.

    Returns:
        An ``xarray.Dataset`` with dim ``layer`` (coords ``layer_type``, ``layer_shape``, ``N``,
        ``M``, ``num_matrices``), one variable per metric, ``warning`` strings, ``alpha_excluded``,
        model averages ``model_<metric>`` and, in ``attrs``, the convention and the skipped
        tensors with their reasons (also in the variable ``skipped_reason``).

    Raises:
        SettingError: an unknown convention, fit, backend, method or an out-of-range setting.
        ResultError: a DataTree without posterior draws.
        DataError: no tensor could be analysed (each skipped one is listed with its reason).
    """
    _check_settings(convention, fit, min_evals, max_evals, exclude_alpha_ge)
    posterior = _posterior_arrays(weights)
    if posterior is not None:
        weights, sample_coords = posterior
        n_lead = 2
    else:
        sample_coords = {}
        n_lead = 0
    layers, skipped = extract_layers(
        weights, n_lead=n_lead, min_evals=min_evals, max_evals=max_evals, conv_layout=conv_layout
    )
    nonfinite = [s.name for s in skipped if s.reason.startswith("non-finite")]
    if nonfinite:
        warnings.warn(
            f"spectral: skipped layers with non-finite weights: {nonfinite}",
            SLTWarning,
            stacklevel=2,
        )
    if not layers:
        raise nothing_left_error(skipped)
    eigs = layer_eigenvalues(
        layers, n_lead=n_lead, convention=convention, backend=backend, method=method
    )
    sample_shape = tuple(layers[0].matrices.shape[:n_lead])
    n_samples = math.prod(sample_shape)
    n_layers = len(layers)
    values: dict[str, np.ndarray] = {
        k: np.full((n_samples, n_layers), np.nan) for k in FLOAT_METRICS
    }
    values.update({k: np.zeros((n_samples, n_layers), dtype=np.int64) for k in INT_METRICS})
    warn_str = np.empty((n_samples, n_layers), dtype=object)
    for li, (layer, (ev, eps)) in enumerate(zip(layers, eigs, strict=True)):
        if convention == "weightwatcher":
            scale = 0.5 if layer.kind == "conv2d" else 1.0
        else:
            scale = 1.0 / layer.N
        flat = ev.reshape(n_samples, ev.shape[-1])
        for p in range(n_samples):
            res = layer_metrics(
                flat[p], n=layer.N, m=layer.M, scale=scale, eps=eps,
                convention=convention, fit_kind=fit,
            )  # fmt: skip
            for key in (*FLOAT_METRICS, *INT_METRICS):
                values[key][p, li] = res[key]
            warn_str[p, li] = res["warning"]

    dims = (*SAMPLE_DIMS[: len(sample_shape)], "layer")
    data_vars: dict[str, Any] = {
        key: (dims, arr.reshape(*sample_shape, n_layers)) for key, arr in values.items()
    }
    data_vars["warning"] = (dims, warn_str.reshape(*sample_shape, n_layers).astype(str))
    alpha = values["alpha"].reshape(*sample_shape, n_layers)
    if exclude_alpha_ge is None:
        excluded = np.zeros_like(alpha, dtype=bool)
    else:
        excluded = np.isfinite(alpha) & (alpha >= exclude_alpha_ge)
    data_vars["alpha_excluded"] = (dims, excluded)
    for key in MODEL_METRICS:
        arr = values[key].reshape(*sample_shape, n_layers)
        if key in ALPHA_BASED:
            arr = np.where(excluded, np.nan, arr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
            data_vars[f"model_{key}"] = (dims[:-1], np.nanmean(arr, axis=-1))

    coords: dict[str, Any] = {
        "layer": [lay.name for lay in layers],
        "layer_type": ("layer", [lay.layer_type for lay in layers]),
        "layer_shape": ("layer", [shape_str(lay.shape) for lay in layers]),
        "N": ("layer", [lay.N for lay in layers]),
        "M": ("layer", [lay.M for lay in layers]),
        "num_matrices": ("layer", [lay.num_matrices for lay in layers]),
    }
    coords.update(sample_coords)
    if keep_evals is None:
        keep_evals = n_lead == 0
    if keep_evals:
        width = max(e.shape[-1] for e, _ in eigs)
        padded = np.full((*sample_shape, n_layers, width), np.nan)
        for li, (e, _) in enumerate(eigs):
            padded[..., li, : e.shape[-1]] = e
        data_vars["evals"] = ((*dims, "eval"), padded)
    if skipped:
        data_vars["skipped_reason"] = ("skipped_layer", [s.reason for s in skipped])
        coords["skipped_layer"] = [s.name for s in skipped]

    any_excluded = excluded.reshape(-1, n_layers).any(axis=0)
    excluded_names = [lay.name for lay, ex in zip(layers, any_excluded, strict=True) if ex]
    esd = "W^T W / N" if convention == "slt_ppl" else "W^T W (Conv2D x 0.5)"
    attrs = {
        "estimator": "spectral",
        "convention": convention,
        "esd": f"eigenvalues of {esd}",
        "fit": fit,
        "method": method,
        "backend": backend or "auto",
        "min_evals": int(min_evals),
        "max_evals": -1 if max_evals is None else int(max_evals),
        "exclude_alpha_ge": float("nan") if exclude_alpha_ge is None else float(exclude_alpha_ge),
        "alpha_excluded_layers": ", ".join(excluded_names),
        "num_skipped": len(skipped),
        "skipped": describe_skipped(skipped),
        "references": "Martin & Mahoney JMLR 2021; Clauset, Shalizi & Newman SIAM Rev. 2009",
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    if n_lead:
        names = [k for k in (*FLOAT_METRICS, "num_spikes") if k != "Lambda" or fit == "TPL"]
        names += [f"model_{k}" for k in MODEL_METRICS]
        ds = ds.merge(_summary(ds, names, hdi_prob), combine_attrs="override")
    return ds
