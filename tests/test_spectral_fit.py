"""Power-law fit: known exponents recovered; vectorized fit equals a loop-over-candidates one."""

from __future__ import annotations

import numpy as np
import pytest

from slt_ppl.estimators.spectral import spectral
from slt_ppl.estimators.spectral.powerlaw import fit_power_law, fit_truncated_power_law


def _pareto_matrix(alpha: float, m: int, seed: int) -> np.ndarray:
    """W = U diag(sqrt(s)) V^T with s Pareto(alpha) (density ∝ s^-alpha, xmin = 1), U, V orthogonal.

    The uniforms are stratified (one per interval [i/m, (i+1)/m)), which keeps the sample a Pareto
    sample while cutting the Monte Carlo spread of the MLE far below its i.i.d. (alpha-1)/sqrt(k).
    """
    rng = np.random.default_rng(seed)
    u = (np.arange(m) + rng.random(m)) / m
    s = (1.0 - u) ** (-1.0 / (alpha - 1.0))
    w = np.diag(np.sqrt(s))[rng.permutation(m)]
    # random orthogonal mixing on both sides by Householder reflections (cheap, exact in s)
    for _ in range(3):
        v = rng.standard_normal(m)
        v /= np.linalg.norm(v)
        w = w - 2.0 * np.outer(v, v @ w)
        v = rng.standard_normal(m)
        v /= np.linalg.norm(v)
        w = w - 2.0 * np.outer(w @ v, v)
    return w


@pytest.mark.parametrize(("alpha", "seed"), [(2.0, 11), (3.0, 12), (4.0, 13)])
def test_known_tail_exponent_recovered(alpha: float, seed: int) -> None:
    w = _pareto_matrix(alpha, 1100, seed)
    ds = spectral({"w": w})
    row = ds.sel(layer="w")
    assert int(row["num_tail"]) >= 1000
    assert abs(float(row["alpha"]) - alpha) < 0.05


def _reference_fit(x: np.ndarray, two_sided: bool) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward loop over candidate xmins (CSN 2009), the definition itself."""
    x = np.sort(x)
    alphas, ds = [], []
    for i in range(x.size - 1):
        tail = x[i:]
        k = tail.size
        a = 1.0 + k / np.sum(np.log(tail / tail[0]))
        cdf = 1.0 - (tail / tail[0]) ** (1.0 - a)
        d = np.abs(cdf - np.arange(k) / k)
        if two_sided:
            d = np.maximum(d, np.abs(cdf - np.arange(1, k + 1) / k))
        alphas.append(a)
        ds.append(d.max())
    return np.array(alphas), np.array(ds)


@pytest.mark.parametrize("convention", ["slt_ppl", "weightwatcher"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_fit_matches_loop_reference(convention: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.exp(rng.normal(size=400)) + rng.pareto(2.5, size=400)
    ref_alpha, ref_d = _reference_fit(x, two_sided=convention == "slt_ppl")
    fit = fit_power_law(x, convention=convention)
    np.testing.assert_allclose(fit.alphas, ref_alpha, rtol=1e-10)
    np.testing.assert_allclose(fit.Ds, ref_d, rtol=1e-9, atol=1e-12)
    best = int(np.argmin(ref_d))
    assert fit.xmin == np.sort(x)[best]
    assert fit.D == pytest.approx(ref_d[best])
    assert fit.num_tail == x.size - best
    if fit.num_tail >= 20:
        assert fit.alpha == pytest.approx(ref_alpha[best])
        assert fit.sigma == pytest.approx((fit.alpha - 1) / np.sqrt(fit.num_tail))


def test_blocked_ks_equals_single_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from slt_ppl.estimators.spectral import powerlaw

    x = np.sort(np.random.default_rng(5).pareto(3.0, 600) + 1)
    full = powerlaw.fit_power_law(x)
    monkeypatch.setattr(powerlaw, "_BLOCK", 1000)  # forces many small blocks
    blocked = powerlaw.fit_power_law(x)
    np.testing.assert_array_equal(full.Ds, blocked.Ds)


def test_small_tail_bias_correction() -> None:
    """k < 20: alpha = 1 + (k - 2)/sum ln(x/xmin), unbiased for alpha - 1 given xmin.

    Averaged over many 12-point Pareto(3) samples, the corrected exponent is close to 3 while the
    plain MLE 1 + k/sum is biased up by the factor k/(k - 2) on alpha - 1.
    """
    rng = np.random.default_rng(3)
    corrected = []
    for _ in range(400):
        x = np.sort((1 - rng.random(12)) ** (-1 / 2.0))
        fit = fit_power_law(x)
        k = fit.num_tail
        tail = x[x >= fit.xmin]
        s = np.sum(np.log(tail / fit.xmin))
        assert fit.alpha == pytest.approx(1 + (k - 2) / s)
        if k == 12:
            corrected.append(fit.alpha)
    assert len(corrected) > 50
    assert abs(np.mean(corrected) - 3.0) < 0.15


def test_ww_small_n_objective() -> None:
    """WeightWatcher 0.7.7 below 20 points: alpha = 1 + (k-1)/sum, tails k >= 8, least D."""
    x = np.sort(np.random.default_rng(8).pareto(2.0, 15) + 1)
    fit = fit_power_law(x, convention="weightwatcher")
    best_j, best = np.inf, None
    for i in range(x.size - 1):
        tail = x[i:]
        k = tail.size
        if k < 8:
            continue
        a = 1 + (k - 1) / np.sum(np.log(tail / tail[0]))
        d = np.max(np.abs(1 - (tail / tail[0]) ** (1 - a) - np.arange(k) / k))
        if d < best_j:
            best_j, best = d, (a, d, tail[0])
    assert best is not None
    assert (fit.alpha, fit.D, fit.xmin) == pytest.approx(best)


def test_truncated_power_law() -> None:
    rng = np.random.default_rng(4)
    # power law alpha = 2.5 above 1, cut off by exp(-x/50): rejection sampling
    x = (1 - rng.random(40000)) ** (-1 / 1.5)
    x = x[rng.random(x.size) < np.exp(-(x - 1) / 50.0)][:3000]
    pl = fit_power_law(x)
    tpl = fit_truncated_power_law(x, pl)
    assert tpl.ok
    assert tpl.Lambda == pytest.approx(1 / 50.0, rel=0.5)
    assert abs(tpl.alpha - 2.5) < 0.25
    assert tpl.D < 0.05
    ds = spectral({"w": np.diag(np.sqrt(x[:200]))}, fit="TPL")
    assert np.isfinite(float(ds["Lambda"].sel(layer="w")))


def test_failed_fit_is_labelled() -> None:
    w = np.zeros((20, 10))
    w[0, 0] = 1.0  # one nonzero eigenvalue: nothing to fit
    ds = spectral({"w": w})
    assert np.isnan(float(ds["alpha"].sel(layer="w")))
    assert "failed fit" in str(ds["warning"].sel(layer="w").values)


def test_fit_is_scale_invariant() -> None:
    """alpha and D depend on ratios x/xmin only; xmin scales with the data."""
    x = np.random.default_rng(9).pareto(2.0, 300) + 1.0
    a, b = fit_power_law(x), fit_power_law(37.5 * x)
    assert b.alpha == pytest.approx(a.alpha, rel=1e-10)
    assert b.D == pytest.approx(a.D, rel=1e-8)
    assert b.xmin == pytest.approx(37.5 * a.xmin)
