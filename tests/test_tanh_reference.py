"""The tanh network's exact LLC with the output weights integrated out (models.tanh_marginal)
against the independent 2-D quadrature of slt_ppl.reference on the full (a, b) posterior."""

from __future__ import annotations

import numpy as np
import pytest

import slt_ppl
from models import numpyro_zoo as zoo
from models.tanh_marginal import _sorted_indices, tanh_exact_llc
from slt_ppl.reference import exact_llc


def _posterior(hidden: int, n: int, noise: float = 1.0):
    model, problem = zoo.tanh_zero(hidden=hidden, n=n, noise=noise, seed=1)
    return slt_ppl.localize(model, problem.data, problem.center)


def test_one_unit_equals_2d_quadrature():
    """Both are deterministic quadratures with errors ≤ 1e-6 (their own estimates, ~1e-9 measured),
    so they must agree to 1e-5 at both temperature factors (measured: 1e-9 at n = 1000)."""
    post = _posterior(hidden=1, n=300)
    mine = tanh_exact_llc(post, 1.0, (1.0, 2.0))
    ref = exact_llc(post, temperatures=(1.0, 2.0))
    assert mine["converged"]
    np.testing.assert_allclose(mine["llc"], ref["llc_at_temperature"].values, rtol=0, atol=1e-5)


def test_permutation_reduction_counts_every_grid_point_once():
    for size, hidden in ((5, 2), (4, 3), (3, 4)):
        combos, log_mult = _sorted_indices(size, hidden)
        assert np.all(np.diff(combos, axis=1) >= 0)
        assert np.isclose(np.exp(log_mult).sum(), size**hidden)


def test_wrong_noise_is_refused():
    post = _posterior(hidden=2, n=200, noise=0.5)
    with pytest.raises(ValueError, match="differs from the tanh loss"):
        tanh_exact_llc(post, noise=1.0)
