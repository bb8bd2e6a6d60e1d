"""The step budget of automatic thinning: tiny models (a step's gradient ≤ 2048 row·parameter
products per chain, where a step costs its fixed overhead) may take ``TINY_MAX_STEPS`` steps per
chain, every other model keeps ``MAX_STEPS`` (``slt_ppl.sampling.defaults.step_cap``); the choice is
in the result's attrs.

The numbers are the session-6 measurements (``docs/validation.md``): on the crossing
y = x·w1·w2² at n = 1000 (ε adapted to 3.7e-5, batch 256) the slowest relaxation 2/(εγ) is
2.8·10⁵ steps, so the old cap (thin 125) left the draws ≈ 0.45 relaxation times long (R-hat 1.22,
ESS 15: unhealthy); thin 1250 passed then. Session 10: with the burn-in's ε adapted on a robust
statistic over chains (the median; a trimmed mean since session 11; ε 1.6-2.2e-5 instead of a
spiral down to 4e-7) 2/(εγ) is ≈ 7·10⁵ steps, 1.8 relaxation times at
thin 1250 (R-hat 1.076), 7 at the cap of 10⁷ (thin 5000: R-hat 1.021, ESS 562, 0.103 ± 0.010 for an
exact 0.104), and thin is chosen again at the burn-in's ε. An RRR 3-3-3 (d = 18, batch 256) must get exactly the old thinning: the
RRR/DLN validation rows rely on it. Tiny models also freeze the burn-in's ε at the pooled estimate
of the adaptation windows (``stepsize.pooled_step_size``), and, unless the user gives
``num_chains``, run 16 chains instead of 4 (``defaults.choose_num_chains``, session 8). Runtime: 5 s at load 1 (2.3 s the one
2-chain run of a 2-parameter regression, mostly compiling; 32 s at load 18).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from _reliability_models import regression_problem

import slt_ppl
from slt_ppl.sampling.defaults import (
    DEFAULT_NUM_CHAINS,
    MAX_STEPS,
    RELAXATIONS,
    TINY_MAX_STEPS,
    TINY_NUM_CHAINS,
    TINY_STEP_COST,
    auto_thin,
    choose_num_chains,
    is_tiny,
    slowest_preconditioner,
    step_cap,
)
from slt_ppl.sampling.stepsize import pooled_step_size, trimmed_mean, window_heating

DRAWS, CHAINS = 1000, 4


def test_step_cap_is_larger_only_for_tiny_steps():
    assert step_cap(256, 2)[0] == TINY_MAX_STEPS  # the crossings and tanh 1 unit (batch·d = 512)
    assert step_cap(TINY_STEP_COST, 1)[0] == TINY_MAX_STEPS
    assert step_cap(TINY_STEP_COST + 1, 1)[0] == MAX_STEPS
    assert step_cap(256, 6)[0] == TINY_MAX_STEPS  # tanh 3 units (1 536; tiny since session 17)
    for dim in (18, 30, 33):  # RRR 3-3-3 / 5-3-5, DLN 4-3-3-4
        assert step_cap(256, dim)[0] == MAX_STEPS
    assert "tiny model" in step_cap(256, 2)[1] and "tiny" not in step_cap(256, 18)[1]


def test_the_threshold_takes_tanh3_in_and_keeps_rrr_and_dln_out():
    """Session 17: ``TINY_STEP_COST`` 2048 (was 1024). At batch 256 the SGLD step of 16 chains on a tanh
    network costs within 1.4× of the d = 2 step up to d = 8 (``benchmarks/step_cost_threshold.py``),
    and the 3-unit tanh (d = 6) read 0.766 ± 0.057 for an exact 0.963, healthy, as a non-tiny model
    (thin chosen before the burn-in cut ε, the draws short of 10 relaxation times). Every RRR
    (d ≥ 18) and the DLN (d = 33) of the singular suite must stay non-tiny: their rows rely on it."""
    assert is_tiny(256, 6) and is_tiny(256, 8)  # 1 536, 2 048
    assert not is_tiny(256, 9) and not is_tiny(256, 18) and not is_tiny(256, 33)
    assert is_tiny(1024, 2) and not is_tiny(1025, 2)  # a d = 2 crossing at batch 1024, 1025
    tanh3 = SimpleNamespace(gamma=0.117, dim=6)  # ε after the burn-in of the session-16 run
    thin, why = auto_thin(tanh3, 2.95e-5, 256, TINY_NUM_CHAINS, DRAWS)
    assert thin == TINY_MAX_STEPS // (2 * DRAWS) == 5000  # the session-16 run: thin 125
    assert "tiny model: batch·d = 1536 ≤ 2048" in why


def test_auto_thin_gives_the_crossing_the_larger_budget_and_rrr_the_old_one():
    crossing = SimpleNamespace(gamma=0.145, dim=2)
    thin, why = auto_thin(crossing, 3.6e-5, 256, CHAINS, DRAWS)  # 10·2/(εγ)/1000 draws
    assert thin == math.ceil(10 * 2 / (3.6e-5 * 0.145) / DRAWS) == 3832  # was 1250, before that 125
    assert "capped" not in why and "tiny model: batch·d = 512" in why
    thin, why = auto_thin(crossing, 1.4e-5, 256, CHAINS, DRAWS)  # y = x·w1·w2², ε of session 10
    assert thin == TINY_MAX_STEPS // (2 * DRAWS) == 5000
    assert "capped by the work budget" in why
    rrr = SimpleNamespace(gamma=0.12, dim=18)
    thin, why = auto_thin(rrr, 2e-6, 256, CHAINS, DRAWS)
    assert thin == MAX_STEPS // (2 * DRAWS) == 125  # unchanged
    assert "tiny" not in why
    # a backend's own cap (torch: 20 000 steps) still wins
    thin, why = auto_thin(crossing, 3.6e-5, 256, CHAINS, DRAWS, max_steps=20_000)
    assert thin == 10 and "tiny" not in why


def test_auto_thin_relaxes_the_slowest_preconditioned_coordinate():
    """RMSprop-SGLD: thin counts the relaxation 2/(ε·G·γ) of the coordinate with the smallest G, not
    the median one. State of y = x·w2³ at n = 5000 (session 13; 16 chains, one pooled G): G = 1.31
    for w1, which enters only the prior (V̂ = γ), and 0.0014 for w2 (V̂ = E[∂²U] from its walls).
    The median (0.65) gave thin 9; the draws spanned 2 % of w2's relaxation."""
    gamma, eps = 0.117, 0.0316
    delta = math.sqrt(gamma)
    g = np.array([1.31, 0.0014])
    v_hat = (1.0 / g - delta) ** 2
    state = SimpleNamespace(second_moment=np.tile(v_hat, (16, 1)), count=np.full(16, 10**6))
    params = {"alpha": 0.99, "delta": delta}
    assert slowest_preconditioner(state, params) == pytest.approx(0.0014)
    assert slowest_preconditioner(SimpleNamespace(), params) == 1.0  # SGLD: G = 1
    crossing = SimpleNamespace(gamma=gamma, dim=2)
    thin, why = auto_thin(crossing, eps, 256, 16, DRAWS, state, kernel_params=params)
    tau = 2.0 / (eps * 0.0014 * gamma)
    assert thin == math.ceil(RELAXATIONS * tau / DRAWS) > 100 * 9, why
    assert f"{tau:.3g}" in why


