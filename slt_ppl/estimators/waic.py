"""WAIC, functional variance and singular fluctuation from per-sample log-likelihoods at the draws
(Watanabe 2009, *Algebraic Geometry and Statistical Learning Theory*, ch. 8; Watanabe 2010, JMLR
11:3571, "Asymptotic equivalence of Bayes cross validation and widely applicable information
criterion in singular learning theory"; reference/estimators.md section 3).

With ℓ_i(w) = log p(y_i | x_i, w) evaluated at S posterior draws w_s of a run at inverse
temperature β, and E_w, Var_w the posterior mean and variance over the draws:

    training loss        T_n = −(1/n)·Σ_i log E_w[p(y_i | x_i, w)]
    functional variance  V_n = Σ_i Var_w[log p(y_i | x_i, w)]
    WAIC                 W_n = T_n + (β/n)·V_n                     (Watanabe's per-sample scale)
    singular fluctuation ν   = (β/2)·V_n                           (an estimate of ν(β) = (β/2)·E[V_n])

W_n estimates the Bayes generalization loss G_n: E[W_n] = E[G_n] + o(1/n) for regular and singular
models alike (Watanabe 2010, Theorem 1). Watanabe's equations of state (2009, ch. 8; recalled, not
read here) tie the two to the learning coefficient λ:
E[G_n] = L(w0) + ((λ − ν)/β + ν)/n and E[T_n] = L(w0) + ((λ − ν)/β − ν)/n + o(1/n),
so at β = 1 E[G_n] − L(w0) ≈ λ/n and E[T_n] − L(w0) ≈ (λ − 2ν)/n. In a regular model with d
parameters ν = λ = d/2; in a singular model they differ in general (tests/test_waic.py measures it on
y = a·b·x + noise at a·b = 0, where λ = 1/2).

ArviZ's scales (Vehtari, Gelman & Gabry 2017; legacy ``arviz.waic``), valid at β = 1:
lppd = Σ_i log E_w[p(y_i|w)] = −n·T_n, p_waic = V_n, elpd_waic = lppd − p_waic = −n·W_n and the
deviance scale WAIC = −2·elpd_waic = 2n·W_n. Posterior variances use the 1/S normalization, as
ArviZ does (the S/(S−1) factor is below the Monte Carlo error for any usable S).

Two kinds of standard error are reported:

* ``*_se``: the spread over observations, as ArviZ computes the se of elpd_waic: a sum Σ_i a_i
  gets √(n·var_i(a_i)), a mean gets √(var_i(a_i)/n). It measures how much the value would change
  with another data set of the same size (for the sums) and ignores the Monte Carlo error.
* ``*_mcse``: the Monte Carlo error over the draws, for fixed data. Each quantity is, to first
  order in the Monte Carlo error, the posterior mean of a per-draw series (delta method):
  δT_n ≈ −(1/n)·Σ_i δp̄_i / p̄_i, so T_n's error is that of the mean of
  g(w_s) = −(1/n)·Σ_i p(y_i|w_s)/p̄_i; V_n = mean_s q(w_s) with q(w) = Σ_i (ℓ_i(w) − E_w ℓ_i)²
  (estimating E_w ℓ_i from the same draws changes it only at O(1/S)); W_n's series is g + (β/n)·q.
  Each series gets :func:`slt_ppl.estimators.error_bars.honest_se` (max of ArviZ's MCSE, which
  accounts for autocorrelation within chains, and the overlapping batch-means se).

Input: either a sampling result whose ``sample_stats["loss_<name>"]`` holds per-row losses, the
negative log-likelihoods −log p(y_i|x_i, w) (seam 3 of the session's design: dims (chain, draw,
<name>[, <name>_token]); the log-likelihood is minus the loss, per-token losses are summed into the
row's log-likelihood), or log-likelihoods directly as a DataArray / array with dims
(chain, draw, observation).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import xarray as xr

from slt_ppl.errors import ResultError, SettingError, SLTWarning
from slt_ppl.estimators._common import TEMPERATURE, healthy_chains
from slt_ppl.estimators.error_bars import honest_se

__all__ = ["waic"]

LOSS_PREFIX = "loss_"
BUILTIN_LOSSES = ("loss_center",)
SAMPLE_DIMS = ("chain", "draw")
# ArviZ warns when a pointwise functional variance exceeds 0.4 (WAIC then unreliable; use PSIS-LOO).
POINTWISE_VARIANCE_LIMIT = 0.4


def waic(
    result_or_loglik: xr.DataTree | xr.DataArray | np.ndarray,
    observable: str | None = None,
    *,
    beta: float | None = None,
    warn: bool = True,
) -> xr.Dataset:
    """WAIC, training loss, functional variance and singular fluctuation (Watanabe 2010).

    Formulas (module docstring; reference/estimators.md section 3), with ℓ_i(w) = log p(y_i|w)
    at the draws: T_n = −(1/n)·Σ_i log E_w[exp ℓ_i], V_n = Σ_i Var_w[ℓ_i], W_n = T_n + (β/n)·V_n,
    ν = (β/2)·V_n; ArviZ's elpd_waic = −n·W_n and deviance WAIC = 2n·W_n (at β = 1).

    Args:
        result_or_loglik: the DataTree of :func:`slt_ppl.sample` with
            ``sample_stats["loss_<observable>"]`` (per-row NLL, dims chain, draw, <observable>);
            or log-likelihoods (not losses) as a DataArray with dims chain, draw and one observation
            dim, or an ndarray of shape (chain, draw, observation).
        observable: the probe name (``loss_<observable>``); may be omitted when the result holds
            exactly one. Ignored for arrays.
        beta: inverse temperature of the draws. Results: read from attrs (nβ/n × temperature
            factor); arrays: default 1.
        warn: emit :class:`~slt_ppl.SLTWarning` when β ≠ 1 or a pointwise variance exceeds 0.4.

    Returns:
        ``xr.Dataset`` with ``waic`` (W_n), ``training_loss`` (T_n), ``functional_variance``
        (V_n), ``singular_fluctuation`` (ν), ``elpd_waic``, ``waic_deviance``, ``lppd``, each
        with ``*_se`` (over observations, ArviZ's convention) and ``*_mcse`` (over draws), plus the
        pointwise ``elpd_waic_i`` and ``functional_variance_i`` along the observation dim.

    Raises:
        ResultError: no (or an ambiguous) ``loss_<name>`` variable, non-finite values.
        SettingError: wrong array shape or a non-positive β.
    """
    loglik, beta, attrs = _log_likelihood(result_or_loglik, observable, beta)
    ds = _waic_dataset(loglik, beta)
    ds.attrs.update(attrs)
    _warn(ds, warn)
    return ds


# ---------------------------------------------------------------- inputs


def _log_likelihood(
    source: xr.DataTree | xr.DataArray | np.ndarray, observable: str | None, beta: float | None
) -> tuple[xr.DataArray, float, dict]:
    """(log-likelihood with dims chain, draw, obs; β; attrs describing the source)."""
    if isinstance(source, xr.DataTree):
        return _from_result(source, observable, beta)
    if isinstance(source, xr.DataArray):
        loglik = _check_array_dims(source)
    elif isinstance(source, np.ndarray | list):
        values = np.asarray(source, dtype=np.float64)
        if values.ndim != 3:
            raise SettingError(
                f"log-likelihood array must have shape (chain, draw, observation), got shape "
                f"{values.shape}; for one chain pass x[None]"
            )
        loglik = xr.DataArray(values, dims=(*SAMPLE_DIMS, "observation"))
    else:
        raise SettingError(
            "waic expects the DataTree of slt_ppl.sample or log-likelihoods "
            f"(DataArray / ndarray of shape (chain, draw, observation)), got {type(source).__name__}"
        )
    beta = 1.0 if beta is None else _positive_beta(beta)
    return _finite(loglik, "log-likelihood"), beta, {"source": "log-likelihood array"}


def _check_array_dims(loglik: xr.DataArray) -> xr.DataArray:
    extra = [d for d in loglik.dims if d not in SAMPLE_DIMS]
    if not set(SAMPLE_DIMS) <= set(loglik.dims) or len(extra) != 1:
        raise SettingError(
            f"log-likelihood DataArray must have dims chain, draw and one observation dim, "
            f"got {loglik.dims}"
        )
    return loglik.transpose(*SAMPLE_DIMS, extra[0]).astype(np.float64)


def _from_result(
    result: xr.DataTree, observable: str | None, beta: float | None
) -> tuple[xr.DataArray, float, dict]:
    if "sample_stats" not in result.children:
        raise ResultError("result has no 'sample_stats' group; pass the DataTree of slt_ppl.sample")
    stats, attrs = result["sample_stats"].to_dataset(), dict(result.attrs)
    name = _observable_name(stats, observable)
    loss = stats[LOSS_PREFIX + name]
    factor = 1.0
    if TEMPERATURE in loss.dims:
        loss, factor = _unit_temperature(loss, attrs)
    if "diverged_at" in stats:
        ok, _ = healthy_chains(stats, warn=True)
        loss = loss.sel(chain=ok.values)
    loglik = -_rows(loss, name)
    loglik = _drop_unobserved_draws(loglik, name)
    if beta is None:
        beta = _beta_of(attrs) * factor
    info = {
        "source": f"sample_stats.{LOSS_PREFIX}{name}",
        "observable": name,
        "temperature_factor": factor,
    }
    info.update({k: attrs[k] for k in ("n", "nbeta", "gamma", "kernel") if k in attrs})
    return _finite(loglik, f"sample_stats.{LOSS_PREFIX}{name}"), _positive_beta(beta), info


def _observable_name(stats: xr.Dataset, observable: str | None) -> str:
    """The probe name: given, or the only ``loss_<name>`` variable that has a dim <name>."""
    names = [
        str(v)[len(LOSS_PREFIX) :]
        for v in stats.data_vars
        if str(v).startswith(LOSS_PREFIX)
        and str(v) not in BUILTIN_LOSSES
        and str(v)[len(LOSS_PREFIX) :] in stats[v].dims
    ]
    if observable is not None:
        if observable not in names:
            raise ResultError(
                f"sample_stats has no per-row loss 'loss_{observable}' with dim {observable!r}; "
                f"recorded observables: {names or 'none'} (sample(..., observe={{name: data}}))"
            )
        return observable
    if len(names) != 1:
        raise ResultError(
            "pass observable=...: the result records "
            + (f"several per-row losses {names}" if names else "no per-row losses")
            + " (record them with sample(..., observe={'train': data}))"
        )
    return names[0]


def _unit_temperature(loss: xr.DataArray, attrs: dict) -> tuple[xr.DataArray, float]:
    """The temperature slice whose β = nβ·factor/n is closest to 1 (WAIC's β)."""
    factors = np.asarray(loss[TEMPERATURE].values, np.float64)
    base = _beta_of(attrs)
    i = int(np.argmin(np.abs(np.log(base * factors))))
    return loss.isel({TEMPERATURE: i}), float(factors[i])


def _beta_of(attrs: dict) -> float:
    try:
        return float(attrs["nbeta"]) / float(attrs["n"])
    except (KeyError, TypeError, ValueError) as err:
        raise ResultError(
            "the result's attrs need numeric 'n' and 'nbeta' to know β = nβ/n; pass beta=..."
        ) from err


def _rows(loss: xr.DataArray, name: str) -> xr.DataArray:
    """Per-row loss: per-token losses (dim <name>_token) are summed, log p(row) = Σ_t log p(t).
    The draw dim may carry another name (a layout that keeps only every k-th draw under its own
    dim): the one dim besides chain and <name> is read as the draws."""
    token = f"{name}_token"
    if token in loss.dims:
        loss = loss.sum(token, skipna=False)
    draws = [d for d in loss.dims if d not in (name, "chain")]
    if "chain" not in loss.dims or len(draws) != 1:
        raise ResultError(
            f"loss_{name} must have dims (chain, draw, {name}[, {token}]), got {loss.dims}"
        )
    if draws[0] != "draw":
        loss = loss.drop_vars(draws[0], errors="ignore").rename({draws[0]: "draw"})
    return loss.transpose(*SAMPLE_DIMS, name)


def _drop_unobserved_draws(loglik: xr.DataArray, name: str) -> xr.DataArray:
    """Draws where every row is NaN were not observed (observe_every > 1 padding): drop them."""
    observed = np.isfinite(loglik).any(dim=name).all(dim="chain")
    return loglik.isel(draw=np.flatnonzero(observed.values))


def _finite(loglik: xr.DataArray, what: str) -> xr.DataArray:
    values = loglik.values
    if values.shape[0] * values.shape[1] < 2 or values.shape[2] < 1:
        raise ResultError(f"{what} needs at least 2 draws and 1 observation, got {values.shape}")
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ResultError(f"{what} holds {bad} non-finite value(s); drop diverged chains first")
    return loglik


def _positive_beta(beta: float) -> float:
    beta = float(beta)
    if not (math.isfinite(beta) and beta > 0):
        raise SettingError(f"beta must be a positive finite number, got {beta}")
    return beta


# ---------------------------------------------------------------- the estimates


def _waic_dataset(loglik: xr.DataArray, beta: float) -> xr.Dataset:
    obs_dim = loglik.dims[2]
    ll = np.asarray(loglik.values, np.float64)
    num_chains, num_draws, n = ll.shape
    lppd_i = _log_mean_exp(ll)
    centered = ll - ll.mean(axis=(0, 1))
    var_i = np.mean(centered**2, axis=(0, 1))
    elpd_i = lppd_i - beta * var_i
    # per-draw series whose means carry the Monte Carlo error (module docstring)
    g = -np.mean(np.exp(ll - lppd_i), axis=2)
    q = np.sum(centered**2, axis=2)
    mcse_t, mcse_v, mcse_w = (_mcse(s) for s in (g, q, g + beta * q / n))
    pointwise_se = {
        "sum_elpd": math.sqrt(n * np.var(elpd_i)),
        "sum_lppd": math.sqrt(n * np.var(lppd_i)),
        "sum_var": math.sqrt(n * np.var(var_i)),
    }
    values = {
        "waic": (-elpd_i.mean(), pointwise_se["sum_elpd"] / n, mcse_w),
        "training_loss": (-lppd_i.mean(), pointwise_se["sum_lppd"] / n, mcse_t),
        "functional_variance": (var_i.sum(), pointwise_se["sum_var"], mcse_v),
        "singular_fluctuation": (
            beta * var_i.sum() / 2,
            beta * pointwise_se["sum_var"] / 2,
            beta * mcse_v / 2,
        ),
        "elpd_waic": (elpd_i.sum(), pointwise_se["sum_elpd"], n * mcse_w),
        "waic_deviance": (-2 * elpd_i.sum(), 2 * pointwise_se["sum_elpd"], 2 * n * mcse_w),
        "lppd": (lppd_i.sum(), pointwise_se["sum_lppd"], n * mcse_t),
    }
    data = {}
    for key, (value, se, mcse) in values.items():
        data[key] = float(value)
        data[f"{key}_se"] = float(se)
        data[f"{key}_mcse"] = float(mcse)
    data["elpd_waic_i"] = xr.DataArray(elpd_i, dims=obs_dim)
    data["functional_variance_i"] = xr.DataArray(var_i, dims=obs_dim)
    ds = xr.Dataset(data, coords={obs_dim: loglik[obs_dim]} if obs_dim in loglik.coords else None)
    ds.attrs.update(_attrs(beta, n, num_chains, num_draws, var_i))
    return ds


def _log_mean_exp(ll: np.ndarray) -> np.ndarray:
    """log mean_s exp(ll[..., i]) over the chain and draw axes, shifted by the maximum for
    stability (scipy.special.logsumexp does the same but is ≈ 10× slower on 10⁷ entries)."""
    top = ll.max(axis=(0, 1))
    return np.log(np.mean(np.exp(ll - top), axis=(0, 1))) + top


def _mcse(series: np.ndarray) -> float:
    """Monte Carlo se of the mean of a per-draw series (chain, draw): honest_se."""
    return honest_se(xr.DataArray(series, dims=SAMPLE_DIMS))


def _attrs(beta: float, n: int, num_chains: int, num_draws: int, var_i: np.ndarray) -> dict:
    return {
        "estimator": "waic",
        "beta": beta,
        "num_observations": n,
        "num_chains": num_chains,
        "num_draws": num_draws,
        "formula": (
            "W_n = T_n + (beta/n) V_n, T_n = -(1/n) sum_i log E_w[p(y_i|w)], "
            "V_n = sum_i Var_w[log p(y_i|w)], nu = beta V_n / 2 (Watanabe 2010)"
        ),
        "scales": (
            "waic: Watanabe's per-sample W_n; elpd_waic = -n W_n and waic_deviance = 2n W_n "
            "are ArviZ's log and deviance scales (p_waic = functional_variance), valid at beta = 1"
        ),
        "max_pointwise_variance": float(var_i.max()),
        "pointwise_variance_above_limit": int(np.sum(var_i > POINTWISE_VARIANCE_LIMIT)),
    }


def _warn(ds: xr.Dataset, warn: bool) -> None:
    if not warn:
        return
    beta = float(ds.attrs["beta"])
    if not math.isclose(beta, 1.0, rel_tol=1e-6):
        warnings.warn(
            f"the draws are at beta = {beta:.4g}, not 1: W_n = T_n + (beta/n) V_n is Watanabe's "
            "tempered WAIC and nu = nu(beta); elpd_waic / waic_deviance are ArviZ's scales only "
            "at beta = 1 (sample with nbeta = n)",
            SLTWarning,
            3,
        )
    above = int(ds.attrs["pointwise_variance_above_limit"])
    if above:
        warnings.warn(
            f"{above} observation(s) have Var_w[log p] > {POINTWISE_VARIANCE_LIMIT}: WAIC may be "
            "unreliable there; compare with PSIS-LOO (arviz_stats.loo)",
            SLTWarning,
            3,
        )
