"""Effective dimension, 2sED and lower 2sED against closed forms from Fisher eigenvalues."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.special import logsumexp

from slt_ppl import SettingError, effective_dimension, two_scale_ed
from slt_ppl.estimators.fisher_spectra import FisherResult

SIGMA = 0.5


def linreg(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w + b, SIGMA), obs=y)


def mlp(x, y=None):
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([x.shape[1], 3]).to_event(2))
    w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.tanh(x @ w1) @ w2, 0.3), obs=y)


def closed_form(mats, n, zeta, eps, gamma=1.0):
    """Independent numpy reference: dense sqrt via eigh, slogdet of I + a·F̂^{1/2}."""
    d = mats.shape[1]
    c = d / np.mean([np.trace(m) for m in mats])
    a = eps ** (zeta - 1.0)
    kappa = gamma * n / (2 * np.pi * np.log(n))
    h2, h1 = [], []
    for m in mats:
        vals, vecs = np.linalg.eigh(c * m)
        root = vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T
        h2.append(np.linalg.slogdet(np.eye(d) + a * root)[1])
        h1.append(0.5 * np.linalg.slogdet(np.eye(d) + kappa * c * m)[1])
    lme = lambda h: logsumexp(h) - np.log(len(h))  # noqa: E731
    sed = zeta * d + (1 - zeta) * lme(np.array(h2)) / np.log(a)
    ed = 2 * lme(np.array(h1)) / np.log(kappa)
    return sed, ed


def test_linear_gaussian_matches_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = x @ np.array([1.0, -1.0, 0.5]) + SIGMA * rng.normal(size=300)
    theta = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=4)}
    n_grid, zetas = [500.0, 5.0e4], [0.0, 0.5, 2.0 / 3.0]
    ds = two_scale_ed(
        linreg,
        {"x": x, "y": y},
        theta=theta,
        empirical=True,
        num_samples=300,
        n=n_grid,
        zeta=zetas,
        num_bootstrap=20,
    )
    xb = np.c_[x, np.ones(len(x))]
    mats = []
    for t in range(4):
        r = (y - xb @ np.r_[theta["w"][t], theta["b"][t]]) / SIGMA**2
        mats.append((xb * r[:, None]).T @ (xb * r[:, None]) / len(x))
    mats = np.array(mats)
    for n in n_grid:
        eps = (np.log(n) / n) ** 0.375
        for z in zetas:
            sed, ed = closed_form(mats, n, z, eps)
            got = ds.two_scale_ed.sel(n=n, zeta=z).item()
            assert got == pytest.approx(sed, rel=1e-6)
        assert ds.effective_dimension.sel(n=n).item() == pytest.approx(ed, rel=1e-6)
    ed_only = effective_dimension(
        linreg,
        {"x": x, "y": y},
        theta=theta,
        empirical=True,
        num_samples=300,
        n=n_grid,
        gamma=0.5,
        num_bootstrap=20,
    )
    assert ed_only.effective_dimension.sel(n=500.0).item() == pytest.approx(
        closed_form(mats, 500.0, 0.5, 0.1, gamma=0.5)[1], rel=1e-6
    )


def random_fishers(rng, num, d, rank=None):
    out = []
    for _ in range(num):
        g = rng.normal(size=(rank or d, d)) * rng.uniform(0.2, 2.0, size=d)
        out.append(g.T @ g / (rank or d))
    return np.array(out)


def test_from_matrices_closed_form_and_bounds():
    rng = np.random.default_rng(1)
    mats = random_fishers(rng, 5, 6)
    fr = FisherResult.from_matrices(mats)
    for eps in [0.3, 1e-3]:
        ds = two_scale_ed(fr, eps=eps, n=1000.0, zeta=[0.0, 0.4, 0.9], num_bootstrap=10)
        for z in [0.0, 0.4, 0.9]:
            sed, ed = closed_form(mats, 1000.0, z, eps)
            got = ds.two_scale_ed.sel(eps=eps, zeta=z).item()
            assert got == pytest.approx(sed, rel=1e-6)
            assert got >= z * 6
        assert ds.effective_dimension.item() == pytest.approx(ed, rel=1e-6)


def test_full_rank_tends_to_d_and_rank_k_to_mixture():
    rng = np.random.default_rng(2)
    d, k, zeta = 8, 3, 2.0 / 3.0
    eps = np.array([1e-4, 1e-12, 1e-40, 1e-150])
    full = two_scale_ed(
        FisherResult.from_matrices(random_fishers(rng, 4, d)), eps=eps, zeta=zeta, num_bootstrap=5
    ).two_scale_ed.values[:, 0]
    low = two_scale_ed(
        FisherResult.from_matrices(random_fishers(rng, 4, d, rank=k)),
        eps=eps,
        zeta=zeta,
        num_bootstrap=5,
    ).two_scale_ed.values[:, 0]
    target = zeta * d + (1 - zeta) * k
    assert np.all(np.diff(np.abs(full - d)) < 0) and abs(full[-1] - d) < 0.02
    assert np.all(np.diff(np.abs(low - target)) < 0) and abs(low[-1] - target) < 0.02
    assert np.all(low >= zeta * d)


def test_identity_fisher_exceeds_d_at_finite_eps():
    # documents a property of the reconstructed formula: 2sED ≤ d holds only as ε → 0
    fr = FisherResult.from_matrices(np.eye(4)[None])
    val = two_scale_ed(fr, eps=0.1, zeta=0.5, num_bootstrap=3).two_scale_ed.item()
    a = 0.1**-0.5
    assert val == pytest.approx(0.5 * 4 + 0.5 * 4 * np.log1p(a) / np.log(a), rel=1e-9)
    assert val > 4


def test_lower_bound_below_2sed_and_equal_for_one_layer():
    rng = np.random.default_rng(3)
    mats = random_fishers(rng, 6, 9)
    layers = {"l1": np.arange(0, 2), "l2": np.arange(2, 6), "l3": np.arange(6, 9)}
    kw = dict(eps=[0.5, 0.1, 1e-3], zeta=[0.0, 0.5, 0.8], num_bootstrap=10)
    ds = two_scale_ed(FisherResult.from_matrices(mats, layers), **kw)
    assert np.all(ds.lower_two_scale_ed.values <= ds.two_scale_ed.values + 1e-10)
    assert np.all(ds.lower_two_scale_ed.values < ds.two_scale_ed.values - 1e-6)
    np.testing.assert_allclose(ds.layer_two_scale_ed.sum("layer"), ds.lower_two_scale_ed)
    one = two_scale_ed(FisherResult.from_matrices(mats), **kw)
    np.testing.assert_allclose(one.lower_two_scale_ed, one.two_scale_ed, rtol=1e-12)


def test_lower_bound_on_model_and_low_rank_equals_dense():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 2))
    y = np.tanh(x @ rng.normal(size=(2, 3))) @ rng.normal(size=3) + 0.3 * rng.normal(size=200)
    kw = dict(n=[200.0, 1e5], zeta=[0.3, 2.0 / 3.0], num_theta=4, num_samples=6, num_bootstrap=5)
    ds = two_scale_ed(mlp, {"x": x, "y": y}, **kw)
    assert np.all(ds.lower_two_scale_ed.values <= ds.two_scale_ed.values + 1e-9)
    assert list(ds.layer.values) == ["w1", "w2"] and ds.attrs["d"] == 9
    # k = 6 < d = 9: low-rank path; recompute densely from the kept scores
    from slt_ppl import fisher

    fr = fisher(mlp, {"x": x, "y": y}, num_theta=4, num_samples=6, keep_scores=True)
    dense = FisherResult.from_matrices(np.array([fr.matrix(t) for t in range(4)]), layers=fr.layers)
    a = two_scale_ed(fr, n=[200.0, 1e5], zeta=[0.3, 2.0 / 3.0], num_bootstrap=5)
    b = two_scale_ed(dense, n=[200.0, 1e5], zeta=[0.3, 2.0 / 3.0], num_bootstrap=5)
    np.testing.assert_allclose(a.two_scale_ed, ds.two_scale_ed, rtol=1e-10)
    np.testing.assert_allclose(a.two_scale_ed, b.two_scale_ed, rtol=1e-8)
    np.testing.assert_allclose(a.lower_two_scale_ed, b.lower_two_scale_ed, rtol=1e-6)
    np.testing.assert_allclose(a.effective_dimension, b.effective_dimension, rtol=1e-8)


def test_bad_settings():
    fr = FisherResult.from_matrices(np.eye(3)[None])
    for bad in [
        dict(zeta=1.0),
        dict(zeta=-0.1),
        dict(eps=0.0),
        dict(eps=1.5),
        dict(n=1.0),
        dict(gamma=0.0),
    ]:
        kw = {"eps": 0.1, **bad} if "n" not in bad else bad
        with pytest.raises(SettingError):
            two_scale_ed(fr, **kw)
    with pytest.raises(SettingError, match="pass n"):
        two_scale_ed(fr)
