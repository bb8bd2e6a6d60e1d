"""Tamed drift (``kernels.base.tame_drift``): Euler–Maruyama explodes on drifts that grow faster
than linearly (Mattingly, Stuart & Higham 2002); the SG kernels clip each coordinate's drift at
``tame`` noise standard deviations, count the clipped steps and the verdict checks the count.

The model: L(w) = w⁴ in one dimension, n = 100, nβ = n/log n = 21.7, so U = nβ·w⁴ + γ/2·w². The
Euler map w ← w − 2εnβ·w³ = w·(1 − 2εnβw²) overshoots and grows once εnβw² > 1, i.e. beyond
|w| = 6.8 at ε = 1e-3; chains started at w* + 10·N(0, 1) begin there with probability 0.5 (the
divergence threshold ``explode`` is raised to 10⁶ so that the start itself does not count as a
divergence). In the bulk (|w| ≈ 0.46) εU'' ≈ 0.05, where the Euler chain is accurate and no step
is clipped. The exact λ of this localized posterior, nβ·(E[L] − L(w*)), is a one-dimensional
integral (trapezoid rule).
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import slt_ppl
from slt_ppl.kernels.base import tame_drift
from slt_ppl.kernels_torch.base import tame_drift as tame_drift_torch

N, GAMMA, EPS = 100, 1.0, 1e-3


def quartic_posterior():
    data = {"x": jnp.ones((N, 1))}

    def loss(w, batch):
        return jnp.sum(w**4) * jnp.mean(batch["x"] ** 2)

    return slt_ppl.localize(loss, data, jnp.zeros(1), gamma=GAMMA, backend="jax")


def exact_llc(nbeta: float) -> float:
    """nβ·E[w⁴] under p(w) ∝ exp(−nβw⁴ − γw²/2) (trapezoid rule on a grid far past the tails)."""
    w = np.linspace(-3.0, 3.0, 200_001)
    log_p = -nbeta * w**4 - 0.5 * GAMMA * w**2
    p = np.exp(log_p - log_p.max())
    return float(nbeta * np.trapezoid(w**4 * p, w) / np.trapezoid(p, w))


def run(post, **kw):
    settings = dict(step_size=EPS, kernel="sgld", num_chains=8, num_draws=1000, thin=20,
                    init_jitter=10.0, seed=0, progress=False, explode=1e6)  # fmt: skip
    settings.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return slt_ppl.sample(post, **settings)


def check(ds, name):
    i = list(ds["check"].values).index(name)
    return bool(ds["check_passed"].values[i]), str(ds["check_detail"].values[i])


def test_tame_drift_is_the_identity_below_the_limit_and_clips_above():
    eps, limit = 1e-2, 3.0
    grad = jnp.asarray([1.0, -50.0, 70.0, -1e6])  # √ε·|g|/2 = 0.05, 2.5, 3.5, 5e4 noise sd
    precond = jnp.asarray([1.0, 1.0, 1.0, 4.0])
    out, tamed = tame_drift(grad, eps, precond, limit)
    assert bool(tamed)
    np.testing.assert_array_equal(np.asarray(out[:2]), np.asarray(grad[:2]))  # bit for bit
    # clipped: the drift (ε/2)·G·g̃ is exactly `limit` noise sd √(εG), with the gradient's sign
    drift = 0.5 * eps * np.asarray(precond[2:]) * np.asarray(out[2:])
    np.testing.assert_allclose(drift, np.sign(grad[2:]) * limit * np.sqrt(eps * precond[2:]))
    same, none = tame_drift(grad[:2], eps, 1.0, limit)
    assert not bool(none) and np.array_equal(np.asarray(same), np.asarray(grad[:2]))
    untouched, off = tame_drift(grad, eps, precond, None)
    assert untouched is grad and not bool(off)
    # the torch twin (chains along axis 0) gives the same numbers
    g_t = torch.tensor(np.stack([np.asarray(grad), np.asarray(grad[::-1])]), dtype=torch.float64)
    p_t = torch.tensor(np.stack([np.asarray(precond)] * 2), dtype=torch.float64)
    out_t, tamed_t = tame_drift_torch(g_t, eps, p_t, limit)
    np.testing.assert_allclose(out_t[0].numpy(), np.asarray(out), rtol=1e-6)
    assert tamed_t.tolist() == [True, True]
    assert tame_drift_torch(g_t, eps, p_t, None)[1] is None


def test_untamed_chains_explode_on_a_quartic_and_tamed_ones_match_quadrature():
    post = quartic_posterior()
    exact = exact_llc(float(post.nbeta))
    wild = run(post, kernel_options={"tame": None})
    dead = int((wild["sample_stats"]["diverged_at"].values >= 0).sum())
    assert dead >= 2, dead  # started past |w| = 6.8, the plain Euler chains blow up
    tamed = run(post)
    stats = tamed["sample_stats"]
    assert int((stats["diverged_at"].values >= 0).sum()) == 0
    assert float(np.nansum(tamed["warmup_sample_stats"]["tamed"].values)) > 0  # walked in
    est = slt_ppl.llc(tamed, warn=False)
    passed, detail = check(est, "tamed")
    assert passed and float(np.nansum(stats["tamed"].values)) == 0, detail  # bulk: never clipped
    llc, se = float(est["llc"]), float(est["llc_se"])
    # first-order heating ≈ 1 % at this ε (llc_bias_estimate 0.002); 3 se + 5 % as the suite's criterion
    assert abs(llc - exact) <= 3 * se + 0.05 * exact, (llc, se, exact)


def test_a_step_too_large_for_the_bulk_is_tamed_often_and_not_healthy():
    post = quartic_posterior()
    est = slt_ppl.llc(run(post, step_size=50 * EPS, init_jitter=0.0), warn=False)  # 1.4 % clipped
    passed, detail = check(est, "tamed")
    assert not passed and "decrease the step size" in detail, detail
    assert est.attrs["healthy"] == 0


@pytest.mark.parametrize("kernel", ["rmsprop_sgld", "sghmc", "sgnht"])
def test_every_sg_kernel_tames(kernel):
    post = quartic_posterior()
    res = run(post, kernel=kernel, num_draws=200)
    assert int((res["sample_stats"]["diverged_at"].values >= 0).sum()) == 0
    assert float(np.nansum(res["warmup_sample_stats"]["tamed"].values)) > 0
    with pytest.raises(slt_ppl.SettingError, match="tame"):
        run(post, kernel=kernel, kernel_options={"tame": -1.0}, num_draws=10)


@pytest.mark.parametrize("kind", ["pyro", "module"])
def test_torch_kernels_tame_and_count_like_jax(kind):
    """Torch backend, a linearly unstable step (εh = 5 in the stiffest direction of a regression):
    untamed every chain diverges (tests/test_torch_parity.py); tamed they stay finite, the
    clipped steps are recorded and the verdict fails the ``tamed`` check."""
    from _torch_models import torch_posterior

    from slt_ppl.sampling.torch_stepsize import top_curvature

    post = torch_posterior(kind)
    eps = 5.0 / top_curvature(post, post.data)
    res = run(post, step_size=eps, num_chains=2, num_draws=60, thin=1, init_jitter=0.0)
    stats = res["sample_stats"]
    assert (stats["diverged_at"].values == -1).all()
    assert float(np.nansum(stats["tamed"].values)) > 0
    est = slt_ppl.llc(res, warn=False)
    passed, detail = check(est, "tamed")
    assert not passed and est.attrs["healthy"] == 0, detail
