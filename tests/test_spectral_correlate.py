"""correlate(): within-group and pooled trends, and Simpson's paradox detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import slt_ppl
from slt_ppl.errors import DataError


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for depth in (8, 16, 32):
        for _ in range(12):
            t = rng.normal()
            acc = 0.5 + 0.1 * depth / 8 + 0.05 * t
            rows.append(
                {
                    "depth": depth,
                    "accuracy": acc,
                    # within a depth: rises with accuracy; across depths: offset the other way
                    "log_spectral_norm": t + 0.02 * rng.normal() - 3.0 * depth / 8,
                    # one consistent trend everywhere
                    "alpha_weighted": -acc + 0.01 * rng.normal(),
                }
            )
    return pd.DataFrame(rows)


def test_paradox_found_where_it_exists() -> None:
    out = slt_ppl.spectral.correlate(_table(), "accuracy", "depth")
    assert out["kendall_tau"].sel(metric="log_spectral_norm").min() > 0.5
    assert float(out["kendall_tau_pooled"].sel(metric="log_spectral_norm")) < 0
    assert bool(out["simpsons_paradox"].sel(metric="log_spectral_norm"))
    assert not bool(out["simpsons_paradox"].sel(metric="alpha_weighted"))
    assert float(out["r2_pooled"].sel(metric="alpha_weighted")) > 0.9
    assert list(out["group"].values) == ["8", "16", "32"]
    assert (out["n"].values == 12).all()


def test_dataset_input_and_errors() -> None:
    ds = _table().to_xarray()
    out = slt_ppl.spectral.correlate(ds, "accuracy", "depth", metrics=["alpha_weighted"])
    assert list(out["metric"].values) == ["alpha_weighted"]
    with pytest.raises(DataError, match="column"):
        slt_ppl.spectral.correlate(_table(), "test_acc", "depth")


def test_kendall_matches_scipy() -> None:
    from scipy import stats

    df = _table()
    out = slt_ppl.spectral.correlate(df, "accuracy", "depth")
    sub = df[df["depth"] == 16]
    tau = stats.kendalltau(sub["alpha_weighted"], sub["accuracy"]).statistic
    assert float(out["kendall_tau"].sel(metric="alpha_weighted", group="16")) == pytest.approx(tau)
