"""The tiny GPT-2-style causal LM (models/tiny_lm.py, models/tiny_lm_flax.py): built from a config,
trained on Markov-chain tokens, localized with per-token cross-entropy, and its Flax twin.

A smaller config than the benchmark's (1 layer, d_model 32) keeps the file within its CI budget;
the code paths are the same."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import tiny_lm

CFG = tiny_lm.TinyLMConfig(vocab_size=16, n_positions=16, n_embd=32, n_layer=1, n_head=2)


@pytest.fixture(scope="module")
def chain() -> tiny_lm.MarkovChain:
    return tiny_lm.markov_chain(CFG.vocab_size, successors=3, seed=0)


@pytest.fixture(scope="module")
def trained(chain):
    torch.set_num_threads(1)
    data = tiny_lm.lm_data(tiny_lm.sample_sequences(chain, 512, CFG.n_positions + 1, seed=1))
    model = tiny_lm.TinyGPT2(CFG, seed=0)
    history = tiny_lm.train(model, data, steps=120, batch_size=32, lr=1e-2)
    return model, data, history


def test_model_layout_from_config():
    model = tiny_lm.TinyGPT2(CFG)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    d, v = CFG.n_embd, CFG.vocab_size
    # Hugging Face GPT-2 names and Conv1D shapes (in, out); the LM head is tied (no own weight)
    assert shapes["transformer.wte.weight"] == (v, d)
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (d, 3 * d)
    assert shapes["transformer.h.0.attn.c_proj.weight"] == (d, d)
    assert shapes["transformer.h.0.mlp.c_fc.weight"] == (d, 4 * d)
    per_layer = (
        2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    )
    expected = (v + CFG.n_positions) * d + CFG.n_layer * per_layer + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(p.numel() for p in tiny_lm.TinyGPT2(tiny_lm.TinyLMConfig()).parameters()) == 106_240


def test_model_is_causal():
    model = tiny_lm.TinyGPT2(CFG).eval()
    x = torch.randint(CFG.vocab_size, (2, 10))
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % CFG.vocab_size
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape == (2, 10, CFG.vocab_size)
    torch.testing.assert_close(a[:, :6], b[:, :6])  # earlier positions never see token 6
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_markov_chain_statistics(chain):
    p = chain.transition
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(chain.stationary @ p, chain.stationary, atol=1e-12)
    assert chain.entropy_rate < math.log(3) < chain.unigram_entropy <= math.log(CFG.vocab_size)
    # sampled bigrams follow the transition matrix: the row of the most frequent token, whose
    # entries have binomial standard errors √(p(1−p)/count); 5 se leaves no room for flakes
    tokens = tiny_lm.sample_sequences(chain, 400, 20, seed=3)
    a = np.bincount(tokens[:, :-1].ravel(), minlength=CFG.vocab_size).argmax()
    nxt = tokens[:, 1:][tokens[:, :-1] == a]
    freq = np.bincount(nxt, minlength=CFG.vocab_size) / len(nxt)
    se = np.sqrt(p[a] * (1 - p[a]) / len(nxt)) + 1e-12
    assert np.all(np.abs(freq - p[a]) <= 5 * se + 1e-9)


def test_training_beats_unigram_and_respects_entropy_rate(trained, chain):
    model, _, history = trained
    assert history[0] > chain.unigram_entropy  # untrained: about log(vocab)
    held_out = tiny_lm.lm_data(tiny_lm.sample_sequences(chain, 256, CFG.n_positions + 1, seed=9))
    with torch.no_grad():
        nll = tiny_lm.per_token_nll(model(held_out["x"]), held_out)
    loss = float(nll.mean())
    # learned the bigram structure: clearly below the unigram entropy
    assert loss < chain.unigram_entropy - 0.5
    # cross-entropy ≥ entropy rate (Gibbs): the held-out mean may undershoot it only by noise;
    # se from the per-sequence means (sequences are independent, tokens within one are not)
    se = float(nll.mean(dim=1).std()) / math.sqrt(nll.shape[0])
    assert loss > chain.entropy_rate - 4 * se


def test_localize_counts_tokens(trained):
    """nβ multiplies the mean per-token NLL, whichever path localize_lm takes."""
    model, data, _ = trained
    post = tiny_lm.localize_lm(model, data, nbeta=20.0, gamma=100.0)
    w = post.center + 0.01 * torch.randn(post.dim, generator=torch.Generator().manual_seed(0))
    params = post.unravel(w)
    with torch.no_grad():
        logits = torch.func.functional_call(model, params, (data["x"],))
        per_token = float(tiny_lm.per_token_nll(logits, data).mean())
        assert float(post.nbeta * post.full_loss(w)) == pytest.approx(20.0 * per_token, rel=1e-5)
    default = tiny_lm.localize_lm(model, data, gamma=100.0)
    rows, tokens = data["y"].shape
    expected = tokens * rows / math.log(rows)  # nβ·L_n = Σ_rows NLL / log n
    scale = (
        default.nbeta * float(default.full_loss(post.center)) / float(post.full_loss(post.center))
    )
    assert scale == pytest.approx(expected * post.nbeta / 20.0, rel=1e-5)


def test_llc_run_on_the_lm_reports_a_verdict(trained):
    import slt_ppl

    model, data, _ = trained
    post = tiny_lm.localize_lm(model, data, nbeta=20.0, gamma=100.0)
    result = slt_ppl.sample(
        post, kernel="sgld", step_size=1e-4, batch_size=32, num_chains=2, num_draws=60,
        num_burnin=60, thin=1, progress=False,
    )  # fmt: skip
    est = slt_ppl.llc(result)
    assert math.isfinite(float(est["llc"])) and math.isfinite(float(est["llc_se"]))
    assert isinstance(est.attrs["verdict"], str) and est.attrs["verdict"]


def test_flax_twin_gives_the_same_logits(trained):
    jnp = pytest.importorskip("jax.numpy")
    pytest.importorskip("flax")
    from models import tiny_lm_flax

    model, data, _ = trained
    twin = tiny_lm_flax.from_torch(model)
    x = data["x"][:8]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(np.asarray(twin(jnp.asarray(x.numpy()))), expected, atol=1e-4)
    ell = tiny_lm_flax.per_token_nll(
        twin(jnp.asarray(x.numpy())), {"y": jnp.asarray(data["y"][:8].numpy())}
    )
    np.testing.assert_allclose(
        np.asarray(ell), tiny_lm.per_token_nll(torch.as_tensor(expected), {"y": data["y"][:8]}).numpy(),
        atol=1e-4,
    )  # fmt: skip


def test_flax_posterior_counts_tokens_like_torch(trained):
    pytest.importorskip("flax")
    from models import tiny_lm_flax

    model, data, _ = trained
    arrays = {k: v.numpy() for k, v in data.items()}
    post = tiny_lm_flax.localize_lm_flax(tiny_lm_flax.from_torch(model), arrays, gamma=100.0)
    rows, tokens = arrays["y"].shape
    assert post.nbeta == pytest.approx(tokens * rows / math.log(rows))
    assert post.dim == sum(p.numel() for p in model.parameters())
    expected = tiny_lm.mean_token_loss(model, data)
    assert post.info["loss_center_full"] == pytest.approx(expected, abs=1e-4)
