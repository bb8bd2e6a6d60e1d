"""The quick validation suites' assertions (issue 5), run in CI on CPU.

Tolerances and why they are what they are:
- DLN sweep: median |λ̂ − λ|/λ ≤ 10 %, none above 25 % (the issue's target; for the automatic
  ε the two-temperature λ̂₂, see ``suites.dln_sweep``). Furman & Lau (2024,
  App. E.1) report SGLD within a few percent of Aoyagi's λ from 1k to 100M parameters, so 10 %
  leaves room for our shorter CPU chains, and 25 % catches a wrong step size: reference section 6
  measured +25 % to +100 % for ε three to ten times too large.
- SGLD vs MALA: |Δλ̂| ≤ 3 combined standard errors at every n. With honest standard errors a true
  agreement fails this only with probability ≈ 0.3 % per comparison; a systematic SGLD bias
  (gradient noise or discretization heating the chain) larger than 3 se fails it.
- Rescaling: (max − min)/mean of λ̂ ≤ 10 % over α = 1e−4…1e4. Preconditioned SGLD with the
  matching G is the image of the unscaled chain, so the spread is float32 round-off plus the
  trajectories' divergence from it; plain SGLD on the rescaled posterior moves λ̂ far more.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import slt_ppl
from models import numpyro_zoo as zoo
from validation import suites

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_compare_linear_regression():
    """compare() on a regular model (λ = d/2 = 2.5): layout, the agreement rule, and accuracy."""
    model, problem = zoo.linear_regression(d=5, n=2_000, seed=3)
    post = slt_ppl.localize(model, problem.data, problem.center)
    ds = slt_ppl.compare(
        post, kernels=("sgld", "mala"), num_chains=4, num_draws=1_000, batch_size=64, progress=False
    )
    assert isinstance(ds, xr.Dataset)
    assert list(ds["kernel"].values) == ["sgld", "mala"]
    for name in ("llc", "llc_se", "healthy", "rhat", "ess", "acceptance", "wall_time_s",
                 "agrees_with_reference"):  # fmt: skip
        assert name in ds, name
    assert ds.attrs["reference"] == "mala"
    # the agreement flag is the stated rule
    s, m = ds.sel(kernel="sgld"), ds.sel(kernel="mala")
    combined = np.hypot(float(s.llc_se), float(m.llc_se))
    assert bool(s.agrees_with_reference) == (abs(float(s.llc) - float(m.llc)) <= 3 * combined)
    assert bool(m.agrees_with_reference)
    # both kernels estimate λ = 5/2 (regular model) within 3 se plus the O(1/n) localization bias
    for kernel in ("sgld", "mala"):
        row = ds.sel(kernel=kernel)
        assert abs(float(row.llc) - 2.5) <= 3 * float(row.llc_se) + 0.1 * 2.5, kernel
    assert bool(s.agrees_with_reference)
    assert (ds["wall_time_s"] > 0).all()


def test_compare_rejects_missing_reference():
    model, problem = zoo.linear_regression(d=2, n=200, seed=0)
    post = slt_ppl.localize(model, problem.data, problem.center)
    with pytest.raises(slt_ppl.SettingError):
        slt_ppl.compare(post, kernels=("sgld",), reference="mala")


def test_dln_sweep_quick_auto_and_hand_step_size():
    """Random DLNs (App. E.1) vs Aoyagi's λ, with the tuner's ε (two temperatures: λ̂₂ is held to
    λ, since the single-temperature λ̂ sits below it at n = 10⁴ by an O(1) term) and with a
    hand-tuned ε (λ̂, the paper's protocol)."""
    ds = suites.dln_sweep("quick")
    for method in ("auto", "hand"):
        err = np.abs(ds["rel_err"].where(ds["step_method"] == method, drop=True).values)
        assert err.size >= 4
        assert np.isfinite(err).all(), method
        assert np.median(err) <= suites.DLN_MEDIAN_REL_ERR, (method, err)
        assert err.max() <= suites.DLN_MAX_REL_ERR, (method, err)
    assert ds.attrs["passed"] == 1


def test_sgld_vs_mala_quick():
    """SGLD (batch 32) vs full-batch MALA at n = 100, 1000: where both verdicts are healthy they
    agree within 3 combined se, and a disagreement is never reported healthy by both (neither
    chain mixes on this d = 850 network in the quick budget; see ``suites.sgld_vs_mala``)."""
    ds = suites.sgld_vs_mala("quick")
    assert list(ds["n"].values) == [100, 1_000]
    sgld = ds.sel(kernel="sgld")
    z = np.abs(sgld["difference"].values) / sgld["combined_se"].values
    assert np.isfinite(z).all()
    both_healthy = ds["healthy"].astype(bool).all("kernel").values
    assert ((z <= suites.AGREEMENT_Z) | ~both_healthy).all(), (z, both_healthy)
    assert ds.attrs["passed"] == 1


def test_rescaling_quick():
    """λ̂ stays flat (spread ≤ 10 %) over α = 1e-4 … 1e4 with the matching preconditioner."""
    ds = suites.rescaling("quick")
    values = ds["llc"].values
    assert np.isfinite(values).all()
    assert ds["alpha"].values.max() / ds["alpha"].values.min() >= 1e8  # eight orders of magnitude
    assert (values.max() - values.min()) / values.mean() <= suites.RESCALE_MAX_SPREAD, values
    assert ds.attrs["passed"] == 1
