"""Tiny models record the full-data loss L_n(w_t) at every draw instead of the paired minibatch
loss L_B(w_t) − L_B(w*) (``sampling.defaults.choose_full_loss``; ``Plan.full_loss``).

Why: the paired trace's minibatch noise is shared by all chains (one batch per step), so more
chains do not average it out; on the crossing y = x·w2 (n = 1000) the same 16-chain run read
λ̂ = 0.256 ± 0.021 from the minibatch trace and 0.240 ± 0.006 from the full-data loss of its draws
(exact 0.235 by quadrature; docs/validation.md, session 8). Here: the choice rule, the recorded
trace equals L_n at the kept draws on both backends, and the estimators treat it as noise-free.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reliability_models import regression_problem

import slt_ppl
from slt_ppl.errors import SettingError
from slt_ppl.estimators._common import is_minibatch
from slt_ppl.sampling.defaults import choose_full_loss

KW = dict(kernel="sgld", step_size=1e-3, batch_size=16, num_chains=2, num_draws=20, thin=40,
          keep_draws=True, progress=False, seed=3)  # fmt: skip


def test_the_choice_rule():
    # the crossings: d = 2, batch 256, n = 5000, thin 1250: tiny and 5000 ≤ 0.1·1250·256
    assert choose_full_loss(None, True, 256, 2, 5000, 1250)[0]
    assert not choose_full_loss(None, True, 256, 2, 5000, 100)[0]  # 5000 > 2560: too costly
    assert not choose_full_loss(None, True, 256, 18, 5000, 10**4)[0]  # RRR 3-3-3: not tiny
    assert not choose_full_loss(None, False, 256, 2, 200, 1)[0]  # full batch: trace already L_n
    assert choose_full_loss(True, True, 256, 18, 5000, 1) == (True, "given")
    assert choose_full_loss(False, True, 256, 2, 5000, 1250) == (False, "given")


def _full_losses(post, res):
    w = np.asarray(res["posterior"]["w"].values)  # (chain, draw, d)
    flat = jnp.asarray(w.reshape(-1, w.shape[-1]))
    return np.asarray(jax.vmap(lambda v: post.loss_fn(v, post.data))(flat)).reshape(w.shape[:2])


def test_the_trace_is_the_full_data_loss_at_the_draws():
    model, data, center = regression_problem(n=200, d=2)
    post = slt_ppl.localize(model, data, center)
    res = slt_ppl.sample(post, full_loss=True, **KW)
    stats = res["sample_stats"]
    np.testing.assert_allclose(stats["loss"].values, _full_losses(post, res), rtol=1e-5)
    full_center = float(post.loss_fn(post.center, post.data))
    np.testing.assert_allclose(stats["loss_center"].values, full_center, rtol=1e-6)
    assert res.attrs["loss_trace"] == "full" and not is_minibatch(dict(res.attrs))
    # the same chains, paired minibatch trace: the positions are identical, the trace is not
    paired = slt_ppl.sample(post, full_loss=False, **KW)
    np.testing.assert_array_equal(paired["posterior"]["w"].values, res["posterior"]["w"].values)
    assert paired.attrs["loss_trace"] == "minibatch" and is_minibatch(dict(paired.attrs))
    assert not np.allclose(paired["sample_stats"]["loss"].values, stats["loss"].values)
    # automatic (tiny: 16·2 ≤ 2048): n = 200 > 0.1·thin·batch = 64 at thin 40; ≤ 320 at thin 200
    assert slt_ppl.sample(post, **KW).attrs["loss_trace"] == "minibatch"
    auto = slt_ppl.sample(post, **{**KW, "thin": 200, "num_draws": 5})
    assert auto.attrs["loss_trace"] == "full"
    with pytest.raises(SettingError, match="full_loss"):
        slt_ppl.sample(post, full_loss="yes", **KW)


def test_torch_records_the_full_data_loss_too():
    pytest.importorskip("pyro")
    torch = pytest.importorskip("torch")
    from _torch_models import torch_posterior

    post = torch_posterior("pyro")
    res = slt_ppl.sample(post, full_loss=True, **KW)
    w = torch.as_tensor(np.asarray(res["posterior"]["w"].values))
    with torch.no_grad():
        want = torch.stack([torch.stack([post.loss_fn(v, post.data) for v in c]) for c in w])
    np.testing.assert_allclose(res["sample_stats"]["loss"].values, want.numpy(), rtol=1e-5)
    assert res.attrs["loss_trace"] == "full"
