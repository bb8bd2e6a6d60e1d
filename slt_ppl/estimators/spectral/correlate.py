"""Group analysis of model-level metrics against a target (Martin & Mahoney, Nat. Commun. 2021).

Within groups of models of fixed depth (say) and pooled over all of them, each metric is compared
with the target by

* ``r2``: the coefficient of determination of the least-squares line ``target ~ metric``
  (``scipy.stats.linregress``; R² = r²),
* ``kendall_tau`` (and ``kendall_p``): Kendall's rank correlation (``scipy.stats.kendalltau``).

``simpsons_paradox`` is True for a metric when the sign of the pooled Kendall τ disagrees with the
sign held by the majority of the within-group τ's (the trend reverses on pooling; the seed paper's
LogSpectralNorm example). Groups with fewer than 3 models, or a constant metric or target, give NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from slt_ppl.errors import DataError

MIN_GROUP = 3


def _as_frame(table: Any) -> Any:
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=False) if table.index.name else table
    if isinstance(table, xr.Dataset):
        if len(table.dims) != 1:
            raise DataError(
                f"correlate: the table Dataset must have exactly one dim (one row per model), "
                f"got dims {dict(table.sizes)}"
            )
        return table.to_dataframe().reset_index()
    raise DataError(
        f"correlate: table must be a pandas DataFrame or xarray Dataset, got {type(table)}"
    )


def _stats(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    from scipy import stats

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < MIN_GROUP or np.ptp(x) == 0 or np.ptp(y) == 0:
        return (np.nan,) * 4
    lr = stats.linregress(x, y)
    tau = stats.kendalltau(x, y)
    return float(lr.rvalue**2), float(lr.slope), float(tau.statistic), float(tau.pvalue)


def correlate(table: Any, target: str, group: str, metrics: list[str] | None = None) -> xr.Dataset:
    """R² and Kendall τ of each metric against ``target``, within each ``group`` and pooled.

    R² = r² of the least-squares line target ~ metric (Pearson r); Kendall's τ-b rank correlation
    (scipy); ``simpsons_paradox`` when the pooled τ's sign differs from the majority of the
    within-group signs (Martin & Mahoney, Nat. Commun. 2021; module docstring).

    Args:
        table: one row per model: a pandas DataFrame or a 1-D xarray Dataset.
        target: column with the quantity to predict (e.g. test accuracy).
        group: column defining the groups (e.g. depth).
        metrics: columns to assess; default every numeric column except target and group.

    Returns:
        Dataset with dims ``(metric, group)`` for ``r2``, ``slope``, ``kendall_tau``, ``kendall_p``
        and ``n``; ``r2_pooled``, ``slope_pooled``, ``kendall_tau_pooled``, ``kendall_p_pooled``
        and the boolean ``simpsons_paradox`` along ``metric``.
    """
    df = _as_frame(table)
    for col in (target, group):
        if col not in df.columns:
            raise DataError(f"correlate: column {col!r} not in the table ({list(df.columns)})")
    if metrics is None:
        metrics = [
            c
            for c in df.columns
            if c not in (target, group) and np.issubdtype(df[c].dtype, np.number)
        ]
    missing = [m for m in metrics if m not in df.columns]
    if missing or not metrics:
        raise DataError(f"correlate: metrics {missing or metrics} not usable columns of the table")
    groups = list(dict.fromkeys(df[group].tolist()))
    shape = (len(metrics), len(groups))
    r2, slope, tau, pval = (np.full(shape, np.nan) for _ in range(4))
    n = np.zeros(shape, dtype=np.int64)
    pooled = np.full((len(metrics), 4), np.nan)
    y_all = df[target].to_numpy(dtype=float)
    for i, m in enumerate(metrics):
        x_all = df[m].to_numpy(dtype=float)
        pooled[i] = _stats(x_all, y_all)
        for j, g in enumerate(groups):
            sel = (df[group] == g).to_numpy()
            r2[i, j], slope[i, j], tau[i, j], pval[i, j] = _stats(x_all[sel], y_all[sel])
            n[i, j] = int(sel.sum())
    signs = np.sign(np.nan_to_num(tau))
    majority = np.sign(signs.sum(axis=1))
    pooled_sign = np.sign(np.nan_to_num(pooled[:, 2]))
    paradox = (majority != 0) & (pooled_sign != 0) & (pooled_sign != majority)
    dims = ("metric", "group")
    return xr.Dataset(
        {
            "r2": (dims, r2),
            "slope": (dims, slope),
            "kendall_tau": (dims, tau),
            "kendall_p": (dims, pval),
            "n": (dims, n),
            "r2_pooled": ("metric", pooled[:, 0]),
            "slope_pooled": ("metric", pooled[:, 1]),
            "kendall_tau_pooled": ("metric", pooled[:, 2]),
            "kendall_p_pooled": ("metric", pooled[:, 3]),
            "simpsons_paradox": ("metric", paradox),
        },
        coords={"metric": metrics, "group": [str(g) for g in groups]},
        attrs={"target": target, "group_by": group},
    )
