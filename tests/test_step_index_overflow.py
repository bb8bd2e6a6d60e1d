"""The loop's int32 step counter must never hide a divergence.

Session 8 found it did: the second ε-adaptation stage (``stepsize.adapt_burnin``) numbered its
draws from 10⁶, and at thin 2500 (a tiny model at two temperatures: step cap 2·2.5·10⁶ over
2·1000 draws) the step index 10⁶·2500 wrapped past 2³¹ to a negative number, which reads as
"healthy" (−1 is the healthy marker). A chain that diverged in a window kept stepping from its
frozen position to |w| ≈ 10²⁴ unseen, the window was not discarded, and the run reported 5-7 of
16 chains per temperature dead at step 0 (crossing y = x·w1²·w2³, n = 5000, seeds 0 and 1).
"""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np

from slt_ppl.sampling import stepsize
from slt_ppl.sampling.loop import ChainState, SegmentRunner

INT32_MAX = 2**31 - 1


def test_a_divergence_at_a_wrapped_step_index_is_still_marked():
    wrapped = jnp.asarray(10**6, jnp.int32) * jnp.asarray(2500, jnp.int32)
    assert int(wrapped) < 0  # the overflow itself (two's complement)
    state = ChainState(jnp.zeros(2), jnp.asarray(-1, jnp.int32))
    out = SegmentRunner._commit(state, jnp.ones(2), jnp.asarray(False), wrapped)
    assert int(out.diverged_at) == INT32_MAX  # diverged (≥ 0), the index unknowable
    np.testing.assert_array_equal(out.kernel_state, np.zeros(2))  # frozen where it was
    ok = SegmentRunner._commit(state, jnp.ones(2), jnp.asarray(True), wrapped)
    assert int(ok.diverged_at) == -1  # a good step at a wrapped index stays healthy
    at_7 = SegmentRunner._commit(state, jnp.ones(2), jnp.asarray(False), jnp.asarray(7))
    assert int(at_7.diverged_at) == 7


def test_burnin_windows_number_their_steps_inside_int32(monkeypatch):
    seen = {}

    def fake_adapt(runner, state, chain_keys, batch_keys, eps, *, window, max_windows, offset,
                   **kw):  # fmt: skip
        seen.update(offset=offset, window=window, max_windows=max_windows)
        return eps, {"windows": []}, state

    monkeypatch.setattr(stepsize, "adapt_along_chains", fake_adapt)
    for thin in (1250, 2500, 25_000):
        stepsize.adapt_burnin(SimpleNamespace(thin=thin), None, None, None, 1e-5, 1000)
        last_step = (seen["offset"] + seen["max_windows"] * seen["window"]) * thin
        assert last_step <= INT32_MAX
        assert seen["offset"] * thin >= 2000  # past the first stage's 20 windows of 100 steps
        if thin == 1250:  # where 10⁶ fitted, the draws (and their keys) are unchanged
            assert seen["offset"] == 10**6
