"""Mask helpers (slt_ppl.masks): each head's query/key/value/output masks select exactly that
head's rows/columns, checked through the network's output for every supported layout.

An attention output is Σ_h c_h + b_out with c_h = O_h·W_out[h] (head h's values mixed by its
attention pattern, through its slice of the output projection). Zeroing head h's output slice
removes exactly c_h; zeroing its value slice (weights and bias) makes O_h = 0, so must give the
same output; zeroing its query or key slice changes only c_h, so together with the output slice
again the same output; zeroing every head's output slice leaves b_out alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from slt_ppl.errors import SettingError
from slt_ppl.masks import attention_head_mask, head_masks, layer_mask, mlp_mask, union

E, H, T = 8, 2, 5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, T, E)).astype(np.float32)


def random_params(shapes):
    return {k: (RNG.normal(size=s) / np.sqrt(E)).astype(np.float32) for k, s in shapes.items()}


def check_heads(params, apply, layout, prefix, out_bias=None):
    """The checks of the module docstring for every head."""
    shapes = {k: v.shape for k, v in params.items()}

    def zeroed(mask):
        changed = {k: v.copy() for k, v in params.items()}
        for name, m in mask.items():
            changed[name][m] = 0.0
        return np.asarray(apply(changed))

    def head(h, *parts):
        return attention_head_mask(shapes, prefix, h, H, layout=layout, parts=parts)

    base = np.asarray(apply(params))
    for h in range(H):
        without = zeroed(head(h, "output"))
        assert np.abs(without - base).max() > 1e-3
        np.testing.assert_allclose(zeroed(head(h, "value")), without, atol=1e-5)
        for part in ("query", "key"):
            assert np.abs(zeroed(head(h, part)) - base).max() > 1e-4
            np.testing.assert_allclose(
                zeroed(union(head(h, part), head(h, "output"))), without, atol=1e-5
            )
    bias_only = zeroed(union(*(head(h, "output") for h in range(H))))
    expected = np.zeros(E) if out_bias is None else params[out_bias]
    np.testing.assert_allclose(bias_only, np.broadcast_to(expected, bias_only.shape), atol=1e-5)
    # the heads' masks are disjoint and cover every attention weight but the output bias
    masks = head_masks(shapes, prefix, H, layout=layout)
    counts = {}
    for mask in masks.values():
        for name, m in mask.items():
            counts[name] = counts.get(name, 0) + m.astype(int)
    assert all(c.max() == 1 for c in counts.values())
    total = sum(int(c.sum()) for c in counts.values())
    assert total == sum(v.size for k, v in params.items() if k != out_bias)


def torch_apply(module, call):
    def apply(params):
        tensors = {k: torch.as_tensor(v) for k, v in params.items()}
        with torch.no_grad():
            return call(tensors).numpy()

    return apply


def test_torch_multihead_attention():
    attn = torch.nn.MultiheadAttention(E, H, batch_first=True)
    shapes = {k: tuple(v.shape) for k, v in attn.named_parameters()}
    x = torch.as_tensor(X)

    def call(p):
        return torch.func.functional_call(attn, p, (x, x, x), {"need_weights": False})[0]

    check_heads(random_params(shapes), torch_apply(attn, call), "torch", "", "out_proj.bias")


def test_torch_transformer_encoder_layer_heads_and_mlp():
    layer = torch.nn.TransformerEncoderLayer(E, H, dim_feedforward=16, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    sites = {k: tuple(v.shape) for k, v in encoder.named_parameters()}
    mask = attention_head_mask(sites, "layers.1.self_attn", 1, H, layout="torch")
    assert set(mask) == {
        "layers.1.self_attn.in_proj_weight",
        "layers.1.self_attn.in_proj_bias",
        "layers.1.self_attn.out_proj.weight",
    }
    attn = encoder.layers[1].self_attn.eval()  # no attention dropout; names: the site suffixes
    x = torch.as_tensor(X)

    def call(p):
        return torch.func.functional_call(attn, p, (x, x, x), {"need_weights": False})[0]

    shapes = {k: tuple(v.shape) for k, v in attn.named_parameters()}
    check_heads(random_params(shapes), torch_apply(attn, call), "torch", "", "out_proj.bias")
    mlp = mlp_mask(sites, "layers.1")
    assert sorted(mlp) == [
        "layers.1.linear1.bias",
        "layers.1.linear1.weight",
        "layers.1.linear2.bias",
        "layers.1.linear2.weight",
    ]
    assert sum(int(m.sum()) for m in mlp.values()) == 2 * E * 16 + 16 + E
    assert sum(int(m.sum()) for m in layer_mask(sites, "layers.0").values()) == sum(
        p.numel() for p in encoder.layers[0].parameters()
    )


def gpt2_attention(p, x, conv1d):
    """GPT-2 causal self-attention written out: c_attn → q, k, v → heads → c_proj. ``conv1d``:
    HF Conv1D weights (in, out) used as x·W; else nn.Linear weights (out, in)."""
    w_attn = p["attn.c_attn.weight"] if conv1d else p["attn.c_attn.weight"].T
    w_proj = p["attn.c_proj.weight"] if conv1d else p["attn.c_proj.weight"].T
    qkv = x @ w_attn + p["attn.c_attn.bias"]
    q, k, v = (a.reshape(*x.shape[:2], H, E // H).swapaxes(1, 2) for a in np.split(qkv, 3, -1))
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(E // H) + np.triu(np.full((T, T), -1e9), 1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    heads = (weights / weights.sum(-1, keepdims=True)) @ v
    return heads.swapaxes(1, 2).reshape(x.shape) @ w_proj + p["attn.c_proj.bias"]


@pytest.mark.parametrize("layout", ["gpt2", "gpt2_linear"])
def test_gpt2_block_attention(layout):
    conv1d = layout == "gpt2"
    shapes = {
        "attn.c_attn.weight": (E, 3 * E) if conv1d else (3 * E, E),
        "attn.c_attn.bias": (3 * E,),
        "attn.c_proj.weight": (E, E),
        "attn.c_proj.bias": (E,),
        "mlp.c_fc.weight": (E, 4 * E),
    }
    params = random_params(shapes)
    mlp = params.pop("mlp.c_fc.weight")

    def apply(p):
        return gpt2_attention(p, X.astype(np.float64), conv1d)

    check_heads(params, apply, layout, "attn", "attn.c_proj.bias")
    assert mlp_mask(shapes, "mlp", layout=layout)["mlp.c_fc.weight"].shape == mlp.shape


def test_flax_nnx_and_linen_attention():
    nnx = pytest.importorskip("flax.nnx")
    linen = pytest.importorskip("flax.linen")
    from slt_ppl.backends.flax_backend import module_parts

    class Block(nnx.Module):
        def __init__(self):
            self.attn = nnx.MultiHeadAttention(H, E, decode=False, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.attn(x)

    center, apply = module_parts(Block())
    assert center["attn.query.kernel"].shape == (E, H, E // H)
    params = random_params({k: v.shape for k, v in center.items()})
    check_heads(params, jax.jit(lambda p: apply(p, X)), "flax", "attn", "attn.out.bias")
    # flax needs no num_heads: the kernel has a head axis
    assert attention_head_mask(center, "attn", 1, layout="flax")["attn.out.kernel"][1].all()

    class LinenBlock(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.MultiHeadDotProductAttention(H, qkv_features=E, name="attn")(x)

    variables = LinenBlock().init(jax.random.PRNGKey(0), X)
    center, apply = module_parts(LinenBlock(), variables=variables)
    params = random_params({k: v.shape for k, v in center.items()})
    check_heads(params, jax.jit(lambda p: apply(p, X)), "flax", "attn", "attn.out.bias")


def test_equinox_attention():
    eqx = pytest.importorskip("equinox")
    from slt_ppl.backends.flax_backend import module_parts

    class Block(eqx.Module):
        attn: eqx.nn.MultiheadAttention

        def __init__(self):
            self.attn = eqx.nn.MultiheadAttention(
                H,
                E,
                use_query_bias=True,
                use_key_bias=True,
                use_value_bias=True,
                use_output_bias=True,
                key=jax.random.PRNGKey(0),
            )

        def __call__(self, x):
            return self.attn(x, x, x)

    center, apply = module_parts(Block())
    params = random_params({k: v.shape for k, v in center.items()})
    check_heads(
        params,
        jax.jit(lambda p: apply(p, jnp.asarray(X))),
        "equinox",
        "attn",
        "attn.output_proj.bias",
    )


def test_mask_helper_errors():
    shapes = {"attn.in_proj_weight": (3 * E, E), "attn.out_proj.weight": (E, E)}
    with pytest.raises(SettingError, match="unknown layout 'keras'"):
        attention_head_mask(shapes, "attn", 0, H, layout="keras")
    with pytest.raises(SettingError, match=r"expects a site 'blk\.in_proj_weight'"):
        attention_head_mask(shapes, "blk", 0, H, layout="torch")
    with pytest.raises(SettingError, match="head 2 out of range for 2 heads"):
        attention_head_mask(shapes, "attn", 2, H, layout="torch")
    with pytest.raises(SettingError, match=r"cannot split axis 0 into 3 block\(s\) of 5 heads"):
        attention_head_mask(shapes, "attn", 0, 5, layout="torch")
    with pytest.raises(SettingError, match="num_heads is required"):
        head_masks(shapes, "attn", layout="torch")
    with pytest.raises(SettingError, match="no site is named 'mlp'"):
        layer_mask(shapes, "mlp")
    with pytest.raises(SettingError, match="disagree in shape"):
        union({"a": np.ones(2, bool)}, {"a": np.ones(3, bool)})
