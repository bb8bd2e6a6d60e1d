"""The exact finite-n LLC of two-parameter normal crossings (``models.quadrature``) and the
closed-forms suite's crossing check that uses it.

Tolerances:
- quadrature vs quadrature with twice the points: 1e-12 (the trapezoid rule on the log grid
  converges geometrically; the two agree to round-off).
- quadrature vs a brute-force 2-D grid (a Riemann sum on 2501² points): 1e-6 relative. The grid
  converges slowly only where the valley of w1²w2⁶ narrows like 1/(√a·|w2|³) far out, so the cases
  are small (a ≤ 38) and the grid's own change from 1501² to 2501² points is held to 1e-5 (it is
  2e-6 at most; the quadrature agrees to 1e-7 or better).
- w1²w2² with Σxy = 0 has a closed form (Bessel functions, derived in the test): 1e-10.
- n → ∞ (Σx² = n·E[x²], Σxy = √n·z with E[x²] = 1): for m = 1 (w1²w2⁴, w1²w2⁶) and z = 0 the
  gap λ − λ_exact falls like a power of nβ (leading correction nβ^−(1/2 − 1/(2p)), up to a log for
  p = 3), ≈ 1e-3 relative at n = 1e12, so 1 % is generous and the power law is checked too; for
  m = 2 (w1²w2²) it falls only like 1/log nβ (0.035 at n = 1e12), so that case is checked against
  its exact asymptotic form instead of a fixed tolerance. A z ≠ 0 lowers λ_exact by
  ≈ (λ + dλ/dlog nβ)·z²/log n (second order in Σxy, derived below), checked to 3 %.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy.special import k0e, k1e

from models import data as zoo_data
from models.quadrature import crossing_llc, crossing_llc_from_data, crossing_power

GAMMA = 1.0


def brute_force(p: int, sxx: float, sxy: float, n: int, gamma: float, m: int) -> float:
    """nβ·E[L_n(w) − L_n(0)] by a Riemann sum on an m × m grid over [−L, L]²."""
    beta = 1.0 / math.log(n)
    a, b = beta * sxx, beta * sxy
    half = math.sqrt(60.0 / gamma)  # exp(−γ·L²/2) = e^-30 at the edge
    g = np.linspace(-half, half, m)
    w1, w2 = np.meshgrid(g, g, indexing="ij")
    u = w1 * w2**p
    energy = 0.5 * a * u * u - b * u  # nβ·(L_n(w) − L_n(0))
    logw = -energy - 0.5 * gamma * (w1 * w1 + w2 * w2)
    weight = np.exp(logw - logw.max())
    return float(np.sum(weight * energy) / np.sum(weight))


def bessel_w1w2(a: float, gamma: float) -> float:
    """Exact λ_exact for w1²w2² with Σxy = 0, a = nβ·Σx²/n.

    Z(a) = ∫∫ exp(−a·(w1w2)²/2 − γ‖w‖²/2) = √(2π/a)·∫ (w2² + γ/a)^(−1/2)·e^(−γw2²/2) dw2
         = √(2π/a)·e^x·K0(x),   x = γ²/(4a)   (∫_0^∞ e^(−αt²)/√(t² + c²) dt = ½e^(αc²/2)·K0(αc²/2)),
    and λ_exact = a·E[u²/2] = −d log Z/d log a = ½ + x − x·K1(x)/K0(x) (dx/d log a = −x, K0' = −K1).
    """
    x = gamma * gamma / (4.0 * a)
    return 0.5 + x - x * k1e(x) / k0e(x)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_quadrature_converged(p):
    for sxx, sxy, n in [(2000.0, -30.0, 2000), (1e12, 1e6, 10**12), (5000.0, 0.0, 5000)]:
        coarse = crossing_llc(p, sxx, sxy, n, GAMMA, num=4001)
        fine = crossing_llc(p, sxx, sxy, n, GAMMA, num=8001)
        assert abs(coarse - fine) <= 1e-12, (sxx, sxy, coarse, fine)


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize(
    ("sxx", "sxy", "n", "gamma"), [(50.0, 3.0, 50, 1.0), (200.0, -8.0, 200, 2.0)]
)
def test_matches_brute_force_2d_grid(p, sxx, sxy, n, gamma):
    exact = crossing_llc(p, sxx, sxy, n, gamma)
    grid = brute_force(p, sxx, sxy, n, gamma, m=1501)
    finer = brute_force(p, sxx, sxy, n, gamma, m=2501)
    assert abs(grid - finer) <= 1e-5 * abs(finer)  # the reference itself is converged
    assert abs(exact - finer) <= 1e-6 * abs(finer), (exact, finer)


@pytest.mark.parametrize("n", [50, 2_000, 10**8, 10**12, 10**20])
def test_w1w2_bessel_closed_form(n):
    nbeta = n / math.log(n)
    lam = crossing_llc(1, float(n), 0.0, n, 0.3, nbeta)
    assert lam == pytest.approx(bessel_w1w2(nbeta, 0.3), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("p", [2, 3])
def test_large_n_limit_multiplicity_one(p):
    """w1²w2⁴ → 1/4, w1²w2⁶ → 1/6 with Σxy = 0: monotone, within 1 % at n = 1e12, and the gap
    falls like a power of nβ close to the leading 1/2 − 1/(2p)."""
    lam = 1.0 / (2 * p)
    ns = [10**e for e in (8, 10, 12, 14)]
    gaps = [lam - crossing_llc(p, float(n), 0.0, n, GAMMA) for n in ns]
    assert all(g > 0 for g in gaps)
    assert all(b < a for a, b in itertools.pairwise(gaps))
    assert gaps[2] <= 0.01 * lam
    nbetas = [n / math.log(n) for n in ns]
    slope = math.log(gaps[-1] / gaps[-2]) / math.log(nbetas[-1] / nbetas[-2])
    # p = 2: exactly −1/4 here; p = 3: −1/3 with a log n factor (the pole at −1/2 is double)
    assert slope == pytest.approx(-(0.5 - 1.0 / (2 * p)), abs=0.04)


def test_large_n_limit_multiplicity_two():
    """w1²w2² → 1/2 only like 1/log nβ: Z ∝ a^(−1/2)·(log a − 2 log γ + log 8 − γ_E)/2 for large a
    (the Bessel form with K0(x) ≈ −log(x/2) − γ_E), so
    ½ − λ_exact ≈ 1/(log a − 2 log γ + log 8 − γ_E)."""
    for n in (10**8, 10**12, 10**20):
        a = n / math.log(n)
        lam = crossing_llc(1, float(n), 0.0, n, GAMMA)
        predicted = 0.5 - 1.0 / (math.log(a) - 2 * math.log(GAMMA) + math.log(8) - np.euler_gamma)
        assert lam == pytest.approx(predicted, abs=1e-6)
    assert 0.5 - crossing_llc(1, 1e12, 0.0, 10**12, GAMMA) < 0.04  # still 7 % low at n = 1e12


@pytest.mark.parametrize("p", [1, 2, 3])
def test_data_cross_term_vanishes_like_one_over_log_n(p):
    """With Σxy = z·√Σx² the empirical minimum moves off w* = 0, and to second order in Σxy
    λ_exact(z) − λ_exact(0) = −(b²/a)·(λ₀ + dλ₀/dlog a) with b²/a = z²/log n (a = Σx²/log n,
    b = Σxy/log n): expand E_b[(a/2)u² − bu] in b and use Var(a·u²/2) = λ₀ − dλ₀/dlog a."""
    z = 1.0
    for n in (10**8, 10**12):
        lam0 = crossing_llc(p, float(n), 0.0, n, GAMMA)
        lamz = crossing_llc(p, float(n), z * math.sqrt(n), n, GAMMA)
        h = 1e-3  # dλ₀/dlog a by a central difference in Σx² (a ∝ Σx² at fixed n)
        up = crossing_llc(p, n * math.exp(h), 0.0, n, GAMMA)
        down = crossing_llc(p, n * math.exp(-h), 0.0, n, GAMMA)
        slope = (up - down) / (2 * h)
        predicted = -(z * z / math.log(n)) * (lam0 + slope)
        assert lamz - lam0 == pytest.approx(predicted, rel=0.03), (n, lamz - lam0, predicted)
    # and so λ_exact → 1/(2p) with z = 1 too, from below and only like 1/log n
    lam = 1.0 / (2 * p)
    ns = (10**8, 10**12, 10**16)
    gaps = [1 - crossing_llc(p, float(n), z * math.sqrt(n), n, GAMMA) / lam for n in ns]
    gaps0 = [1 - crossing_llc(p, float(n), 0.0, n, GAMMA) / lam for n in ns]
    assert 0 < gaps[2] < gaps[1] < gaps[0]
    for n, gap, gap0 in zip(ns, gaps, gaps0, strict=True):
        # the coefficient λ₀ + dλ₀/dlog a is at most 1.1·λ here
        assert gap <= gap0 + 1.1 * z * z / math.log(n), (n, gap, gap0)


def test_from_data_and_power_helpers():
    problem = zoo_data.make_normal_crossing(powers=(1, 2), n=2000, seed=0)
    x = problem.data["x"].astype(np.float64)
    y = problem.data["y"].astype(np.float64)
    value = crossing_llc_from_data(problem.data["x"], problem.data["y"], (1, 2), GAMMA)
    assert value == crossing_llc(2, float(x @ x), float(x @ y), 2000, GAMMA)
    assert crossing_power((1, 3)) == 3 and crossing_power((2, 1)) == 2
    for bad in [(2, 2), (1,), (1, 1, 1), (0, 1)]:
        with pytest.raises(ValueError):
            crossing_power(bad)
    with pytest.raises(ValueError):
        crossing_llc(2, 100.0, 0.0, 100, 0.0)


def test_loss_convention_matches_the_sampled_posterior():
    """L_n(w) − L_n(0) = (u²Σx² − 2uΣxy)/(2n), u = w1·w2^p, is what slt_ppl.localize evaluates for
    the zoo's crossing model (Gaussian NLL, noise 1, no prior), and nβ = n/log n."""
    import jax.numpy as jnp

    import slt_ppl
    from models import numpyro_zoo as zoo

    for powers in [(1, 1), (1, 2), (1, 3)]:
        model, problem = zoo.normal_crossing(powers=powers, n=500, seed=1)
        post = slt_ppl.localize(model, problem.data, problem.center, gamma=GAMMA)
        x = problem.data["x"].astype(np.float64)
        y = problem.data["y"].astype(np.float64)
        assert post.nbeta == pytest.approx(500 / math.log(500))
        base = float(post.full_loss(post.center))
        for w in [(-0.5, 1.2), (0.3, -0.7), (1.5, 0.2)]:
            u = w[0] * w[1] ** powers[1]
            mine = (u * u * (x @ x) - 2 * u * (x @ y)) / (2 * len(x))
            lib = float(post.full_loss(jnp.asarray(w, jnp.float32))) - base
            assert lib == pytest.approx(mine, rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_suite_crossing_sgld_matches_exact():
    """The closed-forms suite's crossing check on w1²w2⁴ alone (quick settings, ~10–20 s on two
    cores): SGLD λ̂ within 3 se of the exact finite-n LLC of the posterior it samples."""
    from validation import suites

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = suites.crossing_case((1, 2), "quick", seed=0)
    assert row["healthy"] == 1
    assert np.isfinite(row["llc"]) and row["llc_se"] > 0
    assert abs(row["llc"] - row["exact"]) <= suites.CROSSING_Z * row["llc_se"], row
    assert row["case_passed"] == 1
    assert row["theory"] == 0.25 and row["exact"] < row["exact_sxy0"] < row["theory"]
