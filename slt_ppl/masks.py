"""Boolean masks for :func:`slt_ppl.restrict.restrict` / ``localize(..., restrict_to=...)``: one
layer, one attention head, one MLP block.

Every helper takes the site shapes (a posterior, whose ``sites`` are used, a dict site name →
shape, or a dict site name → array such as ``flax_backend.module_parts(module)[0]``) and returns a dict site name → boolean array of the site's shape (True = sampled), which
``restrict_to`` accepts as is; :func:`union` merges several.

Attention heads. A head h of H owns, in each of the query, key and value projections, the output
units h·d_h … (h+1)·d_h − 1 (d_h = width / H) of that projection, and in the output projection the
input units with the same indices (the concatenated heads). Which axis holds them depends on the
layout:

==============  ====================================================  ==========================
layout          query / key / value                                   output
==============  ====================================================  ==========================
"torch"         ``in_proj_weight`` (3E, E) rows, ``in_proj_bias``     ``out_proj.weight`` (E, E)
                (3E,): q, k, v blocks stacked (nn.MultiheadAttention,  columns
                also inside nn.TransformerEncoderLayer ``self_attn``)
"gpt2"          ``c_attn.weight`` (d, 3d) columns (HF Conv1D: x·W),    ``c_proj.weight`` (d, d)
                ``c_attn.bias`` (3d,)                                  rows
"gpt2_linear"   ``c_attn.weight`` (3d, d) rows (nn.Linear), bias       ``c_proj.weight`` columns
"flax"          ``query.kernel`` (in, H, d_h) [:, h], ``query.bias``   ``out.kernel`` (H, d_h,
                (H, d_h) [h] (NNX MultiHeadAttention, Linen           out) [h]
                MultiHeadDotProductAttention)
"equinox"       ``query_proj.weight`` (H·d_h, in) rows, bias           ``output_proj.weight``
                (eqx.nn.MultiheadAttention)                           (out, H·d_h) columns
==============  ====================================================  ==========================

Biases are included where they exist; the output projection's bias is shared by all heads and
belongs to no head. MLP blocks: ``linear1``/``linear2`` of a torch TransformerEncoderLayer
(layout "torch"), otherwise every site under the MLP's prefix (GPT-2 ``h.0.mlp``, a Flax/Equinox
submodule).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from slt_ppl.errors import SettingError

Masks = dict[str, np.ndarray]
PARTS = ("query", "key", "value", "output")

# part → [(site suffix, axis, block, number of blocks)]: along ``axis`` the site splits into equal
# blocks (q, k, v stacked); block ``block`` splits into H equal head slices. The first entry of
# each part is required, later ones (biases) are used when present.
_Spec = tuple[str, int, int, int]
LAYOUTS: dict[str, dict[str, list[_Spec]]] = {
    "torch": {
        "query": [("in_proj_weight", 0, 0, 3), ("in_proj_bias", 0, 0, 3)],
        "key": [("in_proj_weight", 0, 1, 3), ("in_proj_bias", 0, 1, 3)],
        "value": [("in_proj_weight", 0, 2, 3), ("in_proj_bias", 0, 2, 3)],
        "output": [("out_proj.weight", 1, 0, 1)],
    },
    "gpt2": {
        "query": [("c_attn.weight", 1, 0, 3), ("c_attn.bias", 0, 0, 3)],
        "key": [("c_attn.weight", 1, 1, 3), ("c_attn.bias", 0, 1, 3)],
        "value": [("c_attn.weight", 1, 2, 3), ("c_attn.bias", 0, 2, 3)],
        "output": [("c_proj.weight", 0, 0, 1)],
    },
    "gpt2_linear": {
        "query": [("c_attn.weight", 0, 0, 3), ("c_attn.bias", 0, 0, 3)],
        "key": [("c_attn.weight", 0, 1, 3), ("c_attn.bias", 0, 1, 3)],
        "value": [("c_attn.weight", 0, 2, 3), ("c_attn.bias", 0, 2, 3)],
        "output": [("c_proj.weight", 1, 0, 1)],
    },
    "flax": {
        part: [(f"{name}.kernel", 1, 0, 1), (f"{name}.bias", 0, 0, 1)]
        for part, name in (("query", "query"), ("key", "key"), ("value", "value"))
    }
    | {"output": [("out.kernel", 0, 0, 1)]},
    "equinox": {
        part: [(f"{part}_proj.weight", 0, 0, 1), (f"{part}_proj.bias", 0, 0, 1)]
        for part in ("query", "key", "value")
    }
    | {"output": [("output_proj.weight", 1, 0, 1)]},
}


def attention_head_mask(
    sites: Any,
    prefix: str,
    head: int,
    num_heads: int | None = None,
    *,
    layout: str,
    parts: Iterable[str] = PARTS,
) -> Masks:
    """Mask of head ``head`` of the attention module at ``prefix`` (e.g. "layers.0.self_attn",
    "h.0.attn", "blocks.0.attn"), restricted to ``parts`` ⊆ ("query", "key", "value",
    "output"). ``num_heads`` is required except for layout "flax" (the kernel has a head axis)."""
    shapes = _shapes(sites)
    specs = _layout(layout)
    out: Masks = {}
    for part in parts:
        if part not in specs:
            raise SettingError(f"unknown attention part {part!r}; choose from {PARTS}")
        for k, (suffix, axis, block, blocks) in enumerate(specs[part]):
            name = f"{prefix}.{suffix}" if prefix else suffix
            if name not in shapes:
                if k == 0:
                    raise SettingError(
                        f"layout {layout!r} expects a site {name!r} for the {part} projection; "
                        f"sites under {prefix!r}: {_under(shapes, prefix)}"
                    )
                continue
            shape = shapes[name]
            # in layout "flax" the sliced axis is the head axis itself
            heads = shape[axis] if num_heads is None and layout == "flax" else num_heads
            index = _head_slice(name, shape, axis, block, blocks, head, heads)
            mask = out.get(name, np.zeros(shape, dtype=bool))
            mask[index] = True
            out[name] = mask
    return out


def head_masks(
    sites: Any,
    prefix: str,
    num_heads: int | None = None,
    *,
    layout: str,
    parts: Iterable[str] = PARTS,
) -> dict[str, Masks]:
    """{"<prefix>.head<h>": mask of head h} for every head (the components of a per-head refined
    LLC, see :func:`slt_ppl.estimators.refined.refined_llcs`)."""
    parts = tuple(parts)
    if num_heads is None:
        if layout != "flax":
            raise SettingError(f"num_heads is required for layout {layout!r}")
        num_heads = _shapes(sites)[f"{prefix}.query.kernel"][1]
    return {
        f"{prefix}.head{h}": attention_head_mask(
            sites, prefix, h, num_heads, layout=layout, parts=parts
        )
        for h in range(num_heads)
    }


def layer_mask(sites: Any, prefix: str) -> Masks:
    """Every coordinate of every site named ``prefix`` or ``prefix.<anything>``."""
    shapes = _shapes(sites)
    names = [n for n in shapes if n == prefix or n.startswith(prefix + ".")]
    if not names:
        raise SettingError(f"no site is named {prefix!r} or starts with {prefix + '.'!r}")
    return {n: np.ones(shapes[n], dtype=bool) for n in names}


def mlp_mask(sites: Any, prefix: str, *, layout: str = "torch") -> Masks:
    """The MLP block: ``<prefix>.linear1.*`` and ``<prefix>.linear2.*`` of a torch
    TransformerEncoderLayer at ``prefix`` (layout "torch"); for other layouts ``prefix`` names the
    MLP submodule itself ("h.0.mlp") and every site under it is selected."""
    if layout != "torch":
        _layout(layout)
        return layer_mask(sites, prefix)
    return union(layer_mask(sites, f"{prefix}.linear1"), layer_mask(sites, f"{prefix}.linear2"))


def union(*masks: Mapping[str, Any]) -> Masks:
    """Site-wise logical or of several mask dicts."""
    out: Masks = {}
    for mask in masks:
        for name, value in mask.items():
            value = np.asarray(value, dtype=bool)
            if name in out and out[name].shape != value.shape:
                raise SettingError(
                    f"masks of site {name!r} disagree in shape: {out[name].shape} vs {value.shape}"
                )
            out[name] = out[name] | value if name in out else value.copy()
    return out


def _head_slice(
    name: str,
    shape: tuple[int, ...],
    axis: int,
    block: int,
    blocks: int,
    head: int,
    num_heads: int | None,
) -> tuple[slice, ...]:
    if num_heads is None:
        raise SettingError(f"num_heads is required to slice site {name!r} of shape {shape}")
    if not 0 <= head < num_heads:
        raise SettingError(f"head {head} out of range for {num_heads} heads")
    if axis >= len(shape) or shape[axis] % (blocks * num_heads):
        raise SettingError(
            f"site {name!r} of shape {shape} cannot split axis {axis} into {blocks} block(s) of "
            f"{num_heads} heads"
        )
    width = shape[axis] // (blocks * num_heads)
    start = block * (shape[axis] // blocks) + head * width
    index = [slice(None)] * len(shape)
    index[axis] = slice(start, start + width)
    return tuple(index)


def _layout(layout: str) -> dict[str, list[_Spec]]:
    if layout not in LAYOUTS:
        raise SettingError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def _shapes(sites: Any) -> dict[str, tuple[int, ...]]:
    sites = getattr(sites, "sites", sites)
    if not isinstance(sites, Mapping):
        raise SettingError(
            f"expected a posterior or a dict site name → shape, got {type(sites).__name__}"
        )
    return {str(k): tuple(int(s) for s in getattr(v, "shape", v)) for k, v in sites.items()}


def _under(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> list[str]:
    return [n for n in shapes if n.startswith(prefix + ".")] or list(shapes)[:20]
