"""Calibration of ``llc_se``: over 20 sampler seeds on the same data, z = (λ̂ − exact)/se must have
sd ≤ 1.25 and |mean| ≤ 1 (issue 13), on a regular and a singular model with exact values.

(a) Regular: y = x·w + N(0, 1), d = 4, n = 500, centered at the least-squares solution w_LS. The
    localized posterior is Gaussian with precision nβH + γI (H = XᵀX/n) and mean w_LS, so
    λ_exact = ½·tr(nβH·(nβH + γI)⁻¹) exactly.
(b) Singular: y = w1·w2·x + N(0, 1) at w* = (0, 0) (λ = 1/2 asymptotically), n = 500; λ_exact of the
    sampled finite-n posterior by quadrature (``models.quadrature.crossing_llc``, p = 1).

Seeds: one ``sample`` call runs 20 × 4 chains with a fixed ε and independent minibatches
(``shared_batches=False``), so chain i depends only on (seed, i) and the chains are independent;
chains 4s … 4s+3 are "seed s" (a 4-chain run). Kernels: MALA (Metropolis-corrected: no step bias)
on both models, and minibatch SGLD (batch 50, where the minibatch noise hides slow mixing) on the
singular one at ε = 1e-3, γ = 5, where its first-order heating (``llc_bias_estimate``, 0.006) is a
fifth of the se (0.03) and the chains are ~10 relaxation times (2/(γε) = 400 steps) long.

Measured (this file's settings): z sd / mean = 1.02 / +0.01 (regular, MALA), 1.11 / −0.05
(singular, MALA), 1.02 / +0.27 (singular, SGLD; ArviZ's MCSE alone: 1.15); the SGLD runs' ESS of the
raw minibatch trace averaged 2542 per seed against 342 for the noise-free signal. Session 6 (the se
gained the replicated batch means, ``error_bars.replicated_batch_means_se``; rms se +6–8 % here):
0.78 / −0.22, 1.06 / −0.03, 0.96 / +0.27 (the former formula on the same runs: 0.82, 1.11, 1.02).
Where chains are only ~1 relaxation time long (γ = 1, ε = 5e-4, 5000 steps) no estimate from 4
chains can be honest (z sd 1.53): that is a run the ESS/R-hat checks should flag (8 of 20 were).

Tolerances: with 20 seeds the sample sd of z has a standard error ≈ 1/√38 ≈ 0.16 and the mean ≈
0.22, so the issue's bounds (1.25 and 1) sit ≈ 1.5 and 4.5 standard errors from a calibrated 1 and
0; the lower bound 0.6 (2.5 standard errors below 1) catches error bars that are far too wide.
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import slt_ppl
from models import quadrature
from slt_ppl.estimators._common import stats_of
from slt_ppl.estimators.error_bars import arviz_mcse, honest_se
from slt_ppl.estimators.llc import estimate_llc

SEEDS, PER_SEED, N = 20, 4, 500


def regular_problem(d: int = 4):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, d))
    y = x @ rng.normal(size=d) + rng.normal(size=N)
    w_ls = np.linalg.lstsq(x, y, rcond=None)[0]
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}

    def loss(w, batch):
        return 0.5 * jnp.mean((batch["y"] - batch["x"] @ w) ** 2)

    def exact(post) -> float:
        eig = np.linalg.eigvalsh(post.nbeta * x.T @ x / N)
        return 0.5 * float(np.sum(eig / (eig + post.gamma)))

    return loss, data, jnp.asarray(w_ls, jnp.float32), exact


def singular_problem():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=N), rng.normal(size=N)
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}

    def loss(w, batch):
        return 0.5 * jnp.mean((batch["y"] - batch["x"] * w[0] * w[1]) ** 2)

    def exact(post) -> float:
        return quadrature.crossing_llc(1, float(x @ x), float(x @ y), N, post.gamma, post.nbeta)

    return loss, data, jnp.zeros(2, jnp.float32), exact


def seed_z_scores(problem, gamma: float, **sample_kwargs) -> tuple[np.ndarray, list]:
    """z per seed of one 80-chain run, and the per-seed estimates."""
    loss, data, center, exact_fn = problem
    post = slt_ppl.localize(loss, data, center, gamma=gamma, backend="jax")
    exact = exact_fn(post)
    res = slt_ppl.sample(
        post, num_chains=SEEDS * PER_SEED, shared_batches=False, progress=False, **sample_kwargs
    )
    stats, attrs = stats_of(res)
    estimates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(SEEDS):
            sub = stats.isel(chain=slice(s * PER_SEED, (s + 1) * PER_SEED))
            estimates.append(estimate_llc(sub.assign_coords(chain=np.arange(PER_SEED)), attrs))
    z = np.asarray([(float(e["llc"]) - exact) / float(e["llc_se"]) for e in estimates])
    return z, estimates


def assert_calibrated(z: np.ndarray) -> None:
    assert np.all(np.isfinite(z)), z
    sd, mean = float(np.std(z, ddof=1)), float(np.mean(z))
    assert 0.6 <= sd <= 1.25, (sd, mean, np.round(z, 2))
    assert abs(mean) <= 1.0, (sd, mean, np.round(z, 2))


@pytest.mark.slow
def test_regular_mala_error_bars_cover_the_exact_value():
    z, _ = seed_z_scores(regular_problem(), 1.0, kernel="mala", step_size=3e-3, num_draws=1000,
                         num_burnin=500)  # fmt: skip
    assert_calibrated(z)


@pytest.mark.slow
def test_singular_mala_error_bars_cover_the_exact_value():
    z, _ = seed_z_scores(singular_problem(), 1.0, kernel="mala", step_size=1e-2, num_draws=2000,
                         num_burnin=1000)  # fmt: skip
    assert_calibrated(z)


@pytest.mark.slow
def test_singular_minibatch_sgld_error_bars_and_mixing():
    z, estimates = seed_z_scores(singular_problem(), 5.0, kernel="sgld", step_size=1e-3,
                                 batch_size=50, num_draws=1000, num_burnin=2000, thin=4)  # fmt: skip
    assert_calibrated(z)
    # the sampler's own bias is well below the se (else z would measure the bias, not the se)
    bias = np.mean([float(e["llc_bias_estimate"]) for e in estimates])
    se = np.mean([float(e["llc_se"]) for e in estimates])
    assert 0 < bias < 0.3 * se, (bias, se)
    # minibatch noise inflates the raw trace's ESS (measured 2367 per seed) far above what the
    # signal's mixing allows (174); an ESS read off the raw trace fails this
    ess_signal = np.mean([float(e["ess"]) for e in estimates])
    ess_raw = np.mean([float(e["ess_loss_trace"]) for e in estimates])
    assert math.isfinite(ess_signal) and ess_signal < 0.25 * ess_raw, (ess_signal, ess_raw)


def correlated_chains(rng: np.random.Generator, chains: int, draws: int, corr: float) -> np.ndarray:
    """Loss-like traces (chain, draw): an AR(1) signal (ρ = 0.8, integrated autocorrelation time 9)
    plus white noise of 9× its variance, each with a share ``corr`` common to all chains, so any two
    chains correlate by ``corr`` at every lag (as chains sharing minibatches do, see below)."""

    def ar1(rows: int) -> np.ndarray:
        x = np.empty((rows, draws))
        x[:, 0] = rng.normal(size=rows)
        kicks = rng.normal(size=(rows, draws)) * math.sqrt(1 - 0.8**2)
        for t in range(1, draws):
            x[:, t] = 0.8 * x[:, t - 1] + kicks[:, t]
        return x

    def white(rows: int) -> np.ndarray:
        return rng.normal(size=(rows, draws))

    own, common = math.sqrt(1 - corr), math.sqrt(corr)
    signal = own * ar1(chains) + common * ar1(1)
    return signal + 3.0 * (own * white(chains) + common * white(1))


def test_error_bar_counts_the_correlation_between_chains():
    """Chains that share minibatches are correlated: measured on RRR 3-3-3 r = 2 at the defaults
    (benchmarks/se_coverage.py, 4 chains), 0.12 between any two chains' paired loss traces at every
    block length from 1 to 100 draws; independent minibatches gave −0.005 ± 0.003. The variance of
    the grand mean is then (1 + (C − 1)·0.12) times what independent chains would give: 2.8× at
    C = 16. ``llc_se`` takes the overlapping batch means of the chain-averaged trace, which contain
    that correlation; ArviZ's MCSE treats chains as independent (z sd ≈ √2.8 = 1.7 here). Over 200
    replicates the sample sd of z has standard error ≈ 1/√400 = 0.05, so the 1.25 bound sits ≈ 4
    standard errors above the ≈ 1.05 that 13-degree-of-freedom batch means give. 2–4 s."""
    rng = np.random.default_rng(0)
    z_honest, z_independent = [], []
    for _ in range(200):
        y = correlated_chains(rng, 16, 400, 0.12)  # true mean 0
        trace = xr.DataArray(y, dims=("chain", "draw"))
        z_honest.append(y.mean() / honest_se(trace))
        z_independent.append(y.mean() / arviz_mcse(trace))
    assert np.std(z_honest) <= 1.25, np.std(z_honest)
    assert np.std(z_independent) >= 1.4, np.std(z_independent)  # the design can tell them apart


def slow_signal_chains(rng, chains: int, draws: int, phi: float, noise_var: float) -> np.ndarray:
    """Independent chains: a stationary AR(1) signal (unit variance, coefficient phi) plus white
    noise of variance ``noise_var``; true mean 0."""
    from scipy.signal import lfilter

    kicks = rng.normal(size=(chains, draws)) * math.sqrt(1 - phi**2)
    start = phi * rng.normal(size=(chains, 1))  # stationary start
    signal = lfilter([1.0], [1.0, -phi], kicks, axis=1, zi=start)[0]
    return signal + math.sqrt(noise_var) * rng.normal(size=(chains, draws))


def test_error_bar_sees_a_mode_slower_than_its_batches():
    """Independent chains whose loss carries a slow AR(1) signal (integrated autocorrelation time
    τ = 200 draws, 1/5 of a chain) under white noise of 28× its variance, 4 chains × 1000 draws:
    the batch means of the chain average (N/10 = 100-draw batches, shorter than τ) and ArviZ's
    MCSE both under-cover (z sd 1.58 over these 300 replicates); the replicated batch means of
    every chain (``error_bars.replicated_batch_means_se``, 19 degrees of freedom) bring it to 1.24.
    The sample sd of z has standard error ≈ 1.3/√600 ≈ 0.05, so 1.35 sits ≈ 2 standard errors
    above the measured value and 1.45 ≈ 2.5 below the former formula's. < 2 s."""
    from slt_ppl.estimators.error_bars import batch_means_se

    rng = np.random.default_rng(0)
    tau = 200
    phi = (tau - 1) / (tau + 1)
    z_now, z_before = [], []
    for _ in range(300):
        y = slow_signal_chains(rng, 4, 1000, phi, 28.0)  # true mean 0
        trace = xr.DataArray(y, dims=("chain", "draw"))
        z_now.append(y.mean() / honest_se(trace))
        z_before.append(y.mean() / max(arviz_mcse(trace), batch_means_se(trace)))
    assert np.std(z_now) <= 1.35, np.std(z_now)
    assert np.std(z_before) >= 1.45, np.std(z_before)  # the case needs the new term


