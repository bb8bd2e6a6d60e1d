"""Suspicious inputs are caught before sampling starts (issue 9, part 4)."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _reliability_models import regression_model, regression_problem

import slt_ppl
from slt_ppl.backends.common import validate_data
from slt_ppl.errors import (
    DataError,
    DataWarning,
    HealthWarning,
    ModelError,
    SettingError,
    SuspiciousCenterWarning,
)
from slt_ppl.preflight import check_step_size


def test_center_off_the_minimum_warns_and_llc_goes_negative():
    model, data, center = regression_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SuspiciousCenterWarning)
        good = slt_ppl.localize(model, data, center)  # the least-squares point: no warning
    assert good.info["center_grad_z"] < 1e-2
    off = {"w": center["w"] + np.float32(0.5)}
    with pytest.warns(SuspiciousCenterWarning, match="does not look like a local minimum"):
        post = slt_ppl.localize(model, data, off)
    assert post.info["center_grad_z"] > 5
    res = slt_ppl.sample(post, num_chains=2, num_draws=200, step_size=1e-3, progress=False)
    assert res.attrs["center_grad_z"] == post.info["center_grad_z"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HealthWarning)
        with pytest.warns(SuspiciousCenterWarning, match="negative LLC"):
            est = slt_ppl.llc(res)
    # the verdict's center check: a center off the minimum is never "healthy"
    assert not est.attrs["healthy"]
    assert "center: " in est.attrs["verdict"] and "not a local minimum" in est.attrs["verdict"]
    assert not bool(est["check_passed"].sel(check="center"))
    good_res = slt_ppl.sample(good, num_chains=2, num_draws=200, step_size=1e-3, progress=False)
    assert bool(slt_ppl.llc(good_res, warn=False)["check_passed"].sel(check="center"))


def test_huge_step_size_warns_before_sampling():
    model, data, center = regression_problem()
    post = slt_ppl.localize(model, data, center)
    assert check_step_size(post, 1e-6) < 2
    with pytest.warns(HealthWarning, match="unstable"):
        product = check_step_size(post, 1.0)
    assert product >= 2


def test_model_without_observed_site():
    def prior_only(x):
        numpyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ModelError, match="no observed sample site"):
        slt_ppl.localize(prior_only, {"x": np.ones(5)}, {"w": 0.0})


def test_improper_likelihood_at_center():
    def zero_scale(y):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(0.0, jnp.abs(w)), obs=y)  # scale 0 at w* = 0

    with pytest.raises(ModelError, match="not finite"):
        slt_ppl.localize(zero_scale, {"y": np.linspace(-1, 1, 10)}, {"w": 0.0})


def test_integer_data_for_a_continuous_site_warns():
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    y = np.arange(50) % 3  # labels fed to a Normal likelihood
    with pytest.warns(DataWarning, match="continuous distribution .* integer data"):
        slt_ppl.localize(regression_model, {"x": x, "y": y}, {"w": np.zeros(2, np.float32)})


def test_observed_values_outside_the_support():
    def logistic(x, y):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)

    x = np.linspace(-1, 1, 20).astype(np.float32)
    with pytest.raises(DataError, match="outside its support"):
        slt_ppl.localize(logistic, {"x": x, "y": np.arange(20) % 3}, {"w": 0.0})


class _CudaTensor:
    """Quacks like a torch tensor on a GPU."""

    class device:  # mimics torch.device
        type = "cuda"

        def __str__(self) -> str:
            return "cuda:0"

    device = device()

    def detach(self):
        return self

    def cpu(self):  # pragma: no cover - must not be reached
        raise AssertionError("the data must not be copied silently")


def test_tensor_on_an_accelerator_is_refused():
    with pytest.raises(DataError, match="torch tensor on device cuda:0"):
        validate_data({"x": _CudaTensor()})


def test_values_beyond_32_bits_are_refused():
    with pytest.raises(DataError, match="outside int32"):
        validate_data({"x": np.array([0, 2**40], dtype=np.int64)})
    with pytest.raises(DataError, match="beyond float32"):
        validate_data({"x": np.array([0.0, 1e300])})
    _, n = validate_data({"x": np.array([0, 2**20], dtype=np.int64)})
    assert n == 2


def test_failing_user_code_becomes_a_model_error():
    def broken(x):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        first, _, _ = jnp.split(x, 3)  # needs a length divisible by 3
        numpyro.sample("y", dist.Normal(w * first, 1.0), obs=first)

    with pytest.raises(ModelError, match="raised ValueError"):
        slt_ppl.localize(broken, {"x": np.ones((10, 2))}, {"w": 0.0})

    def branchy(params, batch):
        if params["w"] > 0:  # Python branching on a traced value
            return jnp.mean((batch["y"] - params["w"]) ** 2)
        return jnp.mean(batch["y"] ** 2)

    with pytest.raises(ModelError, match="traceable by JAX"):
        slt_ppl.localize(branchy, {"y": np.ones(10)}, {"w": jnp.asarray(0.5)})
    with pytest.raises(SettingError, match="unknown keyword"):
        slt_ppl.localize(regression_model, {"x": np.ones((4, 1)), "y": np.ones(4)}, {}, foo=1)
