"""Refined LLCs (slt_ppl.estimators.refined) of a DLN's middle layer and of part of it, on the
NumPyro backend, against their Gaussian closed forms (test_restrict.middle_layer_llc); the table,
its checks and the bar plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from test_restrict import GAMMA, PROBLEM, mala_run, middle_layer_llc

import slt_ppl
from models import numpyro_zoo
from slt_ppl.estimators.refined import plot_refined_llc, refined_llcs, sample_components


@pytest.fixture(scope="module")
def table():
    model, problem = numpyro_zoo.dln(**PROBLEM)
    full = slt_ppl.localize(model, problem.data, problem.center, gamma=GAMMA)
    first_rows = np.zeros((4, 4), bool)
    first_rows[:2] = True  # W1[0:2, :]: 8 coordinates
    components = {"w1": ["w1"], "w1[:2]": {"w1": first_rows}}
    exact = {
        "w1": middle_layer_llc(problem, full.nbeta, GAMMA),
        "w1[:2]": middle_layer_llc(problem, full.nbeta, GAMMA, np.flatnonzero(first_rows)),
    }
    step = 1.5 / exact["w1"][1]  # ε·h_max = 1.5 for W1, less for its part
    return refined_llcs(sample_components(full, components, **mala_run(step))), exact


def test_refined_llcs_match_their_closed_forms(table):
    ds, exact = table
    assert list(ds["component"].values) == ["w1", "w1[:2]"]
    for name, (value, _) in exact.items():
        llc, se = float(ds["llc"].sel(component=name)), float(ds["llc_se"].sel(component=name))
        # 3 se: Monte Carlo error; 5 %: step-size budget (MALA is exact, so it is slack)
        assert abs(llc - value) <= 3 * se + 0.05 * value, (name, llc, se, value)
    assert ds["sampled_dim"].values.tolist() == [16, 8]
    assert bool(ds["healthy"].all()), ds["verdict"].values
    assert json.loads(str(ds["restricted_to"].sel(component="w1[:2]").values))["sampled"] == {
        "w1": 8
    }
    assert ds.attrs["full_dim"] == 36 and ds["gamma"].values.tolist() == [GAMMA, GAMMA]


def test_plot_refined_llc_writes_a_figure(table, tmp_path):
    ds, _ = table
    unhealthy = ds.copy()
    unhealthy["healthy"] = ("component", [True, False])
    unhealthy["verdict"] = ("component", ["healthy", "R-hat 1.3 > 1.01"])
    fig = plot_refined_llc(unhealthy, tmp_path / "refined.png")
    assert (tmp_path / "refined.png").stat().st_size > 5000
    bars = [p for p in fig.axes[0].patches if p.get_height() != 1]
    assert [round(b.get_height(), 6) for b in bars[:2]] == [round(float(v), 6) for v in ds["llc"]]
    assert bars[1].get_hatch() == "//"


def test_refined_llcs_refuse_mixed_temperatures():
    fake = xr.DataTree()
    fake.attrs.update({"n": 400, "nbeta": 1.0})
    other = xr.DataTree()
    other.attrs.update({"n": 400, "nbeta": 2.0})
    with pytest.raises(slt_ppl.SettingError, match="different nbeta"):
        refined_llcs({"a": fake, "b": other})
    with pytest.raises(slt_ppl.SettingError, match="results is empty"):
        refined_llcs({})
