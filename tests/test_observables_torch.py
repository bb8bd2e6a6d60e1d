"""Probe losses on the torch backend (an ``nn.Module`` with a user loss, a Pyro model through the
one-row fallback, a tiny sequence model with per-token losses) and observe + checkpoint resume.

The torch draws differ from JAX's (different generators), so the recorded probe losses are checked
against the same losses recomputed from the kept draws (``keep_draws=True``) instead."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _reliability_models import regression_problem
from _torch_models import torch_posterior

import slt_ppl

RUN = dict(
    kernel="sgld", step_size=1e-3, num_chains=3, num_draws=24, num_burnin=6, thin=2,
    batch_size=32, keep_draws=True, progress=False, seed=4,
)  # fmt: skip


def _gaussian_rows(out, batch):
    return 0.5 * (batch["y"] - out.reshape(batch["y"].shape)) ** 2


def _weights(result, name):
    return result["posterior"][name].values  # (chain, draw, ...)


@pytest.mark.parametrize("kind", ["module", "pyro"])
def test_recorded_probe_losses_equal_losses_at_the_kept_draws(kind):
    _, data, center = regression_problem()
    probe = {k: np.asarray(v[:9]) for k, v in data.items()}
    if kind == "module":
        linear = torch.nn.Linear(data["x"].shape[1], 1, bias=False)
        with torch.no_grad():
            linear.weight[:] = torch.as_tensor(center["w"])[None]
        post = slt_ppl.localize(linear, data, loss_fn=_gaussian_rows, device="cpu")
        assert post.per_sample_loss is not None and post.info["tokens_per_row"] == 0
    else:  # the Pyro model has no per_sample_loss: ℓ_i is loss_fn on one-row batches
        post = torch_posterior("pyro")
        assert post.per_sample_loss is None
    result = slt_ppl.sample(post, **RUN, observe={"p": probe}, observe_every=3)
    w = _weights(result, "weight" if kind == "module" else "w").reshape(3, 24, -1)
    recorded = result["sample_stats"]["loss_p"]
    assert recorded.dims == ("chain", "observed_draw", "p") and recorded.shape == (3, 8, 9)
    at = w[:, ::3]  # draws 0, 3, ..., 21 of the sample
    expected = 0.5 * (probe["y"] - np.einsum("cdk,pk->cdp", at, probe["x"])) ** 2
    if kind == "pyro":  # −log N(y; xw, 1)
        expected = expected + 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(recorded.values, expected, rtol=1e-5, atol=1e-6)
    center_losses = result["sample_stats"]["loss_p_center"].values
    w_star = np.asarray(center["w"])
    ref = 0.5 * (probe["y"] - probe["x"] @ w_star) ** 2 + (kind == "pyro") * 0.5 * math.log(
        2 * math.pi
    )
    np.testing.assert_allclose(center_losses, ref, rtol=1e-5, atol=1e-6)


VOCAB, T, ROWS = 5, 6, 48


class _TinyLM(torch.nn.Module):
    """Next-token logits from the current token: embedding → tanh → linear (bigram model)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 4)
        self.out = torch.nn.Linear(4, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(x)))


def _token_ce(logits, batch):
    flat = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), batch["y"].reshape(-1), reduction="none"
    )
    return flat.reshape(batch["y"].shape)


def test_per_token_losses_of_a_sequence_model():
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (ROWS, T + 1))
    data = {"x": tokens[:, :-1], "y": tokens[:, 1:]}
    model = _TinyLM()
    post = slt_ppl.localize(model, data, loss_fn=_token_ce, device="cpu")
    assert post.info["tokens_per_row"] == T
    assert post.nbeta == pytest.approx(T * ROWS / math.log(ROWS))  # T·n/log n (docs/observables)
    probe = {k: v[:5] for k, v in data.items()}
    result = slt_ppl.sample(post, **RUN, observe={"val": probe, "train": data})
    stats = result["sample_stats"]
    assert stats["loss_val"].dims == ("chain", "draw", "val", "val_token")
    assert stats["loss_val"].shape == (3, 24, 5, T)
    # recompute draw 7 of chain 1 with the kept weights
    params = {k: torch.as_tensor(result["posterior"][k].values[1, 7]) for k in post.sites}
    logits = torch.func.functional_call(model, params, (probe["x"],))
    expected = _token_ce(logits, probe).detach().numpy()
    np.testing.assert_allclose(stats["loss_val"].values[1, 7], expected, rtol=1e-5, atol=1e-6)
    # L_B is the mean per-token NLL: the train probe's mean at w* is L_n(w*)
    assert float(stats["loss_train_center"].mean()) == pytest.approx(
        post.info["loss_center_full"], rel=1e-5
    )
    per_token = slt_ppl.bif(result, "val", per="token")
    assert per_token["bif"].shape == (5 * T, 5 * T)
    per_sample = slt_ppl.bif(result, "val", kind="correlation")
    assert np.allclose(np.diag(per_sample["bif"].values), 1.0)
    chi = slt_ppl.susceptibility(
        {"full": result, "same": result}, sampling="train", probe="val", per="token"
    )
    assert chi["susceptibility"].dims == ("restriction", "val_item")
    values = chi["susceptibility"].values
    np.testing.assert_allclose(values[0], values[1], rtol=1e-9)  # "same" is the full run
    assert np.all(np.isfinite(chi["susceptibility_se"].values))
    assert np.all(chi["susceptibility_se"].values > 0)
