"""The same model in NumPyro and in Pyro, on the same data and center, gives the same λ̂ within
3 combined standard errors, |a − b| ≤ 3·√(se_a² + se_b²), with default settings (auto γ, auto ε).
The draws differ (JAX and torch generators), so only the statistics can agree."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyro")

import slt_ppl  # noqa: E402
from models import numpyro_zoo, pyro_zoo  # noqa: E402

torch.set_num_threads(1)


def both(name: str, num_draws: int, num_chains: int, **kwargs) -> tuple[dict, dict, float]:
    out = {}
    for zoo, backend in [(numpyro_zoo, "numpyro"), (pyro_zoo, "pyro")]:
        model, problem = zoo.PROBLEMS[name](**kwargs)
        post = slt_ppl.localize(model, problem.data, problem.center, backend=backend)
        result = slt_ppl.sample(post, num_draws=num_draws, num_chains=num_chains, progress=False)
        assert result.attrs["backend"] == backend
        est = slt_ppl.llc(result, warn=False)
        out[backend] = {"llc": float(est["llc"]), "se": float(est["llc_se"]), "gamma": post.gamma}
    return out["numpyro"], out["pyro"], float(problem.theory_lambda)


def agree(a: dict, b: dict) -> bool:
    return abs(a["llc"] - b["llc"]) <= 3 * math.hypot(a["se"], b["se"])


@pytest.mark.slow
def test_linear_regression_agrees_and_matches_theory():
    jax_est, torch_est, lam = both("linear_regression", num_draws=400, num_chains=8)
    assert lam == 5.0
    assert agree(jax_est, torch_est), (jax_est, torch_est)
    assert abs(torch_est["llc"] - lam) <= 0.1 * lam, torch_est
    # the unit-information γ agrees between the two Hutchinson estimates
    assert torch_est["gamma"] == pytest.approx(jax_est["gamma"], rel=0.05)


@pytest.mark.slow
def test_deep_linear_network_agrees():
    jax_est, torch_est, _ = both(
        "dln", num_draws=400, num_chains=8, widths=[3, 2, 3], rank=1, n=10_000
    )
    assert agree(jax_est, torch_est), (jax_est, torch_est)
    assert torch_est["llc"] > 0
