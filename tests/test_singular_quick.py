"""The ``singular`` suite's machinery on its cheapest quick case: the crossing y = w1·w2·x + noise at
w* = 0 on devinterp's data (n = 1000, σ = 0.25, x ~ N(0, 4)), exact value by quadrature, the
library defaults and SGLD at their automatic settings.

Two kinds of assertion:
- structure and the reference (``test_structure_and_reference``, independent of the sampler):
  the rows, the exact value against the independent one-dimensional integral of
  ``models.quadrature``, z and the pass rule recomputed from each row, the Markdown table;
- the defaults' accuracy (``test_defaults_pass_at_the_crossing``): the suite's pass rule on this
  case. It depends on the sampler (issue 13). Measured before the fixes (seed 0): the defaults and
  SGLD gave 0.366 ± 0.074 for the exact 0.196, z = +2.3: inside 3 combined se + 5 % only because
  the se is wide, so it passes, narrowly; a change of the defaults that heats the chains further
  (or narrows the se without removing the bias) makes it fail, which is the point.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.quadrature import crossing_llc_from_data
from validation import singular

CASE = "crossing w1^2·w2^2 n=1000"


@pytest.fixture(scope="module")
def suite():
    return singular.singular_suite("quick", only=[CASE])


def test_structure_and_reference(suite):
    ds = suite
    assert list(ds["kernel"].values) == ["default", "sgld"]
    assert set(ds["case"].values) == {CASE}
    for key in ("suite", "title", "criterion", "passed", "summary", "settings", "wall_time_s"):
        assert key in ds.attrs
    assert ds.attrs["suite"] == "singular"
    # the exact value is the posterior's own: check it against models.quadrature (w1 analytic)
    post, _, theory = singular.build(singular.crossing_case((1, 1), 1000))
    x = np.asarray(post.data["x"], np.float64) / 0.25
    y = np.asarray(post.data["y"], np.float64) / 0.25
    exact = crossing_llc_from_data(x, y, (1, 1), post.gamma, post.nbeta)
    np.testing.assert_allclose(ds["exact"].values, exact, rtol=1e-8)
    assert theory == 0.5 and np.all(ds["exact_method"].values == "quadrature")
    # z and the pass rule, recomputed from the row
    for i in range(ds.sizes["run"]):
        r = {k: ds[k].values[i].item() for k in ds.data_vars}
        combined = math.hypot(r["llc_se"], r["exact_se"])
        if r["diverged"]:
            assert r["passed"] == 0
            continue
        assert r["z"] == pytest.approx((r["llc"] - r["exact"]) / combined)
        ok = abs(r["llc"] - r["exact"]) <= 3 * combined + 0.05 * abs(r["exact"])
        assert r["passed"] == int(ok and r["verdict_ok"] == 1)
        assert r["verdict_ok"] == int(r["healthy"] == 1)  # exact > 0 here: healthy is expected
        assert r["llc2_passed"] == -1  # n = 1000 < 5000: no two-temperature check here
    table = singular.markdown_table(ds)
    assert table.count("\n") == ds.sizes["run"] + 1 and CASE in table


def test_a_center_that_is_no_minimum_must_be_flagged_by_the_center_check_alone():
    assert singular.verdict_as_expected("", 0.2) and singular.verdict_as_expected("", -0.02)
    assert singular.verdict_as_expected("center", -0.02)  # exact < 0: w* is no minimum of L_n
    assert not singular.verdict_as_expected("center", 0.2)
    assert not singular.verdict_as_expected("center,rhat", -0.02)
    assert not singular.verdict_as_expected("rhat", -0.02)


def test_defaults_pass_at_the_crossing(suite):  # depends on the sampler (module docstring)
    assert suite.attrs["passed"] == 1, singular.markdown_table(suite)
