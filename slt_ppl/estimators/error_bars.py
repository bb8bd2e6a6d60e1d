"""Error bars and mixing diagnostics for the loss traces the LLC averages.

Two problems with applying ArviZ's ESS / MCSE to the paired minibatch trace y_t = L_B(w_t) − L_B(w*):

1. **Minibatch noise hides slow mixing.** y_t = s_t + e_t, with s_t = L_n(w_t) − L_n(w*) the slow
   signal and e_t the minibatch noise, fresh at every step (white: independent of the past given
   w_t). Measured on RRR (3,2,3) r = 1 at the defaults (4 × 1000 draws): Var e ≈ 10·Var s, and
   ArviZ's bulk ESS read 2102 on y where the full-data loss s of the same draws had 89 (R-hat 1.002
   vs 1.047): the autocorrelation of s is a tenth of y's and the Geyer truncation cuts it off. Its
   MCSE was 0.137 where the full-data trace alone gave 0.201.
2. **Shared minibatches correlate the chains** (all chains see batch B_t at step t), so an MCSE
   that treats chains as independent is optimistic (docs/defaults.md: ≈ 20 % at 64 chains).

What is done instead, and why (no library estimates the mixing of the noise-free part of a trace,
so :func:`signal_ess_rhat` is written here):

* :func:`batch_means_se` — the standard error of the grand mean from overlapping batch means
  (Flegal & Jones 2010) of the **chain-averaged** series ȳ_t = mean_c y_{c,t}: any correlation
  between chains at the same step (shared batches) or later steps is inside ȳ, and batch means do
  not truncate the autocorrelation sum. Batches are N/10 draws long (≈ 13 degrees of freedom:
  the se itself is uncertain by ≈ 20 %).
* :func:`replicated_batch_means_se` — N/5-draw batch means of every chain around the grand mean
  (Vats & Knudson 2021), times 1 + (C − 1)·ρ̂ for the correlation ρ̂ between chains: a mode slower
  than N/10 draws shows up as chains that disagree, which the batch means of the chain average
  (point 1 of this list) cannot see. Measured on RRR 3-3-3 r = 2 at the defaults (n = 5000, 4
  chains, 1000 draws thinned 125: the draws span ≈ 0.1 of the slowest relaxation time 2/(εγ);
  benchmarks/se_coverage.py, 30 seeds each): the spread of λ̂ over seeds was 1.25× (shared
  minibatches) and 1.10× (independent) the rms of max(ArviZ, batch means), z sd 1.26 and 1.12;
  with this term 1.15 and 1.00. On
  synthetic traces (4 × 1000 draws, white noise of variance 28 plus an AR(1) signal of variance
  0.15–0.3 and autocorrelation time 150–300 draws) z sd went from 1.28–1.31 to 1.10–1.15, and with
  a fast signal from 0.96 to 0.93 (slightly conservative: the max of three estimates).
* :func:`between_chain_se` — with 8 or more chains (a tiny model's default is 16), the spread
  of the chain means, scaled for the correlation between chains: it needs no batch at all, so it
  holds when a mode outlasts the chains' N/5 batches (session 12: on the crossing y = x·w1·w2 at
  n = 5000 the chains spread along the valleys for the whole run, and it was 1.1-1.8× the others).
* :func:`honest_se` — the largest of ArviZ's MCSE, the batch-means se, the replicated
  batch-means se and the between-chain se. ArviZ's MCSE uses the between-chain variance, which
  sees chains that have not mixed when the batches are shorter than the autocorrelation time;
  batch means of the chain average see what ArviZ's truncation and independence assumption miss
  (correlated chains); replicated batch means see slow modes through disagreeing chains with more
  degrees of freedom; the chain means see a mode slower than any batch. Each is optimistic in a
  case where another is not, so the largest is reported.
* :func:`signal_ess_rhat` — ESS and R-hat of the signal s from block means of y (the white noise
  averages out within a block, a slow signal does not).
"""

from __future__ import annotations

import math

import arviz_stats
import numpy as np
import xarray as xr

BATCHES_PER_RUN = 10
REPLICATED_BATCHES = 5  # batches per chain for replicated_batch_means_se
SIGNAL_BLOCKS = 100  # blocks per chain for the mixing diagnostics (signal_ess_rhat)
MIN_BATCH_LENGTH = 5
MIN_CHAINS_BETWEEN = 8  # chains for between_chain_se


def arviz_ess(trace: xr.DataArray) -> float:
    """ArviZ's bulk ESS of ``trace`` (dims chain, draw)."""
    return float(arviz_stats.ess(trace.to_dataset(name="x"), sample_dims=["chain", "draw"])["x"])


def arviz_rhat(trace: xr.DataArray) -> float:
    """ArviZ's rank-normalized split R-hat (Vehtari et al. 2021); NaN on too short a trace."""
    if trace.sizes["chain"] < 2 and trace.sizes["draw"] < 4:
        return float("nan")
    return float(arviz_stats.rhat(trace.to_dataset(name="x"), sample_dims=["chain", "draw"])["x"])


