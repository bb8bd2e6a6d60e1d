"""Read one checkpoint (the bytes of a file, so workers need no shared file system) into a dict of
arrays: ``.npz`` archives, torch state dicts (``.pt``/``.pth``/``.bin``, ``weights_only=True``)
and ``.safetensors`` files. Anything unreadable raises :class:`~slt_ppl.errors.DataError` naming
the file and what went wrong, so the sweep records one failed task instead of crashing."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np

from slt_ppl.errors import DataError


def read_checkpoint(name: str, suffix: str, content: bytes, *, as_torch: bool = False) -> dict:
    """The arrays of checkpoint ``name`` (file suffix ``suffix``): numpy arrays, or torch tensors
    when ``as_torch`` (for ``load_state_dict`` of a torch module)."""
    try:
        if suffix == ".npz":
            arrays: dict[str, Any] = _npz(content)
        elif suffix in (".pt", ".pth", ".bin"):
            arrays = _torch(content)
        elif suffix == ".safetensors":
            arrays = _safetensors(content)
        else:
            raise DataError(f"unknown checkpoint format {suffix!r}")
    except DataError as err:
        raise DataError(f"checkpoint {name}{suffix} is corrupt or unreadable: {err}") from err
    except Exception as err:  # every reader has its own exception types for a corrupt file
        raise DataError(
            f"checkpoint {name}{suffix} is corrupt or not a {suffix} file "
            f"({type(err).__name__}: {err})"
        ) from err
    if not arrays:
        raise DataError(f"checkpoint {name}{suffix} holds no arrays")
    if as_torch:
        import torch

        return {k: torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v
                for k, v in arrays.items()}  # fmt: skip
    return {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in arrays.items()}


def _npz(content: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as err:
        raise DataError(f"not a readable .npz archive ({type(err).__name__}: {err})") from err


def _torch(content: bytes) -> dict[str, Any]:
    try:
        import torch
    except ImportError as err:
        raise DataError(f"reading a torch state dict needs torch installed ({err})") from err
    state = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise DataError("not a state dict (a dict of tensors, or {'state_dict': {...}})")
    return {k: v.detach().cpu() for k, v in state.items()}


def _safetensors(content: bytes) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load
    except ImportError as err:
        raise DataError(
            f"reading .safetensors needs the 'safetensors' package (pip install safetensors): {err}"
        ) from err
    return load(content)