def test_error_bar_sees_chains_that_disagree_for_the_whole_run():
    """16 independent chains × 1000 draws whose loss carries a slow AR(1) signal (τ = 5000 draws,
    5 chain lengths: each chain keeps its own level for the whole run) under white noise of 80×
    its variance. This is the shape of the x·w1·w2 crossing at n = 5000 (session 12): the chains
    sat at their own places along the valleys, the per-draw spread was 0.6-0.9 and the chain means
    differed by 0.06. Batches of every length then sit inside one level, so ArviZ's MCSE and both
    batch-means estimates under-cover (z sd 1.91 over these 300 replicates), while the spread of
    the chain means (``error_bars.between_chain_se``) gives 1.05, the t₁₅ value √(15/13) = 1.07
    apart from noise. The sample sd of z has standard error ≈ 1.05/√600 ≈ 0.04, so 1.25 sits ≈ 5
    standard errors above it and 1.6 ≈ 7 below the former formula's. ≈ 6 s."""
    from slt_ppl.estimators.error_bars import batch_means_se, replicated_batch_means_se

    rng = np.random.default_rng(0)
    tau = 5000
    phi = (tau - 1) / (tau + 1)
    z_now, z_before = [], []
    for _ in range(300):
        y = slow_signal_chains(rng, 16, 1000, phi, 80.0)  # true mean 0
        trace = xr.DataArray(y, dims=("chain", "draw"))
        z_now.append(y.mean() / honest_se(trace))
        before = (arviz_mcse(trace), batch_means_se(trace), replicated_batch_means_se(trace))
        z_before.append(y.mean() / max(before))
    assert np.std(z_now) <= 1.25, np.std(z_now)
    assert np.std(z_before) >= 1.6, np.std(z_before)  # the case needs the new term