def test_default_chain_count_is_larger_only_for_tiny_models():
    assert choose_num_chains(None, 256, 2)[0] == TINY_NUM_CHAINS == 16  # crossings, tanh 1 unit
    assert "tiny model: batch·d = 512" in choose_num_chains(None, 256, 2)[1]
    assert choose_num_chains(None, 256, 6)[0] == TINY_NUM_CHAINS  # tanh 3 units (session 17)
    for dim in (18, 33):  # RRR 3-3-3, DLN 4-3-3-4: unchanged
        assert choose_num_chains(None, 256, dim) == (DEFAULT_NUM_CHAINS, "4 (default)")
    assert choose_num_chains(7, 256, 2) == (7, "given")  # the user's count always wins
    assert choose_num_chains(None, 256, 2, external=True)[0] == DEFAULT_NUM_CHAINS  # NUTS/HMC


def test_tiny_models_are_not_charged_per_chain():
    """A tiny step costs its overhead (24 µs at 8 chains, 45 µs at 32 on the crossings), so 32
    chains keep the 4-chain thinning; every other model's work budget still counts the chains."""
    crossing = SimpleNamespace(gamma=0.145, dim=2)
    four = auto_thin(crossing, 1.4e-5, 256, CHAINS, DRAWS)[0]
    assert auto_thin(crossing, 1.4e-5, 256, 32, DRAWS)[0] == four == 5000
    assert auto_thin(crossing, 1.4e-5, 256, 32, DRAWS, coldest=2.0)[0] == 2 * four
    dln = SimpleNamespace(gamma=1.13, dim=33)
    budget = int(2e10 / (256 * 33 * 32) / (2 * DRAWS))
    assert auto_thin(dln, 7.3e-7, 256, 32, DRAWS)[0] == budget == 36 < 125


