"""Checkpoints of a sampling run, so a killed run resumes where it stopped with bit-identical
results.

Format: one NetCDF-4 file (h5netcdf engine, the same stack that writes results), chosen over
npz+JSON because it is self-describing, opens with xarray/ArviZ tooling for inspection, and keeps
numbers and metadata in a single file, so one ``os.replace`` makes the update atomic. Contents:

- ``state_<i>``: the arrays of the chains' sampler state (kernel states, divergence steps) in the
  backend's fixed order (the leaves of the state's tree). The tree structure is not stored: a resumed run
  rebuilds it from its own initial state and checks every leaf's shape and dtype against the file;
- ``record_<field>``: the per-draw records (dims chain, draw) written so far, burn-in included;
- attrs: ``settings`` (JSON: everything that determines the trajectory: kernel, seed, chains, draws,
  batch size, nβ, γ, ...), ``step_size`` (so a resumed run does not retune) and the tuning record,
  ``next_draw`` / ``total_draws``, and the divergence-retry bookkeeping (``attempt``, ``retries``).

Writes are atomic: a temporary file in the same directory, flushed to disk, then ``os.replace``. A
run killed mid-write leaves the previous checkpoint intact (and a stray ``*.tmp*`` file, ignored and
cleaned up on resume). Keys are counters folded with the global step index (both backends), so continuing
from draw t with the restored state reproduces an uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError

FORMAT = "slt_ppl-checkpoint/1"
DEFAULT_NAME = "checkpoint.nc"


@dataclass
class Checkpoint:
    """What a checkpoint holds (see the module docstring)."""

    settings: dict[str, Any]
    step_size: float
    tuning: dict[str, Any]
    state_leaves: list[np.ndarray]
    records: dict[str, np.ndarray]
    next_draw: int
    total_draws: int
    attempt: int = 0
    retries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether the attempt it records ran to the end."""
        return self.next_draw >= self.total_draws


def checkpoint_path(target: str | os.PathLike[str]) -> Path:
    """The checkpoint file for ``target``: a file path as is, or ``<dir>/checkpoint.nc`` for an
    existing directory or a path without a suffix (created when the first checkpoint is written)."""
    path = Path(target)
    if path.is_dir() or not path.suffix:
        return path / DEFAULT_NAME
    return path


