"""Bad input to the Pyro backend gets the same errors (classes and wording) as the NumPyro path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")

import numpyro  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
import pyro.distributions as dist  # noqa: E402

import slt_ppl  # noqa: E402
from slt_ppl.errors import CenterError, DataError, ModelError, SettingError  # noqa: E402

torch.set_num_threads(1)


def pyro_regression(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, s), obs=y)


def numpyro_regression(x, y=None):
    w = numpyro.sample("w", ndist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    s = numpyro.sample("s", ndist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", ndist.Normal(x @ w, s), obs=y)


def pyro_discrete(x, y=None):
    k = pyro.sample("k", dist.Categorical(torch.ones(3) / 3))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x[:, 0] * k, 1.0), obs=y)


def pyro_prior_only(x, y=None):
    pyro.sample("w", dist.Normal(0.0, 1.0))


def make_data(n: int = 50, d: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return {"x": x, "y": (x @ np.ones(d) + rng.normal(size=n)).astype(np.float32)}


CENTER = {"w": np.ones(3, np.float32), "s": np.float32(1.0)}


def message(model, data, center, backend):
    with pytest.raises(slt_ppl.SLTError) as info:
        slt_ppl.localize(model, data, center, gamma=1.0, backend=backend)
    return type(info.value), str(info.value)


def both(data, center) -> tuple[tuple, tuple]:
    return (
        message(pyro_regression, data, center, "pyro"),
        message(numpyro_regression, data, center, "numpyro"),
    )


def test_pyro_model_is_detected_and_localized():
    post = slt_ppl.localize(pyro_regression, make_data(), CENTER, gamma=1.0)
    assert type(post).__name__ == "TorchLocalPosterior"
    assert post.backend == "pyro" and post.dim == 4
    assert post.sites == {"w": (3,), "s": ()}
    assert np.isfinite(post.info["loss_center_full"])
    # the center of the positive site is stored unconstrained (log 1 = 0)
    assert float(post.center[-1]) == pytest.approx(0.0, abs=1e-6)
    params = post.center_params()
    assert float(params["s"]) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"x": np.full((50, 3), np.nan, np.float32)}, DataError),  # non-finite data
        ({"y": np.zeros(49, np.float32)}, DataError),  # mismatched lengths
    ],
)
def test_bad_data_same_error_as_numpyro(change, error):
    data = {**make_data(), **change}
    pyro_err, numpyro_err = both(data, CENTER)
    assert pyro_err == numpyro_err
    assert pyro_err[0] is error


@pytest.mark.parametrize(
    ("center", "needle"),
    [
        ({"w": np.ones(3, np.float32)}, "missing latent site(s) ['s']"),
        ({**CENTER, "z": np.float32(0.0)}, "unknown site(s) ['z']"),
        ({"w": np.ones(4, np.float32), "s": np.float32(1.0)}, "has shape (4,)"),
        ({"w": np.array([1.0, np.nan, 1.0], np.float32), "s": np.float32(1.0)}, "non-finite"),
        ({"w": np.ones(3, np.float32), "s": np.float32(-1.0)}, "outside the support"),
        ([1.0, 2.0], "must be a dict"),
    ],
)
def test_bad_center_same_error_as_numpyro(center, needle):
    pyro_err, numpyro_err = both(make_data(), center)
    assert pyro_err[0] is CenterError and numpyro_err[0] is CenterError
    assert needle in pyro_err[1] and needle in numpyro_err[1]
    if needle != "outside the support":  # the support's repr differs between the two libraries
        assert pyro_err[1] == numpyro_err[1]


def test_discrete_latent_site_is_refused():
    err_type, text = message(pyro_discrete, make_data(), {"k": 1}, "pyro")
    assert err_type is ModelError and "'k' is discrete" in text


def test_no_observed_site_is_refused():
    err_type, text = message(pyro_prior_only, make_data(), {"w": 0.0}, "pyro")
    assert err_type is ModelError and "no observed sample site" in text


def test_batch_size_above_n_is_refused():
    post = slt_ppl.localize(pyro_regression, make_data(), CENTER, gamma=1.0)
    with pytest.raises(SettingError, match="exceeds the number of data points n = 50"):
        slt_ppl.sample(post, batch_size=51, step_size=1e-4, progress=False)


def test_module_options_only_for_modules():
    with pytest.raises(SettingError, match=r"torch\.nn\.Module"):
        slt_ppl.localize(
            pyro_regression, make_data(), CENTER, gamma=1.0, backend="pyro", likelihood="gaussian"
        )


def test_module_center_defaults_to_weights_and_bad_likelihood():
    module = torch.nn.Linear(3, 1)
    post = slt_ppl.localize(module, make_data(), gamma=1.0)
    weights = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    assert torch.equal(post.center, weights)
    assert post.sites == {"weight": (1, 3), "bias": (1,)}
    with pytest.raises(SettingError, match="likelihood must be one of"):
        slt_ppl.localize(module, make_data(), likelihood="poisson")
