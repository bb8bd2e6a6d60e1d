"""Fisher information from the model vs analytic Fishers; NumPyro vs Pyro; error messages."""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from slt_ppl import DataError, ModelError, SettingError, fisher
from slt_ppl.estimators.fisher_spectra import spectra_from_matrix, spectra_from_scores

SIGMA = 0.5


def linreg(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w + b, SIGMA), obs=y)


def logreg(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ w), obs=y)


@pytest.fixture(scope="module")
def regdata():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = x @ np.array([1.0, -1.0, 0.5]) + 0.3 + SIGMA * rng.normal(size=400)
    return x, y


def test_empirical_fisher_matches_closed_form_scores(regdata):
    x, y = regdata
    theta = {"w": np.array([[1.0, -0.5, 0.2], [0.1, 0.2, 0.3]]), "b": np.array([0.3, -1.0])}
    fr = fisher(
        linreg, {"x": x, "y": y}, theta=theta, empirical=True, num_samples=400, keep_scores=True
    )
    xb = np.c_[x, np.ones(len(x))]
    for t in range(2):
        wb = np.r_[theta["w"][t], theta["b"][t]]
        score = ((y - xb @ wb) / SIGMA**2)[:, None] * xb
        np.testing.assert_allclose(fr.matrix(t), score.T @ score / len(x), rtol=1e-4)
    assert fr.layers["w"].tolist() == [0, 1, 2] and fr.layers["b"].tolist() == [3]


def test_sampled_fisher_matches_analytic_linear_gaussian(regdata):
    x, y = regdata
    fr = fisher(
        linreg, {"x": x, "y": y}, num_theta=1, num_samples=400, num_y=25, keep_scores=True, seed=3
    )
    xb = np.c_[x, np.ones(len(x))]
    analytic = xb.T @ xb / (len(x) * SIGMA**2)
    err = np.linalg.norm(fr.matrix(0) - analytic) / np.linalg.norm(analytic)
    assert err < 0.06


def test_sampled_fisher_matches_analytic_logistic():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 3))
    y = (rng.uniform(size=400) < 0.5).astype(np.float32)
    w = np.array([[0.8, -0.4, 0.3]])
    fr = fisher(
        logreg,
        {"x": x, "y": y},
        theta={"w": w},
        num_samples=400,
        num_y=25,
        keep_scores=True,
        seed=5,
    )
    p = 1.0 / (1.0 + np.exp(-x @ w[0]))
    analytic = (x * (p * (1 - p))[:, None]).T @ x / len(x)
    err = np.linalg.norm(fr.matrix(0) - analytic) / np.linalg.norm(analytic)
    assert err < 0.06


def test_numpyro_and_pyro_agree():
    torch = pytest.importorskip("torch")
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as pdist

    def pmodel(x, y=None):
        w = pyro.sample("w", pdist.Normal(0.0, 1.0).expand([3]).to_event(1))
        s = pyro.sample("s", pdist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", pdist.Normal(x @ w, s), obs=y)

    def nmodel(x, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ w, s), obs=y)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.0, -1.0, 0.5]) + 0.5 * rng.normal(size=200)
    theta = {"w": np.array([[1.0, -1.0, 0.5], [0.2, 0.3, 0.1]]), "s": np.array([0.5, 1.2])}
    tdata = {"x": torch.tensor(x, dtype=torch.float32), "y": torch.tensor(y, dtype=torch.float32)}
    a = fisher(pmodel, tdata, theta=theta, empirical=True, num_samples=200, keep_scores=True)
    b = fisher(
        nmodel, {"x": x, "y": y}, theta=theta, empirical=True, num_samples=200, keep_scores=True
    )
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-4)
    # model-sampled responses: same analytic Fisher in expectation for σ fixed by theta
    c = fisher(pmodel, tdata, theta=theta, num_samples=200, num_y=20, keep_scores=True)
    d = fisher(nmodel, {"x": x, "y": y}, theta=theta, num_samples=200, num_y=20, keep_scores=True)
    for t in range(2):
        rel = np.linalg.norm(c.matrix(t) - d.matrix(t)) / np.linalg.norm(d.matrix(t))
        assert rel < 0.15


def test_low_rank_spectra_equal_dense():
    rng = np.random.default_rng(4)
    j = rng.normal(size=(8, 30)) * rng.uniform(0.1, 3.0, size=30)
    cols = {"a": np.arange(0, 5), "b": np.arange(5, 20), "c": np.arange(20, 30)}
    low = spectra_from_scores(j, cols)
    dense = spectra_from_matrix(j.T @ j / 8, cols)
    np.testing.assert_allclose(low[0], dense[0][:8], rtol=1e-8, atol=1e-10)
    assert np.allclose(dense[0][8:], 0.0, atol=1e-10)
    for name in cols:
        r = len(low[1][name])
        np.testing.assert_allclose(low[1][name], dense[1][name][:r], rtol=1e-8, atol=1e-10)
        r = len(low[2][name])
        np.testing.assert_allclose(low[2][name], dense[2][name][:r], rtol=1e-7, atol=1e-9)
    assert low[3] == pytest.approx(dense[3])


def test_errors(regdata):
    x, y = regdata

    def discrete(x, y=None):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(z * x[:, 0], 1.0), obs=y)

    def unobserved(x, y=None):
        numpyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ModelError, match="'z' is discrete"):
        fisher(discrete, {"x": x, "y": y})
    with pytest.raises(ModelError, match="no observed"):
        fisher(unobserved, {"x": x})
    bad = y.copy()
    bad[3] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        fisher(linreg, {"x": x, "y": bad})
    with pytest.raises(SettingError, match="unknown latent site"):
        fisher(linreg, {"x": x, "y": y}, layers={"l1": ["w", "nope"]})
    with pytest.raises(SettingError, match="partition"):
        fisher(linreg, {"x": x, "y": y}, layers={"l1": ["w"]})