def normalize_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples → lists, NumPy scalars → Python)."""
    try:
        return json.loads(json.dumps(settings, default=_json_default))
    except (TypeError, ValueError) as err:
        raise SettingError(
            f"checkpointing stores the run's settings as JSON, and these are not: {err} (pass the "
            "kernel by name with JSON-serializable kernel_options)"
        ) from err


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"setting of type {type(value).__name__} is not JSON serializable")


def write_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (temporary file in the same directory +
    ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    attrs: dict[str, Any] = {
        "format": FORMAT,
        "settings": json.dumps(normalize_settings(ckpt.settings), sort_keys=True),
        "step_size": json.dumps(float(ckpt.step_size)),
        "tuning": json.dumps(ckpt.tuning),
        "next_draw": int(ckpt.next_draw),
        "total_draws": int(ckpt.total_draws),
        "attempt": int(ckpt.attempt),
        "retries": json.dumps(ckpt.retries),
        "num_state_leaves": len(ckpt.state_leaves),
        "record_fields": json.dumps(list(ckpt.records)),
    }
    for i, leaf in enumerate(ckpt.state_leaves):
        _put(data, attrs, f"state_{i}", np.asarray(leaf))
    for name, value in ckpt.records.items():
        _put(data, attrs, f"record_{name}", np.asarray(value))
    ds = xr.Dataset(data, attrs=attrs)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _put(data: dict[str, Any], attrs: dict[str, Any], name: str, arr: np.ndarray) -> None:
    attrs[f"{name}__dtype"] = arr.dtype.str
    attrs[f"{name}__shape"] = json.dumps(list(arr.shape))
    if arr.size == 0:
        return
    stored = arr.astype(np.int8) if arr.dtype == np.bool_ else arr
    data[name] = ([f"{name}__d{k}" for k in range(arr.ndim)], stored)


def _get(ds: xr.Dataset, name: str) -> np.ndarray:
    dtype = np.dtype(ds.attrs[f"{name}__dtype"])
    shape = tuple(json.loads(ds.attrs[f"{name}__shape"]))
    if name not in ds:
        return np.zeros(shape, dtype)
    return np.asarray(ds[name].values).astype(dtype, copy=False).reshape(shape)


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`; :class:`SettingError` if
    unreadable."""
    path = Path(path)
    try:
        with xr.open_dataset(
            path, engine="h5netcdf", decode_cf=False, mask_and_scale=False, cache=False
        ) as ds:
            ds = ds.load()
    except (OSError, ValueError) as err:
        raise SettingError(f"cannot read the checkpoint {str(path)!r}: {err}") from err
    if ds.attrs.get("format") != FORMAT:
        raise SettingError(
            f"{str(path)!r} is not a slt_ppl checkpoint (format {ds.attrs.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    fields = json.loads(ds.attrs["record_fields"])
    return Checkpoint(
        settings=json.loads(ds.attrs["settings"]),
        step_size=float(json.loads(ds.attrs["step_size"])),
        tuning=json.loads(ds.attrs["tuning"]),
        state_leaves=[_get(ds, f"state_{i}") for i in range(int(ds.attrs["num_state_leaves"]))],
        records={name: _get(ds, f"record_{name}") for name in fields},
        next_draw=int(ds.attrs["next_draw"]),
        total_draws=int(ds.attrs["total_draws"]),
        attempt=int(ds.attrs["attempt"]),
        retries=json.loads(ds.attrs["retries"]),
    )


def restore_leaves(ckpt: Checkpoint, template: list[np.ndarray], path: Path) -> list[np.ndarray]:
    """The sampler-state arrays of ``ckpt``, checked leaf by leaf against ``template`` (the
    host arrays of a fresh initial state, in the same order): count, shapes and dtypes must match.
    The backend puts them back into its state tree on its device."""
    if len(template) != len(ckpt.state_leaves):
        raise SettingError(
            f"checkpoint {str(path)!r} holds {len(ckpt.state_leaves)} state arrays, this run's "
            f"sampler has {len(template)}: it was written by a different kernel or version"
        )
    for i, (mine, theirs) in enumerate(zip(template, ckpt.state_leaves, strict=True)):
        if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
            raise SettingError(
                f"checkpoint {str(path)!r}: state array {i} is {theirs.dtype}{list(theirs.shape)}, "
                f"this run needs {mine.dtype}{list(mine.shape)}"
            )
    return list(ckpt.state_leaves)


def load_for_resume(path: Path, settings: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint at ``path`` if there is one (else ``None``), after checking it was written by
    a run with the same ``settings``; stray temporary files of a killed write are removed."""
    for stray in path.parent.glob(path.name + ".tmp*"):
        stray.unlink(missing_ok=True)
    if not path.exists():
        return None
    ckpt = read_checkpoint(path)
    mine, theirs = _flat(normalize_settings(settings)), _flat(ckpt.settings)
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        detail = ", ".join(
            f"{k}: checkpoint {theirs.get(k)!r} vs now {mine.get(k)!r}" for k in differ
        )
        raise SettingError(
            f"checkpoint {str(path)!r} was written by a run with different settings ({detail}); "
            "resume with the same model, data and settings, or delete the checkpoint to start over"
        )
    return ckpt


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """One level of nesting flattened, so a mismatch names the setting itself."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key in ("sample_kwargs", "posterior"):
            out.update(value)
        else:
            out[key] = value
    return out


def resume_settings(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``sample`` keyword arguments stored in a checkpoint, for front ends (the CLI's
    ``--resume``): ``slt_ppl.sample(posterior, **resume_settings(path), checkpoint=path,
    resume=True)`` continues the run. Kernels given as objects cannot be stored; pass them again."""
    ckpt = read_checkpoint(checkpoint_path(path))
    return dict(ckpt.settings["sample_kwargs"])


def resume_run(
    posterior: Any, checkpoint: str | os.PathLike[str], *, progress: bool = True
) -> xr.DataTree:
    """Continue (or, if finished, reload) the run recorded in ``checkpoint`` with its own settings:
    the entry point for front ends such as the CLI's ``--resume``. ``posterior`` must be the one the
    run sampled (same model, data, center, nβ, γ; checked against the file)."""
    from slt_ppl.sampling.api import sample

    kwargs = resume_settings(checkpoint)
    kwargs.pop("progress", None)
    return sample(posterior, **kwargs, checkpoint=checkpoint, resume=True, progress=progress)