def arviz_mcse(trace: xr.DataArray) -> float:
    """ArviZ's MCSE of the mean (chains treated as independent)."""
    return float(arviz_stats.mcse(trace.to_dataset(name="x"), sample_dims=["chain", "draw"])["x"])


def _values(trace: xr.DataArray) -> np.ndarray:
    return np.asarray(trace.transpose("chain", "draw").values, np.float64)


def batch_length(num_draws: int) -> int:
    """b = N/``BATCHES_PER_RUN`` draws, at least ``MIN_BATCH_LENGTH``; 0 when N < 2b."""
    b = max(MIN_BATCH_LENGTH, num_draws // BATCHES_PER_RUN)
    return b if num_draws >= 2 * b else 0


def long_run_variance(x: np.ndarray) -> np.ndarray:
    """Overlapping-batch-means estimate of the long-run variance σ² = lim N·Var(mean) of each
    series along the last axis (Flegal & Jones 2010, eq. 7):

        σ̂² = N·b / ((N − b)(N − b + 1)) · Σ_{j=0}^{N−b} (Ȳ_j(b) − Ȳ)²,

    Ȳ_j(b) the mean of draws j … j+b−1, b = :func:`batch_length` (N/10: long batches, because the
    runs are short next to the slow modes of singular models; overlapping batches recover ~1.5× the
    degrees of freedom of disjoint ones). NaN when the series is too short."""
    num = x.shape[-1]
    b = batch_length(num)
    if b == 0:
        return np.full(x.shape[:-1], np.nan)
    csum = np.concatenate([np.zeros((*x.shape[:-1], 1)), np.cumsum(x, axis=-1)], axis=-1)
    means = (csum[..., b:] - csum[..., :-b]) / b
    dev = means - x.mean(axis=-1, keepdims=True)
    return num * b / ((num - b) * (num - b + 1)) * np.sum(dev**2, axis=-1)


def batch_means_se(trace: xr.DataArray) -> float:
    """se of the grand mean of ``trace`` (dims chain, draw) from the overlapping batch means of the
    chain-averaged series ȳ_t = mean_c y_{c,t}: √(σ̂²(ȳ)/N). NaN on too short a trace."""
    x = _values(trace)
    x = x[:, np.isfinite(x).any(axis=0)]  # draws where some chain is finite
    if x.size == 0:
        return math.nan
    avg = np.nanmean(x, axis=0)
    return float(np.sqrt(long_run_variance(avg) / avg.size))


def chain_correlation(x: np.ndarray) -> float:
    """Mean correlation between two chains' traces (rows of ``x``), from their block means of
    N/``SIGNAL_BLOCKS`` draws, floored at 0; 0 with one chain or fewer than 3 blocks.

    Chains that share minibatches correlate (RRR 3-3-3 r = 2 at the defaults, 4 chains: 0.12 for
    single draws, 0.09 ± 0.01 / 0.09 ± 0.03 / 0.08 ± 0.05 for blocks of 10 / 50 / 100 draws;
    independent minibatches −0.004 ± 0.003); blocks keep the white minibatch noise, common to all
    chains at a step, from setting the correlation of the slower signal."""
    num_chains, num = x.shape
    length = max(1, num // SIGNAL_BLOCKS)
    if num_chains < 2 or num // length < 3:
        return 0.0
    blocks = x[:, : length * (num // length)].reshape(num_chains, -1, length).mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(blocks)
    pairs = corr[np.triu_indices(num_chains, 1)]
    return float(max(0.0, np.nanmean(pairs))) if np.isfinite(pairs).any() else 0.0


def replicated_batch_means_se(trace: xr.DataArray) -> float:
    """se of the grand mean from the batch means of every chain around the grand mean (replicated
    batch means, Vats & Knudson 2021, eq. 10), scaled for the correlation between chains:

        σ̂² = b/(aC − 1) · Σ_c Σ_k (Ȳ_ck − Ȳ)²,    se² = σ̂²·(1 + (C − 1)·ρ̂) / (N·C),

    Ȳ_ck the mean of chain c's k-th of a = ``REPLICATED_BATCHES`` disjoint batches of b = N/a
    draws, Ȳ the grand mean, ρ̂ = :func:`chain_correlation` (the variance of a mean of C chains
    with pairwise correlation ρ is (1 + (C − 1)ρ)/C times one chain's). Centering every batch at
    the grand mean lets chains that disagree (a mode slower than the batches) raise σ̂², which the
    batch means of the chain average cannot see; the aC − 1 degrees of freedom (19 at 4 chains)
    keep the estimate steadier than N/10 batches of the average (≈ 13). NaN on a trace with
    non-finite values or fewer than 2a draws per chain."""
    x = _values(trace)
    num_chains, num = x.shape
    length = num // REPLICATED_BATCHES
    if length < 2 or not np.all(np.isfinite(x)):
        return math.nan
    means = x[:, : length * REPLICATED_BATCHES].reshape(num_chains, REPLICATED_BATCHES, -1).mean(-1)
    dof = REPLICATED_BATCHES * num_chains - 1
    lrv = length * float(np.sum((means - x.mean()) ** 2)) / dof
    inflation = 1.0 + (num_chains - 1) * chain_correlation(x)
    return math.sqrt(lrv * inflation / (num * num_chains))


def honest_se(trace: xr.DataArray) -> float:
    """max(ArviZ MCSE, :func:`batch_means_se`, :func:`replicated_batch_means_se`,
    :func:`between_chain_se`) of the mean of ``trace`` (module docstring)."""
    candidates = [
        arviz_mcse(trace),
        batch_means_se(trace),
        replicated_batch_means_se(trace),
        between_chain_se(trace),
    ]
    finite = [c for c in candidates if np.isfinite(c)]
    return max(finite) if finite else math.nan


def between_chain_se(trace: xr.DataArray) -> float:
    """se of the grand mean from the spread of the C chain means, for C ≥ ``MIN_CHAINS_BETWEEN``:

        se² = s²_c · (1 + (C − 1)·ρ̂) / (C·(1 − ρ̂)),

    s²_c the sample variance of the chain means, ρ̂ = :func:`chain_correlation`, floored at 0 and
    capped at 0.9 so that 1/(1 − ρ̂) stays finite (C means with
    pairwise correlation ρ have E[s²_c] = σ²(1 − ρ) and Var(grand mean) = σ²(1 + (C − 1)ρ)/C).
    For independent chains s²_c is unbiased for the variance of a chain's mean whatever the
    autocorrelation inside the chains, so it holds where a mode outlasts every batch, even the
    N/5 batches of :func:`replicated_batch_means_se`, which then undercounts by up to √5.
    Measured on the crossing y = x·w1·w2 at n = 5000 (defaults: 16 chains that spread along the
    valleys, where the across-valley curvature grows, for the whole run), the largest of the
    other three estimates was 0.0094, 0.0176, 0.0090, 0.0126 and 0.0094 on seeds 0-4, and this one
    0.0157, 0.0233, 0.0126, 0.0225 and 0.0106. λ̂ read 0.414, 0.410, 0.391, 0.416 and 0.384 for the
    exact 0.387 (z sd over the seeds 1.3 before, 0.8 with this term; docs/validation.md).
    NaN below ``MIN_CHAINS_BETWEEN`` chains: with 3-7 degrees of freedom s²_c is too noisy to
    put in a max (the replicated batch means, 5C − 1 of them, stand in), or with non-finite
    values."""
    x = _values(trace)
    num_chains = x.shape[0]
    if num_chains < MIN_CHAINS_BETWEEN or not np.all(np.isfinite(x)):
        return math.nan
    rho = min(chain_correlation(x), 0.9)
    var = float(np.var(x.mean(axis=1), ddof=1))
    return math.sqrt(var * (1.0 + (num_chains - 1) * rho) / (num_chains * (1.0 - rho)))


def signal_ess_rhat(trace: xr.DataArray) -> tuple[float, float, str]:
    """ESS and R-hat of the slow part s of a trace y = s + white noise, from block means.

    Each chain is cut into ``SIGNAL_BLOCKS`` consecutive blocks (block length L = N // SIGNAL_BLOCKS
    draws) and ArviZ's bulk ESS and rank-normalized split R-hat (Vehtari et al. 2021) are computed on
    the block means: averaging L draws divides the white minibatch noise's variance by L and keeps a
    signal that varies slowly, so a chain whose signal has not mixed shows up as autocorrelated
    block means, while a well-mixed one gives up to C·SIGNAL_BLOCKS effective blocks. The ESS is
    returned in blocks (the effective number of independent block means): it is what limits the
    precision of λ̂ when the signal mixes slowly.

    An earlier form took Var s as the lag-1 autocovariance of y; with thinned draws the signal
    itself decorrelates between draws, that variance was underestimated several-fold and healthy
    runs read ESS 12 and R-hat 1.17 (DLN 5-5-5, thin 4, a stationary trace by eye). Block means need
    no model of the signal. Below 2·SIGNAL_BLOCKS draws per chain the blocks are single draws.
    Returns (ess, rhat, which).
    """
    x = _values(trace)
    num_chains, num = x.shape
    length = max(1, num // SIGNAL_BLOCKS)
    if length == 1:
        return arviz_ess(trace), arviz_rhat(trace), "loss trace"
    blocks = x[:, : length * (num // length)].reshape(num_chains, num // length, length).mean(-1)
    da = xr.DataArray(blocks, dims=("chain", "draw"))
    return arviz_ess(da), arviz_rhat(da), f"means of {length}-draw blocks of the loss trace"
