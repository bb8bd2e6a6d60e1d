"""The performance paths of the sampling loop change nothing observable (no timings here)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_ppl
from models.numpyro_zoo import dln, normal_crossing
from slt_ppl.kernels import get_kernel
from slt_ppl.sampling.loop import FAST_INDEX_MAX_ROWS, SegmentRunner, minibatch_indices


def _run(post, kernel: str, center_table: str, thin: int = 1):
    k = get_kernel(kernel)
    runner = SegmentRunner(post, k, 50, thin, 3, True, True, 1e3, center_table=center_table)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(3))
    state = runner.init(keys, jnp.broadcast_to(post.center, (3, post.dim)) + 0.01)
    seg = runner.build(20)
    out = seg(state, keys, jax.random.PRNGKey(1), 1e-4, 0)
    return runner, seg, out


@pytest.fixture(scope="module")
def post():
    model, problem = dln(widths=[4, 3, 4], n=400, seed=2)
    return slt_ppl.localize(model, problem.data, problem.center)


@pytest.mark.parametrize("kernel,thin", [("sgld", 1), ("sgld", 2), ("sghmc", 1)])
def test_center_table_matches_forward_pass(post, kernel: str, thin: int) -> None:
    runner, _, (state_a, rec_a) = _run(post, kernel, "auto", thin)
    assert runner.center_losses() is not None  # the DLN loss is a per-datum mean
    _, _, (state_b, rec_b) = _run(post, kernel, "off", thin)
    np.testing.assert_allclose(rec_a.loss_center, rec_b.loss_center, rtol=1e-5)
    for field in ("loss", "acceptance", "grad_norm", "distance", "position"):
        np.testing.assert_array_equal(getattr(rec_a, field), getattr(rec_b, field))
    np.testing.assert_array_equal(state_a.kernel_state.position, state_b.kernel_state.position)


def test_center_table_refused_for_non_separable_loss() -> None:
    model, problem = normal_crossing(n=300)
    base = slt_ppl.localize(model, problem.data, problem.center)

    def batch_mean_loss(w, batch):  # depends on the batch as a whole: not a per-datum mean
        return base.loss_fn(w, batch) + jnp.mean(batch["x"]) ** 2

    post = base.replace(loss_fn=batch_mean_loss)
    runner = SegmentRunner(post, get_kernel("sgld"), 50, 1, 3, False, True, 1e3)
    assert runner.center_losses() is None


def test_compile_time_is_recorded(post) -> None:
    runner, seg, _ = _run(post, "sgld", "auto")
    assert runner.stats["compile_time_s"] > 0
    before = runner.stats["compile_time_s"]
    seg(*_fresh(runner), 1e-4, 20)
    assert runner.stats["compile_time_s"] == before  # compiled once per segment length


def _fresh(runner):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(3))
    state = runner.init(keys, jnp.broadcast_to(runner.posterior.center, (3, runner.posterior.dim)))
    return state, keys, jax.random.PRNGKey(1)


def test_equal_programs_compile_once_and_give_the_same_draws() -> None:
    """Two posteriors of one model with different centers lower to the same programs: the second
    sample() compiles nothing, and its draws equal those of a run from an empty cache."""
    from slt_ppl import compile_cache

    model, problem = dln(widths=[4, 3, 4], n=400, seed=5)
    other = {k: v + np.float32(0.01) for k, v in problem.center.items()}
    post_a = slt_ppl.localize(model, problem.data, problem.center, gamma=1.0)
    post_b = slt_ppl.localize(model, problem.data, other, gamma=1.0)
    kwargs = dict(
        kernel="sgld", thin=1, step_size=1e-4, num_chains=2, num_draws=30, seed=3, progress=False
    )
    compile_cache.clear()
    slt_ppl.sample(post_a, **kwargs)
    misses = compile_cache.STATS["misses"]
    assert misses > 0
    cached = slt_ppl.sample(post_b, **kwargs)
    assert compile_cache.STATS["misses"] == misses
    # served by the structural cache (no lowering at all) or by the lowered-text cache
    assert compile_cache.STATS["program_hits"] + compile_cache.STATS["hits"] > 0
    compile_cache.clear()
    fresh = slt_ppl.sample(post_b, **kwargs)
    np.testing.assert_array_equal(
        cached["sample_stats"]["loss"].values, fresh["sample_stats"]["loss"].values
    )


def test_program_cache_keys_on_the_argument_signature() -> None:
    """An argument the program does not use is pruned from its text; the cache must still tell
    apart calls whose unused argument differs in shape (full-batch MALA ignores batch keys)."""
    from slt_ppl.compile_cache import cached_call

    def first(a, unused):
        return a * 2.0

    x = jnp.ones(3)
    np.testing.assert_array_equal(cached_call(first, x, jnp.zeros(2, jnp.uint32)), 2 * x)
    np.testing.assert_array_equal(cached_call(first, x, jnp.zeros((2, 2), jnp.uint32)), 2 * x)


@pytest.mark.parametrize("n", [1, 7, 1000, 65_536])
def test_one_word_minibatch_indices_are_uniform(n: int) -> None:
    """``minibatch_indices`` (one 32-bit word per index, mod n) draws every row with probability
    1/n: Pearson's χ² over 400 000 draws against the uniform counts. Its modulo bias, ≤ n/2³²
    relative, is far below what 400 000 draws resolve, so a correct draw gives χ² ≈ n − 1 ± √(2n);
    a draw that favors some rows (e.g. a wrong reduction) fails by orders of magnitude."""
    key = jax.random.PRNGKey(3)
    draws = jax.vmap(lambda t: minibatch_indices(jax.random.fold_in(key, t), 256, n))(
        jnp.arange(1563)
    )
    idx = np.asarray(draws).ravel()
    assert idx.dtype == np.int32 and idx.min() >= 0 and idx.max() < n
    if n == 1:
        return
    counts = np.bincount(idx, minlength=n)
    expected = idx.size / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    df = n - 1
    assert abs(chi2 - df) < 5 * math.sqrt(2 * df) + 10, (chi2, df)  # 5 sd of χ²_df (+ small df)


def test_large_n_draws_indices_with_randint() -> None:
    """Above ``FAST_INDEX_MAX_ROWS`` rows the exact ``jax.random.randint`` is used."""
    key = jax.random.PRNGKey(4)
    n = FAST_INDEX_MAX_ROWS + 1
    expected = jax.random.randint(key, (256,), 0, n)
    np.testing.assert_array_equal(minibatch_indices(key, 256, n), expected)
