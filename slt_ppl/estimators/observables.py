"""Estimators on probe losses recorded during sampling (``sample(..., observe={name: data})``).

ℓ_i(w) is the per-row (per-token) negative log-likelihood of probe item i, recorded at the draws
w_t of the local posterior p(w) ∝ exp(−nβ·L_n(w) − γ/2·‖w − w*‖²) (``sampling.observe``). Every
expectation below is over that posterior, estimated by pooling all draws of all healthy chains
(chains with a non-finite record are dropped, as :func:`slt_ppl.llc` does):

- Bayesian influence function (Kreer et al. 2025): BIF(i, j) = Cov(ℓ_i, ℓ_j), the covariance of
  two items' losses under the posterior, centered at the pooled mean (not at each chain's own
  mean: the chains sample the same posterior, so pooling estimates its covariance). Kreer et al.
  call −Cov the influence; we report +Cov. ``kind="correlation"`` gives the Pearson correlation,
  devinterp 2.0.1's default.
- Per-sample LLC decomposition: λ̂_i = nβ·(E[ℓ_i] − ℓ_i(w*)). With the sampling data as the probe
  set, the mean over i of λ̂_i is λ̂ = nβ·(E[L_n] − L_n(w*)) (Lau et al. 2023), since L_n is the
  mean of the ℓ_i.
- Susceptibility of a weight restriction C to probe item q (Baker et al. 2025, arXiv 2504.18274,
  App. C.4, as devinterp 2.0.1 computes it): with L_s the sampling-distribution loss and
  φ(w) = L_s(w) − L_s(w*) the observable of the restricted posterior,
  χ_C(q) = E_C[φ·(L_s − ℓ_q)] − E_C[φ]·E_full[L_s − ℓ_q] ≈ −Cov_C(φ, ℓ_q − L_s), where E_full is
  the unrestricted ("full") run. Shifting the data distribution towards q by a weight h moves
  E[φ] by −nβ·h·Cov(φ, ℓ_q − L_s) to first order (fluctuation–dissipation), so χ is that linear
  response divided by nβ.

Monte Carlo standard errors: the draws of each chain are cut into contiguous batches and the
delete-one-batch jackknife over all chains × batches gives the se of every entry (Efron & Stein
1981). The jackknife treats the K batches as independent, which holds for correlated draws only
when a batch outlasts the autocorrelation (as for batch means, Flegal & Jones 2010): the batch
length is ``BATCH_TAUS`` = 5 integrated autocorrelation times τ̂ of the per-draw item traces
(τ̂ = C·N / ArviZ's ESS of the mean, the largest over the items, at most ``TAU_ITEMS`` of them),
so short runs get few long batches (down to one per chain: then the se is the spread of the chain
means) rather than many short ones. With fixed 5-draw batches on a run of ESS 8-60 the se was too
small (48 % of a tiny LM's BIF entries beyond 2 se); the coverage of ±2 se measured on a Gaussian
closed form is in docs/observables.md. The se has K − 1 degrees of freedom (attrs
``num_batches``): ±2 se covers ≈ 95 % only for K ≳ 30 (t distribution: 92 % at K = 10, 86 % at
K = 4); below ``MIN_RELIABLE_BATCHES`` a warning says so.
Per-token probes: ``per="token"`` treats every (row, token) as an item; ``per="sample"`` (default)
uses each row's mean per-token NLL, the scale of L_n (docs/observables.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import arviz_stats
import numpy as np
import pandas as pd
import xarray as xr

from slt_ppl.errors import ResultError, SettingError, SLTWarning

__all__ = ["bif", "llc_decomposition", "probe_losses", "susceptibility", "top_pairs"]

BATCH_TAUS = 5  # batch length in autocorrelation times (module docstring; docs/observables.md)
TAU_ITEMS = 256  # items whose traces set τ̂ (evenly spaced: the cost stays bounded)
MIN_RELIABLE_BATCHES = 10


def probe_losses(
    result: xr.DataTree, observable: str, *, temperature: float | None = None
) -> xr.DataArray:
    """The recorded losses of probe set ``observable``: dims (chain, draw, <observable>[,
    <observable>_token]), ``draw`` = the sample draw index of each observed draw (the stored dim
    is ``observed_draw`` when observe_every > 1). ``temperature`` picks one nβ factor of a
    temperature run (default 1.0 when the run has one)."""
    stats = _stats(result)
    name = f"loss_{observable}"
    if name not in stats:
        observed = sorted(v[5:] for v in stats.data_vars if v.startswith("loss_") and
                          not v.endswith("_center"))  # fmt: skip
        raise ResultError(
            f"the result has no recorded probe set {observable!r} (sample_stats[{name!r}]); "
            f"recorded: {observed or 'none (sample with observe={name: data})'}"
        )
    values = _at_temperature(stats[name], temperature)
    if "observed_draw" in values.dims:
        values = values.rename(observed_draw="draw")
    return values


def bif(
    result: xr.DataTree,
    observable: str,
    kind: str = "covariance",
    *,
    per: str = "sample",
    temperature: float | None = None,
    num_batches: int | None = None,
) -> xr.Dataset:
    """Bayesian influence function BIF(i, j) = Cov(ℓ_i, ℓ_j) (or the Pearson correlation) over the
    posterior draws (module docstring), with jackknife standard errors.

    Returns an ``xr.Dataset`` with ``bif`` and ``bif_se`` (dims ``<observable>_i``,
    ``<observable>_j``) and attrs (kind, draws and chains used, batches); :func:`top_pairs` lists
    the most influential pairs."""
    if kind not in ("covariance", "correlation"):
        raise SettingError(f"kind must be 'covariance' or 'correlation', got {kind!r}")
    items, info = _items(result, observable, per, temperature)
    batches, batching = _batches(items, num_batches)
    stat = _covariance if kind == "covariance" else _correlation
    value, se = _jackknife(batches, stat, "second")
    dims = (f"{observable}_i", f"{observable}_j")
    coords = {dims[0]: np.arange(value.shape[0]), dims[1]: np.arange(value.shape[0])}
    attrs = {**info, **batching, "kind": kind, "sign": "+Cov(l_i, l_j)",
             "se_method": "delete-one-batch jackknife over chains x batches"}  # fmt: skip
    return xr.Dataset({"bif": (dims, value), "bif_se": (dims, se)}, coords=coords, attrs=attrs)


def top_pairs(result: xr.Dataset, k: int = 10) -> pd.DataFrame:
    """The ``k`` off-diagonal pairs i < j of a :func:`bif` result with the largest |BIF|,
    with their se, most influential first."""
    value, se = result["bif"].values, result["bif_se"].values
    i, j = np.triu_indices(value.shape[0], 1)
    order = np.argsort(-np.abs(value[i, j]), kind="stable")[:k]
    return pd.DataFrame(
        {"i": i[order], "j": j[order], "bif": value[i, j][order], "se": se[i, j][order]}
    )


def llc_decomposition(
    result: xr.DataTree,
    observable: str,
    *,
    per: str = "sample",
    temperature: float | None = None,
    num_batches: int | None = None,
) -> xr.Dataset:
    """Per-sample LLC λ̂_i = nβ·(E[ℓ_i] − ℓ_i(w*)) with jackknife se, and their mean
    ``llc_mean`` (= λ̂ when the probe set is the sampling data; module docstring)."""
    items, info = _items(result, observable, per, temperature)
    center = _center_items(result, observable, per)
    nbeta = float(info["nbeta"])
    batches, batching = _batches(items, num_batches)
    value, se = _jackknife(batches, lambda s: nbeta * (s["mean"] - center))
    mean, mean_se = _jackknife(batches, lambda s: nbeta * float(np.mean(s["mean"] - center)))
    dim = f"{observable}_item"
    return xr.Dataset(
        {
            "llc": (dim, value),
            "llc_se": (dim, se),
            "llc_mean": ((), float(mean)),
            "llc_mean_se": ((), float(mean_se)),
        },
        coords={dim: np.arange(value.shape[0])},
        attrs={**info, **batching, "formula": "nbeta*(E[l_i] - l_i(w*))"},
    )


def susceptibility(
    results_by_restriction: Mapping[str, xr.DataTree],
    sampling: str = "loss",
    probe: str | None = None,
    *,
    per: str = "sample",
    temperature: float | None = None,
    num_batches: int | None = None,
) -> xr.Dataset:
    """χ_C(q) = E_C[φ·(L_s − ℓ_q)] − E_C[φ]·E_full[L_s − ℓ_q], φ = L_s − L_s(w*), for every
    restriction C and probe item q (module docstring: Baker et al. 2025, App. C.4).

    ``results_by_restriction``: restriction name → result, including ``"full"`` (the unrestricted
    run, the reference). ``sampling``: where L_s comes from: ``"loss"`` (the recorded sampling
    loss L_B(w_t) and its paired L_B(w*), noisy under minibatches) or the name of a probe set
    drawn from the sampling distribution (L_s = the mean of its losses, exact at every draw).
    ``probe``: the probe set q. Returns ``susceptibility`` and ``susceptibility_se`` with dims
    (restriction, <probe>_item); the se adds the full run's error of E_full[L_s − ℓ_q]. Also
    ``susceptibility_cov`` (and its se) = Cov_C(L_s, L_s − ℓ_q), the part that does not depend
    on φ's reference: χ = Cov_C + E_C[φ]·(E_C[L_s − ℓ_q] − E_full[L_s − ℓ_q]), and the second
    term changes with the reference subtracted from φ (docs/observables.md, "Susceptibility
    conventions")."""
    if probe is None:
        raise SettingError("susceptibility needs probe=<the name of an observed probe set>")
    if "full" not in results_by_restriction:
        raise SettingError(
            "results_by_restriction needs a 'full' entry (the unrestricted run, the reference "
            f"E_full[L_s - l_q]); got {sorted(results_by_restriction)}"
        )
    parts = {
        c: _response_items(r, sampling, probe, per, temperature)
        for c, r in results_by_restriction.items()
    }
    full_batches, _ = _batches(parts["full"], num_batches)
    ref, ref_se = _jackknife(full_batches, lambda s: s["mean"][1:])
    values, ses, counts, covs = [], [], [], []
    for name, items in parts.items():
        batches, batching = _batches(items, num_batches)
        counts.append(batching["num_batches"])
        own_ref = name == "full"

        def chi(s: dict[str, Any], own: bool = own_ref) -> np.ndarray:
            phi_delta, phi = s["cross"], s["mean"][0]
            return phi_delta - phi * (s["mean"][1:] if own else ref)

        value, se = _jackknife(batches, chi, "cross")
        covs.append(
            _jackknife(batches, lambda s: s["cross"] - s["mean"][0] * s["mean"][1:], "cross")
        )
        if not own_ref:  # the reference's Monte Carlo error enters through E_C[φ]
            phi_mean = float(np.mean(items[..., 0]))
            se = np.sqrt(se**2 + (phi_mean * ref_se) ** 2)
        values.append(value)
        ses.append(se)
    dims = ("restriction", f"{probe}_item")
    return xr.Dataset(
        {"susceptibility": (dims, np.stack(values)), "susceptibility_se": (dims, np.stack(ses)),
         "susceptibility_cov": (dims, np.stack([c[0] for c in covs])),
         "susceptibility_cov_se": (dims, np.stack([c[1] for c in covs])),
         "num_batches": ("restriction", counts)},
        coords={"restriction": list(parts), dims[1]: np.arange(values[0].shape[0])},
        attrs={"sampling": sampling, "probe": probe, "per": per,
               "formula": "E_C[phi*(L_s - l_q)] - E_C[phi]*E_full[L_s - l_q], "
                          "phi = L_s - L_s(w*) (Baker et al. 2025, App. C.4)"},
    )  # fmt: skip


# -- draws → items -----------------------------------------------------------------------------


def _stats(result: xr.DataTree) -> xr.Dataset:
    if not isinstance(result, xr.DataTree) or "sample_stats" not in result.children:
        raise ResultError("expected a result of slt_ppl.sample(...) with a sample_stats group")
    return result["sample_stats"].to_dataset()


def _at_temperature(values: xr.DataArray, temperature: float | None) -> xr.DataArray:
    if "temperature" not in values.dims:
        if temperature not in (None, 1.0):
            raise SettingError(f"temperature={temperature!r}: the run has one temperature")
        return values
    factors = [float(t) for t in values["temperature"].values]
    pick = 1.0 if temperature is None else float(temperature)
    if pick not in factors:
        raise SettingError(f"temperature={pick!r} is not one of the run's factors {factors}")
    return values.sel(temperature=pick)


def _items(
    result: xr.DataTree, observable: str, per: str, temperature: float | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Healthy chains' losses as (chain, draw, item) and the attrs describing them."""
    values = probe_losses(result, observable, temperature=temperature)
    items = _per(values.values, values.ndim == 4, per)
    healthy = np.all(np.isfinite(items), axis=(1, 2))
    if not healthy.any():
        raise ResultError(f"every chain of probe set {observable!r} holds non-finite losses")
    factor = 1.0 if temperature is None else float(temperature)
    info = {
        "observable": observable,
        "per": per,
        "num_chains_used": int(healthy.sum()),
        "num_draws_used": int(healthy.sum() * items.shape[1]),
        "nbeta": float(result.attrs.get("nbeta", math.nan)) * factor,
    }
    return items[healthy], info


def _per(values: np.ndarray, per_token: bool, per: str) -> np.ndarray:
    if per not in ("sample", "token"):
        raise SettingError(f"per must be 'sample' or 'token', got {per!r}")
    if not per_token:
        if per == "token":
            raise SettingError("per='token' needs per-token losses (a probe with a token dim)")
        return values
    if per == "sample":
        return values.mean(axis=-1)
    return values.reshape(*values.shape[:-2], -1)


def _center_items(result: xr.DataTree, observable: str, per: str) -> np.ndarray:
    center = _stats(result)[f"loss_{observable}_center"].values
    return _per(center[None, None], center.ndim == 2, per)[0, 0]


def _response_items(
    result: xr.DataTree, sampling: str, probe: str, per: str, temperature: float | None
) -> np.ndarray:
    """Per draw: [φ, Δ_1..Δ_Q] with φ = L_s − L_s(w*), Δ_q = L_s − ℓ_q (chain, draw, 1 + Q)."""
    losses = probe_losses(result, probe, temperature=temperature)
    items = _per(losses.values, losses.ndim == 4, per)
    stats = _stats(result)
    if sampling == "loss":
        draws = losses["draw"].values

        def take(v: str) -> np.ndarray:
            return _at_temperature(stats[v], temperature).sel(draw=draws).values

        level, phi = take("loss"), take("loss") - take("loss_center")
    else:
        s = probe_losses(result, sampling, temperature=temperature).values
        flat = s.reshape(*s.shape[:2], -1)
        level = flat.mean(axis=-1)
        phi = level - float(np.mean(stats[f"loss_{sampling}_center"].values))
    stacked = np.concatenate([phi[..., None], level[..., None] - items], axis=-1)
    healthy = np.all(np.isfinite(stacked), axis=(1, 2))
    if not healthy.any():
        raise ResultError(f"every chain of probe set {probe!r} holds non-finite losses")
    return stacked[healthy]


# -- batches and the jackknife -----------------------------------------------------------------


def _batches(items: np.ndarray, num_batches: int | None) -> tuple[list[np.ndarray], dict]:
    """Contiguous blocks of draws within each chain and attrs describing them: blocks of
    ``BATCH_TAUS``·τ̂ draws (module docstring), or ⌈num_batches / chains⌉ per chain when given."""
    chains, draws = items.shape[:2]
    tau = _autocorrelation_time(items)
    if num_batches is None:
        per_chain = max(1, draws // max(1, math.ceil(BATCH_TAUS * tau)))
    else:
        per_chain = max(1, min(math.ceil(num_batches / chains), draws // 2 or 1))
    blocks = [b for c in range(chains) for b in np.array_split(items[c], per_chain, axis=0)]
    info = {"num_batches": len(blocks), "batch_draws": draws // per_chain,
            "autocorrelation_time": tau}  # fmt: skip
    if len(blocks) < MIN_RELIABLE_BATCHES:
        warnings.warn(
            f"the standard errors rest on {len(blocks)} batch(es) of {draws // per_chain} draws "
            f"({chains} chain(s) x {per_chain}; autocorrelation time {tau:.3g} draws): "
            + ("no se without a second batch" if len(blocks) < 2 else
               f"{len(blocks) - 1} degrees of freedom, so ±2 se covers less than 95 %")
            + " (record more draws or chains)",
            SLTWarning,
            3,
        )  # fmt: skip
    return blocks, info


def _autocorrelation_time(items: np.ndarray) -> float:
    """τ̂ = C·N / ESS: the largest integrated autocorrelation time of the items' traces (ArviZ's
    ESS of the mean, which also sees chains that disagree), over at most ``TAU_ITEMS`` items."""
    chains, draws = items.shape[:2]
    flat = items.reshape(chains, draws, -1)
    pick = np.unique(np.linspace(0, flat.shape[-1] - 1, min(TAU_ITEMS, flat.shape[-1])).astype(int))
    x = flat[..., pick].astype(np.float64)
    x = x[..., np.ptp(x, axis=(0, 1)) > 0]  # a constant trace has no autocorrelation time
    if x.shape[-1] == 0 or draws < 4:
        return 1.0
    da = xr.DataArray(x, dims=("chain", "draw", "item"))
    ess = np.asarray(arviz_stats.ess(da, sample_dims=["chain", "draw"], method="mean"))
    ess = ess[np.isfinite(ess) & (ess > 0)]
    return float(chains * draws / ess.min()) if ess.size else float(draws)


def _sums(block: np.ndarray, moments: str) -> dict[str, Any]:
    """Sums of a block: count, Σx and, by ``moments``, Σxxᵀ ("second") or Σx₀·x₁: ("cross")."""
    x = block.astype(np.float64)
    out = {"n": x.shape[0], "s1": x.sum(0)}
    if moments == "second":
        out["s2"] = x.T @ x
    elif moments == "cross":
        out["c"] = x[:, 0] @ x[:, 1:]
    return out


def _moments(total: dict[str, Any]) -> dict[str, Any]:
    n = total["n"]
    out = {"mean": total["s1"] / n}
    if "s2" in total:
        out["second"] = total["s2"] / n
    if "c" in total:
        out["cross"] = total["c"] / n
    return out


def _jackknife(
    batches: list[np.ndarray], stat: Callable[[dict[str, Any]], Any], moments: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """(stat on all draws, delete-one-batch jackknife se); ``stat`` maps pooled moments (the
    mean, plus the second moments or the cross moments with column 0, by ``moments``)."""
    total: dict[str, Any] = {}
    for b in batches:  # two passes over the batches: memory O(items²), not O(K·items²)
        for key, value in _sums(b, moments).items():
            total[key] = total[key] + value if key in total else value
    value = np.asarray(stat(_moments(total)), dtype=np.float64)
    k = len(batches)
    if k < 2:
        return value, np.full_like(value, np.nan)
    acc, acc2 = np.zeros_like(value), np.zeros_like(value)
    for b in batches:
        s = _sums(b, moments)
        rest = {key: total[key] - s[key] for key in total}
        theta = np.asarray(stat(_moments(rest)), dtype=np.float64)
        acc += theta
        acc2 += theta**2
    mean = acc / k
    var = (k - 1) / k * np.maximum(acc2 - k * mean**2, 0.0)
    return value, np.sqrt(var)


def _covariance(m: dict[str, Any]) -> np.ndarray:
    return m["second"] - np.outer(m["mean"], m["mean"])


def _correlation(m: dict[str, Any]) -> np.ndarray:
    cov = _covariance(m)
    sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    return cov / np.outer(sd, sd)