def test_between_chain_se_needs_eight_chains_and_counts_their_correlation():
    """Below 8 chains the term is NaN (left out of the max). Chains that share minibatches
    correlate (ρ = 0.12 here, as measured on RRR 3-3-3 r = 2): the sample variance of the chain
    means shrinks by 1 − ρ while the grand mean's variance grows by 1 + (C − 1)ρ = 2.8 at C = 16.
    With both factors the term alone covers (z sd 1.07 over these 200 replicates, bound 1.25;
    standard error of the sd ≈ 0.05); the plain s/√C does not (1.86, bound ≥ 1.4; the design of
    the correlation test above). < 2 s."""
    from slt_ppl.estimators.error_bars import between_chain_se

    rng = np.random.default_rng(1)
    four = xr.DataArray(rng.normal(size=(4, 100)), dims=("chain", "draw"))
    assert math.isnan(between_chain_se(four))
    z_term, z_plain = [], []
    for _ in range(200):
        y = correlated_chains(rng, 16, 400, 0.12)  # true mean 0
        z_term.append(y.mean() / between_chain_se(xr.DataArray(y, dims=("chain", "draw"))))
        z_plain.append(y.mean() / (np.std(y.mean(axis=1), ddof=1) / 4.0))
    assert np.std(z_term) <= 1.25, np.std(z_term)
    assert np.std(z_plain) >= 1.4, np.std(z_plain)
