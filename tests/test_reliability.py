"""Divergence handling, divergence retries and reproducibility (issue 9)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
from _reliability_models import (
    TRAP_CHAIN,
    TRAP_JITTER,
    TRAP_SEED,
    regression_problem,
    trap_problem,
)

import slt_ppl
from slt_ppl.errors import DivergenceError, DivergenceWarning, HealthWarning

STATS = ("loss", "loss_center", "acceptance", "grad_norm", "distance", "diverged_at")


@pytest.fixture(scope="module")
def trap_posterior():
    model, data, center = trap_problem()
    return slt_ppl.localize(model, data, center)


@pytest.fixture(scope="module")
def regression_posterior():
    model, data, center = regression_problem()
    return slt_ppl.localize(model, data, center)


def _trap_run(post, num_chains=4, **kwargs):
    return slt_ppl.sample(
        post, kernel="sgld", thin=1, num_chains=num_chains, num_draws=100, step_size=1e-3,
        seed=TRAP_SEED,
        init_jitter=TRAP_JITTER, progress=False, num_segments=4, **kwargs,
    )  # fmt: skip


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def test_nan_in_one_chain_is_frozen_masked_and_reported(trap_posterior):
    res = _trap_run(trap_posterior)
    diverged_at = res["sample_stats"]["diverged_at"].values
    step = int(diverged_at[TRAP_CHAIN])
    assert step > 0, "the trap chain must fail some steps into the run, not at its start"
    assert [int(s) for i, s in enumerate(diverged_at) if i != TRAP_CHAIN] == [-1, -1, -1]
    warm = res["warmup_sample_stats"]["loss"].values
    draws = res["sample_stats"]["loss"].values
    trace = np.concatenate([warm, draws], axis=1)  # thin = 1: draw index == step index
    assert np.all(np.isfinite(trace[TRAP_CHAIN, :step]))
    assert np.all(np.isnan(trace[TRAP_CHAIN, step:]))
    others = np.delete(trace, TRAP_CHAIN, axis=0)
    assert np.all(np.isfinite(others)), "healthy chains run on"
    with pytest.warns(DivergenceWarning, match=f"chain {TRAP_CHAIN} diverged at step {step}"):
        est = slt_ppl.llc(res)
    assert est.attrs["chains_used"] == 3
    assert est.attrs["chains_dropped"] == f"chain {TRAP_CHAIN} diverged at step {step}"
    assert np.isnan(est["llc_per_chain"].values[TRAP_CHAIN])
    assert np.isfinite(float(est["llc"]))
    # the frozen chain did not disturb the others: they equal a run without it
    three = _trap_run(trap_posterior, num_chains=3)
    for name in STATS:
        assert _same(three["sample_stats"][name].values, res["sample_stats"][name].values[:3])


def test_every_chain_diverged_raises(trap_posterior):
    res = slt_ppl.sample(
        trap_posterior, kernel="sgld", num_chains=2, num_draws=20, step_size=1e-3, init_jitter=0.0,
        progress=False, num_segments=1, seed=0,
    )  # fmt: skip
    # the same result with both chains marked diverged
    stats = res["sample_stats"].to_dataset()
    stats["diverged_at"] = ("chain", np.array([3, 7]))
    fake = xr.DataTree.from_dict({"sample_stats": stats})
    fake.attrs.update(res.attrs)
    with pytest.raises(
        DivergenceError, match="chain 0 diverged at step 3; chain 1 diverged at step 7"
    ):
        slt_ppl.llc(fake)


def test_retry_on_divergence_halves_the_step_and_records_it(trap_posterior):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        res = _trap_run(trap_posterior, retry_on_divergence=2)
    history = json.loads(res.attrs["retry_history"])
    assert res.attrs["divergence_retries"] == 2
    assert [h["step_size"] for h in history] == [1e-3, 5e-4, 2.5e-4]
    assert [h["chains_diverged"] for h in history] == [1, 1, 1]  # the trap is in the posterior
    assert res.attrs["step_size"] == 2.5e-4
    # tolerated fraction: one chain of four is not more than 0.25, so no retry
    ok = _trap_run(trap_posterior, retry_on_divergence=2, max_diverged_fraction=0.25)
    assert ok.attrs["divergence_retries"] == 0
    assert len(json.loads(ok.attrs["retry_history"])) == 1


def test_retry_rescues_an_unstable_step_size(regression_posterior):
    from slt_ppl.sampling.stepsize import top_curvature

    h = top_curvature(regression_posterior, regression_posterior.data)
    eps = 5.0 / h  # |1 - eps*h/2| = 1.5: the top direction blows up; eps/2 is stable
    kw = dict(kernel="sgld", thin=1, num_chains=2, num_draws=100, step_size=eps, progress=False,
              num_segments=2)  # fmt: skip
    # untamed (``kernels.base.tame_drift`` off), the unstable direction blows up and is retried
    with pytest.warns(HealthWarning, match="unstable"):
        res = slt_ppl.sample(
            regression_posterior, retry_on_divergence=1, kernel_options={"tame": None}, **kw
        )
    history = json.loads(res.attrs["retry_history"])
    assert history[0]["chains_diverged"] == 2
    assert history[1] == {"step_size": eps / 2, "chains_diverged": 0}
    assert (res["sample_stats"]["diverged_at"].values == -1).all()
    # tamed (the default), the chains stay finite at the same ε, and the verdict says why it is wrong
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = slt_ppl.llc(slt_ppl.sample(regression_posterior, **kw), warn=False)
    checks = dict(zip(est["check"].values, est["check_passed"].values, strict=True))
    assert est.attrs["healthy"] == 0 and not checks["tamed"], est.attrs["verdict"]


def test_same_seed_same_result_and_chains_independent_of_num_chains(regression_posterior):
    kwargs = dict(
        kernel="sgld", thin=1, num_draws=60, step_size=1e-3, seed=3, progress=False, num_segments=3
    )
    four = slt_ppl.sample(regression_posterior, num_chains=4, init_jitter=0.1, **kwargs)
    again = slt_ppl.sample(regression_posterior, num_chains=4, init_jitter=0.1, **kwargs)
    two = slt_ppl.sample(regression_posterior, num_chains=2, init_jitter=0.1, **kwargs)
    other_seed = slt_ppl.sample(
        regression_posterior, num_chains=4, init_jitter=0.1, **{**kwargs, "seed": 4}
    )
    for group in ("sample_stats", "warmup_sample_stats"):
        for name in STATS:
            if name not in four[group]:
                continue
            a = four[group][name].values
            assert _same(a, again[group][name].values), (group, name)
            assert _same(a[:2], two[group][name].values), (group, name)
    assert not np.array_equal(four["sample_stats"]["loss"], other_seed["sample_stats"]["loss"])
    attrs = four.attrs
    assert attrs["slt_ppl_version"] == slt_ppl.__version__
    assert json.loads(attrs["versions"])["jax"]
    for key, value in {
        "backend": "numpyro", "kernel": "sgld", "seed": 3, "num_chains": 4, "num_draws": 60,
        "step_size": 1e-3, "init_jitter": 0.1, "thin": 1, "n": 200, "dim": 2,
    }.items():  # fmt: skip
        assert attrs[key] == value, key
    for key in ("nbeta", "gamma", "batch_size", "num_burnin", "diag_every", "explode"):
        assert key in attrs
