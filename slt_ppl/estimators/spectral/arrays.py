"""Small array helpers that keep numpy, JAX and torch arrays in their own library (and device).

torch and JAX are recognised by their module name so that neither is imported unless the caller
already handed us one of their arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def kind_of(x: Any) -> str:
    """Return ``"torch"``, ``"jax"``, ``"numpy"`` or ``"other"`` for an array-like object."""
    module = type(x).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith(("jax", "jaxlib")):
        return "jax"
    if isinstance(x, np.ndarray | np.generic):
        return "numpy"
    return "other"


def is_array(x: Any) -> bool:
    """True for numpy, JAX and torch arrays (anything with a shape and a dtype)."""
    return kind_of(x) in ("torch", "jax", "numpy") and hasattr(x, "shape")


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array to host memory as a numpy array (torch tensors are detached first)."""
    if kind_of(x) == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


def all_finite(x: Any, n_lead: int) -> np.ndarray:
    """Boolean array over the leading ``n_lead`` (sample) axes: are all other entries finite?"""
    kind = kind_of(x)
    if kind == "torch":
        import torch

        ok = torch.isfinite(x.detach())
        ok = ok.reshape(*x.shape[:n_lead], -1).all(dim=-1)
        return ok.cpu().numpy()
    if kind == "jax":
        import jax.numpy as jnp

        ok = jnp.isfinite(x).reshape(*x.shape[:n_lead], -1).all(axis=-1)
        return np.asarray(ok)
    x = np.asarray(x)
    return np.isfinite(x).reshape(*x.shape[:n_lead], -1).all(axis=-1)


def moveaxis(x: Any, source: list[int], dest: list[int]) -> Any:
    """``moveaxis`` in the array's own library."""
    kind = kind_of(x)
    if kind == "torch":
        import torch

        return torch.movedim(x, source, dest)
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.moveaxis(x, source, dest)
    return np.moveaxis(x, source, dest)
