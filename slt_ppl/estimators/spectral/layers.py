"""Extract per-layer weight matrices from models, pytrees, state dicts and posterior draws.

Rules (WeightWatcher style, Martin & Mahoney JMLR 2021, Sec. 3):

* 2-D tensors (dense layers, embeddings) give one matrix ``W`` of shape (N, M), transposed so N ≥ M.
* Conv1d ``(out, in, k)`` gives ``k`` slices ``W[:, :, i]``; Conv2d ``(out, in, kh, kw)`` gives
  ``kh·kw`` slices ``W[:, :, i, j]``. Their eigenvalues are pooled into one ESD per layer.
  Flax/Haiku kernels are stored channels-last (``(kh, kw, in, out)``); with
  ``conv_layout="auto"`` a leaf whose name ends in ``kernel`` that is not a torch tensor is read
  channels-last, everything else channels-first (torch, equinox).
* 0-D and 1-D tensors (biases, norm scales), tensors of rank above 4, layers with too few or too
  many eigenvalues and layers whose weights are all non-finite are *skipped with a reason*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from slt_ppl.errors import DataError, SettingError
from slt_ppl.estimators.spectral.arrays import all_finite, is_array, kind_of, moveaxis

_KINDS = {2: "dense", 3: "conv1d", 4: "conv2d"}
CONV_LAYOUTS = ("auto", "channels_first", "channels_last")


@dataclass(frozen=True)
class Layer:
    """One layer ready for the ESD.

    ``matrices`` has shape ``(*sample, num_matrices, N, M)`` with N ≥ M.
    """

    name: str
    layer_type: str
    kind: str
    shape: tuple[int, ...]
    matrices: Any
    finite: np.ndarray  # bool over the sample axes: all entries of this draw finite

    @property
    def N(self) -> int:
        """Rows of each matrix slice (N ≥ M after the transpose)."""
        return int(self.matrices.shape[-2])

    @property
    def M(self) -> int:
        """Columns of each matrix slice: the number of eigenvalues of X = WᵀW per slice."""
        return int(self.matrices.shape[-1])

    @property
    def num_matrices(self) -> int:
        """Slices pooled into one ESD (kernel positions of a convolution; 1 for dense)."""
        return int(self.matrices.shape[-3])

    @property
    def num_evals(self) -> int:
        """Eigenvalues in the pooled ESD: M × num_matrices."""
        return self.M * self.num_matrices


@dataclass(frozen=True)
class Skipped:
    """A tensor that was not analysed, and why."""

    name: str
    layer_type: str
    shape: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class _Leaf:
    name: str
    value: Any
    layer_type: str | None  # module class name when known (torch nn.Module)
    channels_last: bool


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _flatten_mapping(obj: Any, prefix: str, out: list[tuple[str, Any]]) -> None:
    if isinstance(obj, Mapping) or (hasattr(obj, "keys") and hasattr(obj, "__getitem__")):
        for key in obj.keys():
            _flatten_mapping(obj[key], f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(obj, list | tuple) and not is_array(obj):
        for i, item in enumerate(obj):
            _flatten_mapping(item, f"{prefix}.{i}" if prefix else str(i), out)
    elif is_array(obj) or isinstance(obj, int | float | bool | complex | str | type(None)):
        out.append((prefix, obj))
    else:
        import jax

        leaves, _ = jax.tree_util.tree_flatten_with_path(obj)
        if not leaves:
            out.append((prefix, obj))
        for path, leaf in leaves:
            key = jax.tree_util.keystr(path, simple=True, separator=".")
            out.append((f"{prefix}.{key}" if prefix else key, leaf))


def _torch_module_leaves(module: Any) -> list[_Leaf]:
    leaves = []
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            leaves.append(_Leaf(name, p, type(mod).__name__, False))
    return leaves


def _leaves(weights: Any, conv_layout: str) -> list[_Leaf]:
    if type(weights).__module__.startswith("torch") and hasattr(weights, "named_modules"):
        leaves = _torch_module_leaves(weights)
        if conv_layout == "channels_last":
            leaves = [_Leaf(lf.name, lf.value, lf.layer_type, True) for lf in leaves]
        return leaves
    flat: list[tuple[str, Any]] = []
    _flatten_mapping(weights, "", flat)
    leaves = []
    for name, value in flat:
        if conv_layout == "auto":
            last = name.rsplit(".", 1)[-1].lower().endswith("kernel") and kind_of(value) != "torch"
        else:
            last = conv_layout == "channels_last"
        leaves.append(_Leaf(name or "weights", value, None, last))
    return leaves


def _to_matrices(value: Any, ndim: int, n_lead: int, channels_last: bool) -> Any:
    """Rearrange a (*sample, ...) tensor into (*sample, num_matrices, N, M) with N ≥ M."""
    lead = value.shape[:n_lead]
    core = value.shape[n_lead:]
    if ndim == 2:
        mats = value.reshape(*lead, 1, *core)
    elif channels_last:
        # (*spatial, in, out): the spatial axes already lead
        spatial = math.prod(core[:-2])
        mats = value.reshape(*lead, spatial, core[-2], core[-1])
    else:
        # (out, in, *spatial): move the spatial axes in front of (out, in)
        k = ndim - 2
        src = [n_lead + 2 + i for i in range(k)]
        dst = [n_lead + i for i in range(k)]
        moved = moveaxis(value, src, dst)
        mats = moved.reshape(*lead, math.prod(core[2:]), core[0], core[1])
    if mats.shape[-2] < mats.shape[-1]:
        mats = moveaxis(mats, [-1], [-2])
    return mats


def extract_layers(
    weights: Any,
    *,
    n_lead: int = 0,
    min_evals: int = 8,
    max_evals: int | None = None,
    conv_layout: str = "auto",
) -> tuple[list[Layer], list[Skipped]]:
    """Split ``weights`` into analysable layers and skipped tensors (each with its reason).

    ``n_lead`` leading axes of every tensor are sample axes (``chain, draw`` for posterior draws).
    """
    if conv_layout not in CONV_LAYOUTS:
        raise SettingError(f"conv_layout={conv_layout!r} is not one of {CONV_LAYOUTS}")
    layers: list[Layer] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for leaf in _leaves(weights, conv_layout):
        value = leaf.value
        if not is_array(value):
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = np.asarray(value)
            else:
                skipped.append(Skipped(leaf.name, type(value).__name__, (), "not an array"))
                continue
        if kind_of(value) == "numpy" and not np.issubdtype(value.dtype, np.number):
            skipped.append(Skipped(leaf.name, str(value.dtype), tuple(value.shape), "not numeric"))
            continue
        shape = tuple(int(s) for s in value.shape[n_lead:])
        ndim = len(shape)
        kind = _KINDS.get(ndim, f"{ndim}-D")
        layer_type = leaf.layer_type or kind
        if ndim < 2:
            what = "0-D scalar" if ndim == 0 else "1-D tensor (bias or norm scale)"
            skipped.append(Skipped(leaf.name, layer_type, shape, f"{what}: no matrix"))
            continue
        if ndim > 4:
            skipped.append(Skipped(leaf.name, layer_type, shape, f"{ndim}-D tensor not supported"))
            continue
        complex_ = value.is_complex() if kind_of(value) == "torch" else np.iscomplexobj(value)
        if complex_:
            skipped.append(Skipped(leaf.name, layer_type, shape, "complex weights not supported"))
            continue
        if min(shape) == 0:
            skipped.append(Skipped(leaf.name, layer_type, shape, "empty tensor"))
            continue
        mats = _to_matrices(value, ndim, n_lead, leaf.channels_last)
        n_ev = int(mats.shape[-1]) * int(mats.shape[-3])
        if n_ev < min_evals:
            reason = f"too few eigenvalues ({n_ev} < min_evals={min_evals})"
            skipped.append(Skipped(leaf.name, layer_type, shape, reason))
            continue
        if max_evals is not None and n_ev > max_evals:
            reason = f"too many eigenvalues ({n_ev} > max_evals={max_evals})"
            skipped.append(Skipped(leaf.name, layer_type, shape, reason))
            continue
        finite = np.asarray(all_finite(value, n_lead), dtype=bool)
        if not finite.any():
            skipped.append(Skipped(leaf.name, layer_type, shape, "non-finite weights (NaN or inf)"))
            continue
        name = leaf.name
        while name in seen:
            name = name + "_"
        seen.add(name)
        layers.append(Layer(name, layer_type, kind, shape, mats, finite))
    return layers, skipped


def describe_skipped(skipped: list[Skipped]) -> str:
    """One netCDF-friendly string: ``name [type shape]: reason; ...``."""
    return "; ".join(
        f"{s.name} [{s.layer_type} {_shape_str(s.shape)}]: {s.reason}" for s in skipped
    )


def nothing_left_error(skipped: list[Skipped]) -> DataError:
    """The error raised when no layer survives extraction (never an empty table)."""
    if not skipped:
        return DataError("spectral: no tensors found in the weights (empty model or mapping)")
    lines = "\n  ".join(
        f"{s.name} [{s.layer_type} {_shape_str(s.shape)}]: {s.reason}" for s in skipped
    )
    return DataError(f"spectral: no layer could be analysed; every tensor was skipped:\n  {lines}")


shape_str = _shape_str