def test_auto_thin_gives_the_coldest_temperature_its_relaxation():
    """temperatures=(1, 2): the factor-2 chains step at ε/2, so τ = 2/(εγ) doubles and the step cap
    doubles with it (the work budget, which counts all 2·C chains, still binds where it did)."""
    dln = SimpleNamespace(gamma=1.13, dim=33)  # the DLN 4-3-3-4 r=1 of the singular suite
    one, _ = auto_thin(dln, 7.3e-7, 256, CHAINS, DRAWS)
    assert one == MAX_STEPS // (2 * DRAWS) == 125
    two, why = auto_thin(dln, 7.3e-7, 256, 2 * CHAINS, DRAWS, coldest=2.0)
    budget = int(2e10 / (256 * 33 * 2 * CHAINS) / (2 * DRAWS))
    assert two == min(budget, 2 * MAX_STEPS // (2 * DRAWS)) == 147  # the work budget binds
    assert "× 2" in why and f"{2 / (7.3e-7 / 2 * 1.13):.3g}" in why
    small = SimpleNamespace(gamma=1.0, dim=2)  # far from every cap: τ alone sets thin
    assert (
        auto_thin(small, 0.1, 8, 2, 100, coldest=2.0)[0] == 2 * auto_thin(small, 0.1, 8, 2, 100)[0]
    )


def test_pooled_step_size_averages_the_windows_not_the_last_one():
    """The heating is linear in ε: windows with heat_k/ε_k = 100, 300 and λ̂_k = 0.2, 0.2 give
    ε = 0.015·0.4/400 = 1.5e-5 whatever the last window's rescaling said; the first window (from
    the stage-1 ε) is left out, and a diverged window caps ε at half its step."""
    windows = [
        {"step_size": 1e-3, "llc": 0.9, "heating": 1.0},  # left out
        {"step_size": 1e-5, "llc": 0.2, "heating": 1e-3},
        {"step_size": 2e-5, "llc": 0.2, "heating": 6e-3},
    ]
    record = {"target_relative_heating": 0.015, "windows": windows}
    assert pooled_step_size(record, fallback=7e-6) == pytest.approx(1.5e-5)
    capped = {**record, "windows": [*windows, {"step_size": 2e-5, "diverged": 1.0}]}
    assert pooled_step_size(capped, fallback=7e-6) == pytest.approx(1e-5)
    assert pooled_step_size({**record, "windows": windows[:2]}, fallback=7e-6) == 7e-6
    assert is_tiny(256, 2) and not is_tiny(256, 18)


def test_the_burnin_heating_of_tiny_models_is_a_trimmed_mean():
    """One chain of 16 in a stiff arm (y = x·w1·w2², w1 ≈ 0, |w2| > 3: 0.2 % of the mass, 70 % of
    the mean Laplacian) must not set the window's heating: the mean did, and the burn-in's ε
    spiralled from 4.2e-5 to 4e-7 (session 10). Heating spread over many chains must still count:
    the median ignored it and x·w1·w2 (RMSprop) ran 14 % hot (session 11)."""
    heat = np.full(16, 1e-3)
    heat[3] = 0.5  # the chain in the arm
    assert window_heating(heat, robust=True) == pytest.approx(1e-3)
    assert window_heating(heat, robust=False) == pytest.approx((15e-3 + 0.5) / 16)
    spread = np.array([1e-3] * 9 + [8e-3] * 7)  # 7 of 16 chains out along the valleys
    assert np.median(spread) == pytest.approx(1e-3)
    assert window_heating(spread, robust=True) == pytest.approx((7e-3 + 5 * 8e-3) / 12)
    assert trimmed_mean(np.array([np.nan, 1.0, 2.0, 3.0]), 0.125) == pytest.approx(2.0)
    assert np.isnan(trimmed_mean(np.array([np.nan]), 0.125))


def test_only_the_pooled_burnin_is_robust(monkeypatch):
    """The trimmed mean is the tiny-model burn-in's alone: every other model (RRR, DLN, the 10k DLN of
    the cost goal) keeps the mean over chains its validation rows were measured with."""
    from slt_ppl.sampling import stepsize

    seen = []

    def fake(runner, state, ck, bk, eps, *, robust=False, **kw):
        seen.append(robust)
        return eps, {"windows": [], "target_relative_heating": 0.015}, state

    monkeypatch.setattr(stepsize, "adapt_along_chains", fake)
    for pooled in (False, True):
        stepsize.adapt_burnin(SimpleNamespace(thin=10), None, None, None, 1e-5, 1000, pooled=pooled)
    assert seen == [False, True]


def test_tiny_models_thin_at_the_burnin_step_size():
    model, data, center = regression_problem(n=200, d=2)  # batch·d = 400: tiny
    post = slt_ppl.localize(model, data, center, gamma=20.0)
    res = slt_ppl.sample(post, num_draws=40, progress=False)
    tuning = json.loads(res.attrs["step_size_tuning"])
    burnin = tuning["burnin_adaptation"]
    assert burnin["heating_over_chains"].startswith("trimmed mean")
    assert "thin_before_burnin" in tuning and "(at the burn-in's ε)" in tuning["thin_reason"]
    eps = res.attrs["step_size"]
    assert eps == burnin["chosen"]
    expected = auto_thin(post, eps, 200, TINY_NUM_CHAINS, 40)[0]
    assert res.attrs["thin"] == tuning["thin"] == expected


def test_the_choice_is_in_the_attrs():
    model, data, center = regression_problem(n=200, d=2)  # batch·d = 400: tiny
    post = slt_ppl.localize(model, data, center, gamma=200.0)  # 2/(εγ) = 10 steps: thin 1
    res = slt_ppl.sample(post, step_size=1e-3, num_draws=100, progress=False)
    tuning = json.loads(res.attrs["step_size_tuning"])
    assert res.attrs["thin"] == tuning["thin"] == 1
    assert "tiny model: batch·d = 400" in tuning["thin_reason"]
    assert f"step cap {TINY_MAX_STEPS:.3g}" in tuning["thin_reason"]
    assert res.attrs["num_chains"] == res["sample_stats"].sizes["chain"] == TINY_NUM_CHAINS
    assert "tiny model: batch·d = 400" in res.attrs["num_chains_choice"]
    given = slt_ppl.sample(post, step_size=1e-3, num_chains=2, num_draws=100, progress=False)
    assert given["sample_stats"].sizes["chain"] == 2 and given.attrs["num_chains_choice"] == "given"


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
