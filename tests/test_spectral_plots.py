"""Plots return matplotlib Figures with the promised content and save PNG files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from slt_ppl.errors import ResultError
from slt_ppl.estimators.spectral import spectral
from slt_ppl.estimators.spectral.plots import plot_alpha, plot_esd, plot_ks


@pytest.fixture(scope="module")
def result() -> xr.Dataset:
    rng = np.random.default_rng(0)
    return spectral({"a": rng.standard_t(3, (120, 60)), "b": rng.standard_normal((80, 40))})


def test_esd_plot_has_tail_and_xmin(result: xr.Dataset, tmp_path) -> None:
    fig = plot_esd(result, "a", save=tmp_path / "esd.png")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    xmin = float(result["xmin"].sel(layer="a"))
    assert any(np.allclose(line.get_xdata(), xmin) for line in ax.get_lines())
    assert (tmp_path / "esd.png").stat().st_size > 1000


def test_ks_plot_marks_the_minimum(result: xr.Dataset) -> None:
    fig = plot_ks(result, "a")
    curve = fig.axes[0].get_lines()[0]
    d = np.asarray(curve.get_ydata())
    assert d.min() == pytest.approx(float(result["D"].sel(layer="a")))


def test_alpha_plot_single_and_posterior(result: xr.Dataset, tmp_path) -> None:
    fig = plot_alpha(result, save=tmp_path / "alpha.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]
    rng = np.random.default_rng(1)
    post = xr.Dataset({"w": (("chain", "draw", "i", "j"), rng.standard_normal((2, 3, 30, 20)))})
    ds = spectral(xr.DataTree.from_dict({"posterior": post}))
    assert isinstance(plot_alpha(ds), Figure)
    with pytest.raises(ResultError, match="evals"):
        plot_esd(ds, "w")
