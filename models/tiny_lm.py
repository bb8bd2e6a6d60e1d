"""A tiny GPT-2-style causal language model in plain torch, synthetic Markov-chain token data, a
short training routine, and its local posterior with per-token cross-entropy.

The module has the parameter names and shapes of Hugging Face's ``GPT2LMHeadModel`` (``transformer.
wte``, ``transformer.wpe``, ``transformer.h.{i}.attn.c_attn`` with the fused q|k|v ``Conv1D``
weight of shape (n_embd, 3·n_embd), ``mlp.c_fc``, ``mlp.c_proj``, ``ln_1/ln_2/ln_f``; the LM head
is tied to ``wte``), so a ``state_dict`` copies between the two (benchmarks/
devinterp_lm_comparison.py checks equal logits) and GPT-2 head masks apply unchanged. It is
written here rather than imported from ``transformers`` so that neither the package nor its tests
need ``transformers`` (a large download that devinterp pulls in its own venv), and so that the
forward pass is plain tensor algebra that ``torch.func.vmap`` batches over chains.

Counting for token data (docs/language_models.md): a row is one sequence of T + 1 tokens, giving
T predicted tokens; ``per_token_nll`` returns ℓ_{i,t} = −log p(x_{i,t+1} | x_{i,≤t}) with shape
(b, T) and L_n = mean over rows and tokens (the mean per-token cross-entropy, as devinterp and
Hugging Face report it); n counts rows (sequences).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class TinyLMConfig:
    """Sizes of the model (GPT-2 names). The defaults give 106 240 parameters (2 layers,
    d_model 64, 4 heads, 64 tokens, 32 positions)."""

    vocab_size: int = 64
    n_positions: int = 32
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


class Conv1D(nn.Module):
    """GPT-2's linear layer with the weight stored (in, out): y = x·W + b."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, heads split from the fused q|k|v projection (GPT-2)."""

    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)
        mask = torch.tril(torch.ones(cfg.n_positions, cfg.n_positions, dtype=torch.bool))
        self.register_buffer("causal", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=-1)
        heads = [z.reshape(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v)]
        q, k, v = heads
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.n_head)
        scores = scores.masked_fill(~self.causal[:t, :t], torch.finfo(scores.dtype).min)
        out = torch.softmax(scores, dim=-1) @ v
        return self.c_proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1 x), then x + mlp(ln_2 x), GELU (tanh)."""

    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = nn.ModuleDict(
            {
                "c_fc": Conv1D(cfg.n_embd, 4 * cfg.n_embd),
                "c_proj": Conv1D(4 * cfg.n_embd, cfg.n_embd),
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        hidden = F.gelu(self.mlp["c_fc"](self.ln_2(x)), approximate="tanh")
        return x + self.mlp["c_proj"](hidden)


class TinyGPT2(nn.Module):
    """GPT-2 causal LM: token ids (b, t) → next-token logits (b, t, vocab)."""

    def __init__(self, cfg: TinyLMConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.n_positions, cfg.n_embd),
                "h": nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                "ln_f": nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
            }
        )
        self._init_weights(seed)

    def _init_weights(self, seed: int) -> None:
        """GPT-2's initialization: N(0, 0.02²) weights, residual projections scaled by
        1/√(2·n_layer), zero biases, unit LayerNorm gains."""
        gen = torch.Generator().manual_seed(seed)
        std = self.config.initializer_range
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("weight") and p.dim() == 2:
                    scale = std / math.sqrt(2 * self.config.n_layer) if "c_proj" in name else std
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)

    def forward(self, input_ids: Tensor) -> Tensor:
        t = input_ids.shape[-1]
        if t > self.config.n_positions:
            raise ValueError(f"sequence length {t} exceeds n_positions={self.config.n_positions}")
        tr = self.transformer
        x = tr["wte"](input_ids) + tr["wpe"].weight[:t]
        for block in tr["h"]:
            x = block(x)
        return tr["ln_f"](x) @ tr["wte"].weight.T  # LM head tied to the token embedding


def per_token_nll(logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """ℓ_{i,t} = −log softmax(logits_{i,t})[y_{i,t}], shape (b, T): the per-token cross-entropy
    (natural log), the per-sample loss of a causal LM."""
    logp = torch.log_softmax(logits, dim=-1)
    return -torch.gather(logp, -1, batch["y"].unsqueeze(-1)).squeeze(-1)


def lm_data(tokens: np.ndarray | Tensor) -> dict[str, Tensor]:
    """Rows of T + 1 tokens → {"x": first T tokens, "y": the next-token targets} (int64)."""
    t = torch.as_tensor(np.asarray(tokens), dtype=torch.int64)
    if t.dim() != 2 or t.shape[1] < 2:
        raise ValueError(f"tokens must have shape (rows, T + 1) with T ≥ 1, got {tuple(t.shape)}")
    return {"x": t[:, :-1].contiguous(), "y": t[:, 1:].contiguous()}


# --- synthetic data: a sparse Markov chain over the vocabulary ---------------------------------


@dataclass(frozen=True)
class MarkovChain:
    """A first-order Markov chain over ``vocab_size`` tokens: ``transition[a, b]`` = P(b | a)."""

    transition: np.ndarray

    @property
    def stationary(self) -> np.ndarray:
        """π with π·P = π (the left eigenvector of eigenvalue 1, normalized)."""
        vals, vecs = np.linalg.eig(self.transition.T)
        pi = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1.0))]))
        return pi / pi.sum()

    @property
    def entropy_rate(self) -> float:
        """H(X_{t+1} | X_t) = −Σ_a π_a Σ_b P_ab log P_ab (nats): the best achievable per-token
        loss in the stationary regime."""
        p = self.transition
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        return float(-(self.stationary * plogp.sum(axis=1)).sum())

    @property
    def unigram_entropy(self) -> float:
        """H(π) (nats): the loss of a model that predicts the stationary token frequencies."""
        pi = self.stationary
        return float(-(pi[pi > 0] * np.log(pi[pi > 0])).sum())


def markov_chain(vocab_size: int = 64, successors: int = 4, seed: int = 0) -> MarkovChain:
    """Each token moves to ``successors`` tokens with Dirichlet(2)-distributed probabilities: its
    successor on one random cycle through all tokens (so the chain is irreducible) plus
    ``successors − 1`` other random tokens (no self-loops)."""
    if not 1 <= successors < vocab_size:
        raise ValueError(f"successors must be in [1, vocab_size), got {successors}")
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(vocab_size)
    next_on_cycle = np.empty(vocab_size, dtype=int)
    next_on_cycle[cycle] = np.roll(cycle, -1)
    transition = np.zeros((vocab_size, vocab_size))
    for a in range(vocab_size):
        others = np.setdiff1d(np.arange(vocab_size), [a, next_on_cycle[a]])
        extra = rng.choice(others, size=successors - 1, replace=False)
        targets = np.concatenate([[next_on_cycle[a]], extra])
        transition[a, targets] = rng.dirichlet(np.full(successors, 2.0))
    return MarkovChain(transition)


def sample_sequences(chain: MarkovChain, rows: int, length: int, seed: int = 0) -> np.ndarray:
    """``rows`` sequences of ``length`` tokens, each started from the stationary distribution."""
    rng = np.random.default_rng(seed)
    vocab = chain.transition.shape[0]
    cumulative = np.cumsum(chain.transition, axis=1)
    out = np.empty((rows, length), dtype=np.int64)
    out[:, 0] = rng.choice(vocab, size=rows, p=chain.stationary)
    for t in range(1, length):
        u = rng.random(rows)[:, None]
        out[:, t] = np.minimum((u > cumulative[out[:, t - 1]]).sum(axis=1), vocab - 1)
    return out


# --- training -----------------------------------------------------------------------------------


def train(
    model: TinyGPT2,
    data: Mapping[str, Tensor],
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """AdamW on the mean per-token cross-entropy with random minibatches; returns the minibatch
    loss of every step. The model is left in ``eval()`` mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rows = data["x"].shape[0]
    history = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(rows, (min(batch_size, rows),), generator=gen)
        batch = {k: v[idx] for k, v in data.items()}
        loss = per_token_nll(model(batch["x"]), batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    model.eval()
    return history


def mean_token_loss(model: nn.Module, data: Mapping[str, Tensor]) -> float:
    """L_n at the model's current weights: the mean per-token cross-entropy over all rows."""
    with torch.no_grad():
        return float(per_token_nll(model(data["x"]), data).mean())


# --- the local posterior ------------------------------------------------------------------------


def localize_lm(
    model: TinyGPT2,
    data: Mapping[str, Tensor],
    *,
    nbeta: float | None = None,
    gamma: float | str = "auto",
):
    """The local posterior of a trained causal LM at its current weights, with the per-token
    cross-entropy as loss, on slt_ppl's torch path.

    ``nbeta`` multiplies the *mean per-token* NLL: U(w) = nβ·L_n(w) + γ/2·‖w − w*‖² with
    L_n = mean of ℓ_{i,t} over rows and tokens (devinterp's convention, so its nβ carries over
    unchanged). Default: nβ = T·n/log n (n rows of T predicted tokens), the value that makes
    nβ·L_n = Σ_rows NLL(row)/log n, Watanabe's β = 1/log n for n i.i.d. sequences.

    With ``localize(module, loss_fn=...)`` (seam 1, per-token ``per_sample_loss``) this is one
    call. Where that keyword does not exist yet, the same posterior is built from a per-sequence
    likelihood (Categorical over the T tokens as one event): its loss is the per-sequence sum
    L_seq = T·L_n, so nβ_seq = nβ/T gives the identical potential and the identical λ̂; only the
    recorded ``nbeta`` attr and the loss trace are T times apart (λ̂ is invariant).
    """
    import pyro.distributions as dist

    import slt_ppl

    tokens = int(data["y"].shape[1])
    try:
        return slt_ppl.localize(model, data, loss_fn=per_token_nll, nbeta=nbeta, gamma=gamma)
    except TypeError as err:  # slt_ppl without the module loss_fn keyword (before seam 1)
        if "loss_fn" not in str(err):
            raise
    return slt_ppl.localize(
        model,
        data,
        likelihood=lambda logits: dist.Categorical(logits=logits).to_event(1),
        nbeta=None if nbeta is None else nbeta / tokens,
        gamma=gamma,
    )
