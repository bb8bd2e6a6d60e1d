"""Bad input gets our own clear errors, naming the problem."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import slt_ppl
from models import numpyro_zoo as zoo
from slt_ppl.errors import CenterError, DataError, ModelError, SettingError


@pytest.fixture(scope="module")
def linear():
    return zoo.linear_regression(d=3, n=200)


def test_discrete_latent_site_is_named():
    def model(x, y=None):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        w = numpyro.sample("w", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(w * x + k, 1.0), obs=y)

    data = {"x": np.ones(10, np.float32), "y": np.ones(10, np.float32)}
    with pytest.raises(ModelError, match="'k' is discrete"):
        slt_ppl.localize(model, data, {"k": 1.0, "w": 0.0})


def test_non_finite_data(linear):
    model, p = linear
    data = dict(p.data)
    data["y"] = data["y"].copy()
    data["y"][3] = np.nan
    with pytest.raises(DataError, match=r"data\['y'\] holds 1 non-finite"):
        slt_ppl.localize(model, data, p.center)


def test_mismatched_leading_lengths(linear):
    model, p = linear
    data = {"x": p.data["x"], "y": p.data["y"][:-1]}
    with pytest.raises(DataError, match="share their leading length"):
        slt_ppl.localize(model, data, p.center)


def test_center_missing_and_extra_sites(linear):
    model, p = linear
    with pytest.raises(CenterError, match=r"missing latent site\(s\) \['w'\]"):
        slt_ppl.localize(model, p.data, {})
    with pytest.raises(CenterError, match=r"unknown site\(s\) \['b'\]"):
        slt_ppl.localize(model, p.data, {**p.center, "b": np.zeros(1)})


def test_center_wrong_shape(linear):
    model, p = linear
    with pytest.raises(CenterError, match=r"center\['w'\] has shape \(4,\)"):
        slt_ppl.localize(model, p.data, {"w": np.zeros(4)})


def test_center_outside_support():
    def model(x, y=None):
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(x, s), obs=y)

    data = {"x": np.ones(10, np.float32), "y": np.ones(10, np.float32)}
    with pytest.raises(CenterError, match="outside the support"):
        slt_ppl.localize(model, data, {"s": -1.0})


def test_no_observed_site():
    def model(x):
        numpyro.sample("w", dist.Normal(0, 1))

    with pytest.raises(ModelError, match="no observed sample site"):
        slt_ppl.localize(model, {"x": np.ones(5)}, {"w": 0.0})


def test_batch_size_larger_than_n(linear):
    model, p = linear
    post = slt_ppl.localize(model, p.data, p.center)
    with pytest.raises(
        SettingError, match="batch_size = 500 exceeds the number of data points n = 200"
    ):
        slt_ppl.sample(post, batch_size=500, progress=False)


def test_bad_settings(linear):
    model, p = linear
    post = slt_ppl.localize(model, p.data, p.center)
    with pytest.raises(SettingError, match="unknown kernel"):
        slt_ppl.sample(post, kernel="langevin", progress=False)
    with pytest.raises(SettingError, match="step_size"):
        slt_ppl.sample(post, step_size=-1.0, progress=False)
    with pytest.raises(SettingError, match="num_chains"):
        slt_ppl.sample(post, num_chains=0, progress=False)


def test_data_keys_must_match_model(linear):
    model, p = linear
    with pytest.raises(ModelError, match="keyword arguments"):
        slt_ppl.localize(model, {"inputs": p.data["x"], "y": p.data["y"]}, p.center)


def test_improper_likelihood_at_center():
    def model(x, y=None):
        w = numpyro.sample("w", dist.Normal(0, 1))
        numpyro.sample("y", dist.HalfNormal(1.0), obs=y - w * x)

    data = {"x": np.ones(10, np.float32), "y": -np.ones(10, np.float32)}
    # the model is traced at the center, so the observed values y − w*·x are checked against the
    # support there (before the loss is evaluated)
    with pytest.raises(DataError, match="outside its support"):
        slt_ppl.localize(model, data, {"w": 0.0})


def test_non_finite_loss_at_center():
    def model(x, y=None):
        s = numpyro.sample("s", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(x, jnp.abs(s)), obs=y)  # zero scale at s = 0

    data = {"x": np.zeros(10, np.float32), "y": np.ones(10, np.float32)}
    with pytest.raises(ModelError, match="not finite"):
        slt_ppl.localize(model, data, {"s": 0.0})
