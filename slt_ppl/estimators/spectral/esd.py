"""Empirical spectral densities (ESDs), computed batched on the arrays' own device.

For a layer matrix ``W`` of shape (N, M), N ≥ M, the ESD is the set of M eigenvalues of the
correlation matrix ``X``:

* ``convention="slt_ppl"``: ``X = WᵀW / N`` (Martin & Mahoney, JMLR 2021, eq. 1). With this scale an
  i.i.d. matrix with entry variance σ² has its bulk inside the Marchenko–Pastur support
  ``σ²(1 ± 1/√Q)²``, ``Q = N/M``, whatever its size, so scale metrics compare across widths.
* ``convention="weightwatcher"``: ``X = WᵀW`` (WeightWatcher 0.7.7 does not divide by N) and Conv2D
  eigenvalues are multiplied by 0.5 (its default ``conv2d_norm=True``).

Layers whose slices have equal (N, M) (and live on the same device with the same dtype) are stacked
and decomposed with one batched call (split so that one call holds at most 2**25 weights):
``numpy.linalg.eigvalsh``/``svd``, ``jnp.linalg.eigvalsh``/``svdvals`` or
``torch.linalg.eigvalsh``/``svdvals``; torch tensors stay on their device.
``method="gram"`` takes ``eigvalsh(WᵀW)`` (about twice as fast as an SVD on CPU), ``method="svd"``
squares ``svdvals(W)`` (accurate far below ``eps·λmax``); ``"auto"`` picks the Gram route in float64
and the SVD in float32. Computation runs in float64 on CPU and float32 on accelerators
(WeightWatcher casts to float16 on CUDA; we do not). JAX computes in float64 only when
``jax_enable_x64`` is on.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from slt_ppl.errors import SettingError
from slt_ppl.estimators.spectral.arrays import kind_of, to_numpy
from slt_ppl.estimators.spectral.layers import Layer

BACKENDS = ("numpy", "jax", "torch")
METHODS = ("auto", "gram", "svd")
MAX_BATCH_ENTRIES = 2**25  # entries of W per batched call (256 MiB in float64)


def _convert(x: Any, backend: str) -> Any:
    kind = kind_of(x)
    if kind == backend:
        return x
    if backend == "numpy":
        return to_numpy(x)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(to_numpy(x))
    import torch

    return torch.as_tensor(to_numpy(x))


def _eigs_numpy(w: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    w = np.asarray(w, dtype=np.float64)
    if method == "svd":
        s = np.linalg.svd(w, compute_uv=False)
        return s * s, float(np.finfo(np.float64).eps)
    x = np.matmul(np.swapaxes(w, -1, -2), w)
    return np.linalg.eigvalsh(x), float(np.finfo(np.float64).eps)


def _eigs_jax(w: Any, method: str) -> tuple[np.ndarray, float]:
    import jax.numpy as jnp

    dtype = jnp.result_type(float)  # float64 only under jax_enable_x64
    w = jnp.asarray(w, dtype=dtype)
    if method == "auto":
        method = "gram" if dtype == jnp.float64 else "svd"
    if method == "svd":
        s = jnp.linalg.svdvals(w)
        ev = s * s
    else:
        ev = jnp.linalg.eigvalsh(jnp.matmul(jnp.swapaxes(w, -1, -2), w))
    return np.asarray(ev, dtype=np.float64), float(jnp.finfo(dtype).eps)


def _eigs_torch(w: Any, method: str) -> tuple[np.ndarray, float]:
    import torch

    dtype = torch.float64 if w.device.type == "cpu" else torch.float32
    with torch.no_grad():
        w = w.detach().to(dtype)
        if method == "auto":
            method = "gram" if dtype == torch.float64 else "svd"
        if method == "svd":
            s = torch.linalg.svdvals(w)
            ev = s * s
        else:
            ev = torch.linalg.eigvalsh(w.mT @ w)
    return ev.cpu().numpy().astype(np.float64), float(torch.finfo(dtype).eps)


def _group_key(mats: Any) -> tuple:
    kind = kind_of(mats)
    device = str(mats.device) if kind == "torch" else ""
    return (int(mats.shape[-2]), int(mats.shape[-1]), kind, device, str(mats.dtype))


def _zero_nonfinite(mats: Any, finite: np.ndarray, n_lead: int) -> Any:
    if finite.all():
        return mats
    kind = kind_of(mats)
    shape = finite.shape + (1,) * (mats.ndim - n_lead)
    if kind == "torch":
        import torch

        mask = torch.as_tensor(finite.reshape(shape), device=mats.device)
        return torch.where(mask, mats, torch.zeros((), dtype=mats.dtype, device=mats.device))
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.where(finite.reshape(shape), mats, 0)
    return np.where(finite.reshape(shape), mats, 0)


def layer_eigenvalues(
    layers: list[Layer],
    *,
    n_lead: int = 0,
    convention: str = "slt_ppl",
    backend: str | None = None,
    method: str = "auto",
) -> list[tuple[np.ndarray, float]]:
    """Pooled, ascending eigenvalues per layer, shape ``(*sample, num_evals)``, float64.

    Returns ``(evals, eps)`` per layer where ``eps`` is the machine epsilon of the dtype the
    decomposition ran in (used for the numerical-zero tolerance). Draws whose weights are not all
    finite come back as NaN rows.
    """
    if backend is not None and backend not in BACKENDS:
        raise SettingError(f"backend={backend!r} is not one of {BACKENDS} (or None for automatic)")
    if method not in METHODS:
        raise SettingError(f"method={method!r} is not one of {METHODS}")
    prepared = []
    for layer in layers:
        mats = layer.matrices
        if backend is not None:
            mats = _convert(mats, backend)
        elif kind_of(mats) not in BACKENDS:
            mats = to_numpy(mats)
        prepared.append(_zero_nonfinite(mats, layer.finite, n_lead))

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, mats in enumerate(prepared):
        groups[_group_key(mats)].append(i)
    # split groups so that one batched call holds at most MAX_BATCH_ENTRIES weights (a single
    # larger layer still goes in one call)
    batches: list[tuple[tuple, list[int]]] = []
    for key, members in groups.items():
        current: list[int] = []
        size = 0
        for i in members:
            n_entries = int(np.prod(prepared[i].shape))
            if current and size + n_entries > MAX_BATCH_ENTRIES:
                batches.append((key, current))
                current, size = [], 0
            current.append(i)
            size += n_entries
        batches.append((key, current))

    out: list[tuple[np.ndarray, float] | None] = [None] * len(layers)
    for key, members in batches:
        n, m, kind = key[0], key[1], key[2]
        flat = [prepared[i].reshape(-1, n, m) for i in members]
        if kind == "torch":
            import torch

            ev, eps = _eigs_torch(torch.cat(flat, dim=0), method)
        elif kind == "jax":
            import jax.numpy as jnp

            ev, eps = _eigs_jax(jnp.concatenate(flat, axis=0), method)
        else:
            np_method = "gram" if method == "auto" else method
            ev, eps = _eigs_numpy(np.concatenate(flat, axis=0), np_method)
        start = 0
        for i, f in zip(members, flat, strict=True):
            layer = layers[i]
            count = int(f.shape[0])
            part = ev[start : start + count]
            start += count
            part = np.clip(part, 0.0, None)
            if convention == "weightwatcher":
                if layer.kind == "conv2d":
                    part = 0.5 * part
            else:
                part = part / n
            lead = layer.matrices.shape[:n_lead]
            part = part.reshape(*lead, layer.num_matrices * m)
            part = np.sort(part, axis=-1)
            part[~layer.finite] = np.nan
            out[i] = (part, eps)
    return [o for o in out if o is not None]
