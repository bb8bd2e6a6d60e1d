"""The tiny GPT-2-style causal LM of :mod:`models.tiny_lm` in Flax NNX, with training (optax) and
its local posterior on slt_ppl's JAX path.

Same layout and parameter shapes as the torch model (Conv1D weights stored (in, out), fused q|k|v,
LM head tied to the token embedding), so :func:`from_torch` copies a trained torch model and the
two give the same logits (tests/test_tiny_lm.py). Counting for token data as in the torch module:
a row is a sequence, ℓ_{i,t} the per-token cross-entropy, L_n its mean over rows and tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models.tiny_lm import TinyLMConfig

Array = jax.Array


class Conv1D(nnx.Module):
    """y = x·W + b with W stored (in, out), as GPT-2."""

    def __init__(self, n_in: int, n_out: int, std: float, rngs: nnx.Rngs) -> None:
        self.weight = nnx.Param(std * jax.random.normal(rngs.params(), (n_in, n_out)))
        self.bias = nnx.Param(jnp.zeros((n_out,)))

    def __call__(self, x: Array) -> Array:
        return x @ self.weight[...] + self.bias[...]


def _layer_norm(n: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # exact variance (torch's LayerNorm), not E[x²] − E[x]²
    return nnx.LayerNorm(n, epsilon=eps, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
    """Causal multi-head self-attention with the fused q|k|v projection ``c_attn`` (GPT-2)."""

    def __init__(self, cfg: TinyLMConfig, rngs: nnx.Rngs) -> None:
        std = cfg.initializer_range
        self.n_head = cfg.n_head
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd, std, rngs)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd, std / math.sqrt(2 * cfg.n_layer), rngs)

    def __call__(self, x: Array) -> Array:
        b, t, d = x.shape
        hd = d // self.n_head
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (z.reshape(b, t, self.n_head, hd).transpose(0, 2, 1, 3) for z in (q, k, v))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        out = jax.nn.softmax(scores, axis=-1) @ v
        return self.c_proj(out.transpose(0, 2, 1, 3).reshape(b, t, d))


class MLP(nnx.Module):
    """c_proj(GELU_tanh(c_fc(x)))."""

    def __init__(self, cfg: TinyLMConfig, rngs: nnx.Rngs) -> None:
        std = cfg.initializer_range
        self.c_fc = Conv1D(cfg.n_embd, 4 * cfg.n_embd, std, rngs)
        self.c_proj = Conv1D(4 * cfg.n_embd, cfg.n_embd, std / math.sqrt(2 * cfg.n_layer), rngs)

    def __call__(self, x: Array) -> Array:
        return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=True))


class Block(nnx.Module):
    """Pre-LayerNorm block: x + attn(ln_1 x), then x + mlp(ln_2 x)."""

    def __init__(self, cfg: TinyLMConfig, rngs: nnx.Rngs) -> None:
        self.ln_1 = _layer_norm(cfg.n_embd, cfg.layer_norm_epsilon, rngs)
        self.attn = Attention(cfg, rngs)
        self.ln_2 = _layer_norm(cfg.n_embd, cfg.layer_norm_epsilon, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: Array) -> Array:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT2Flax(nnx.Module):
    """Token ids (b, t) → next-token logits (b, t, vocab)."""

    def __init__(self, cfg: TinyLMConfig, seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        init = nnx.initializers.normal(cfg.initializer_range)
        self.config = cfg
        self.wte = nnx.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=init, rngs=rngs)
        self.wpe = nnx.Embed(cfg.n_positions, cfg.n_embd, embedding_init=init, rngs=rngs)
        self.h = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layer)])
        self.ln_f = _layer_norm(cfg.n_embd, cfg.layer_norm_epsilon, rngs)

    def __call__(self, input_ids: Array) -> Array:
        t = input_ids.shape[-1]
        x = self.wte(input_ids) + self.wpe.embedding[...][:t]
        for block in self.h:
            x = block(x)
        return self.wte.attend(self.ln_f(x))  # LM head tied to the token embedding


def per_token_nll(logits: Array, batch: Mapping[str, Array]) -> Array:
    """ℓ_{i,t} = −log softmax(logits_{i,t})[y_{i,t}], shape (b, T)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, batch["y"][..., None], axis=-1)[..., 0]


def from_torch(torch_model: Any) -> TinyGPT2Flax:
    """A Flax twin holding a copy of a :class:`models.tiny_lm.TinyGPT2`'s weights."""
    cfg = torch_model.config
    sd = {k: jnp.asarray(v.detach().cpu().numpy()) for k, v in torch_model.state_dict().items()}
    model = TinyGPT2Flax(cfg)
    model.wte.embedding[...] = sd["transformer.wte.weight"]
    model.wpe.embedding[...] = sd["transformer.wpe.weight"]
    model.ln_f.scale[...] = sd["transformer.ln_f.weight"]
    model.ln_f.bias[...] = sd["transformer.ln_f.bias"]
    for i, block in enumerate(model.h):
        for name in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            module = block
            for part in name.split("."):
                module = getattr(module, part)
            gain = module.scale if isinstance(module, nnx.LayerNorm) else module.weight
            gain[...] = sd[f"transformer.h.{i}.{name}.weight"]
            module.bias[...] = sd[f"transformer.h.{i}.{name}.bias"]
    return model


def train(
    model: TinyGPT2Flax,
    data: Mapping[str, np.ndarray],
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """AdamW (optax) on the mean per-token cross-entropy with random minibatches, one jitted step;
    returns the minibatch losses."""
    optimizer = nnx.Optimizer(model, optax.adamw(lr, weight_decay=0.0), wrt=nnx.Param)

    @nnx.jit
    def step(model: TinyGPT2Flax, optimizer: nnx.Optimizer, batch: dict[str, Array]) -> Array:
        def loss(m: TinyGPT2Flax) -> Array:
            return per_token_nll(m(batch["x"]), batch).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    rng = np.random.default_rng(seed)
    rows = len(data["x"])
    history = []
    for _ in range(steps):
        idx = rng.integers(rows, size=min(batch_size, rows))
        history.append(
            float(step(model, optimizer, {k: jnp.asarray(v[idx]) for k, v in data.items()}))
        )
    return history


def localize_lm_flax(
    model: TinyGPT2Flax,
    data: Mapping[str, np.ndarray],
    *,
    nbeta: float | None = None,
    gamma: float | str = "auto",
):
    """The local posterior at the model's current weights on slt_ppl's JAX path (a plain
    ``loss(params, batch)`` over the model's ``nnx.Param`` state).

    Same convention as :func:`models.tiny_lm.localize_lm`: L_n is the mean per-token NLL and
    ``nbeta`` multiplies it; default nβ = T·n/log n for n rows of T predicted tokens.
    """
    import slt_ppl

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def mean_token_nll(p: Any, batch: Mapping[str, Array]) -> Array:
        return per_token_nll(nnx.merge(graphdef, p, rest)(batch["x"]), batch).mean()

    rows, tokens = np.shape(data["y"])
    if nbeta is None:
        nbeta = tokens * rows / math.log(rows)
    return slt_ppl.localize(
        mean_token_nll, dict(data), params, nbeta=nbeta, gamma=gamma, backend="jax"
    )
