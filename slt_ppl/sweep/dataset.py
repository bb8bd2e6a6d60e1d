"""Merge task records into one ``xr.Dataset`` with dims (checkpoint, <grid axes in file order>)
and write it as Zarr; a later sweep with more checkpoints or grid values extends the same store.

Missing values: float variables NaN; flags (``healthy``, ``check_<name>``: 1 passed, 0 failed)
-1; text variables ""; ``status`` is "ok", "failed" or "not_run".
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError
from slt_ppl.sweep.spec import SweepSpec, Task, label

FLAG_PREFIXES = ("healthy", "check_")
TEXT_FILL, FLAG_FILL = "", -1


def to_dataset(spec: SweepSpec, tasks: list[Task], keys: list[str], records: dict) -> xr.Dataset:
    """The merged Dataset of ``tasks`` (``keys[i]`` is task i's key; ``records`` by key)."""
    names = [c.stem for c in spec.checkpoints]
    coords: dict[str, Any] = {"checkpoint": np.array(names, dtype=object)}
    for axis, values in spec.grid.items():
        labels = [label(axis, v) for v in values]
        kind = object if any(isinstance(v, str) for v in labels) else None
        coords[axis] = np.array(labels, dtype=kind)
    dims = ("checkpoint", *spec.grid)
    shape = tuple(len(coords[d]) for d in dims)
    index = {d: {v: i for i, v in enumerate(coords[d])} for d in dims}

    def position(task: Task) -> tuple[int, ...]:
        where = [index["checkpoint"][task.checkpoint.stem]]
        return tuple(where + [index[a][label(a, task.point[a])] for a in spec.grid])

    found = [(position(t), records[k]) for t, k in zip(tasks, keys, strict=True) if k in records]
    numeric = sorted({v for _, r in found for v in r.get("values", {})})
    text = sorted({v for _, r in found for v in r.get("text", {})})
    out: dict[str, np.ndarray] = {}
    for var in numeric:
        flag = var.startswith(FLAG_PREFIXES)
        out[var] = np.full(shape, FLAG_FILL if flag else np.nan, np.int8 if flag else np.float64)
    for var in [*text, "status", "error"]:
        out[var] = np.full(shape, "not_run" if var == "status" else TEXT_FILL, dtype=object)
    for pos, record in found:
        for var, value in record.get("values", {}).items():
            out[var][pos] = np.nan if value is None else value
        for var, value in record.get("text", {}).items():
            out[var][pos] = value
        out["status"][pos], out["error"][pos] = record["status"], record.get("error", "")
    ds = xr.Dataset({v: (dims, a) for v, a in out.items()}, coords=coords)
    ds = ds.assign_coords(checkpoint_path=("checkpoint", np.array(
        [str(c) for c in spec.checkpoints], dtype=object)))  # fmt: skip
    if spec.training_log is not None:
        ds = ds.assign_coords(_training_coords(spec.training_log, names))
    return ds


def _training_coords(path: Path, names: list[str]) -> dict[str, Any]:
    """``training_step`` and ``train_loss`` per checkpoint from a CSV with columns
    checkpoint,step,loss (NaN / -1 for checkpoints it does not list)."""
    with open(path, newline="") as f:
        rows = {row["checkpoint"]: row for row in csv.DictReader(f)}
    missing = {"checkpoint", "step", "loss"} - set(next(iter(rows.values()), {}))
    if missing:
        raise SettingError(f"training log {path} lacks column(s) {sorted(missing)}")
    step = [int(rows[n]["step"]) if n in rows else -1 for n in names]
    loss = [float(rows[n]["loss"]) if n in rows else np.nan for n in names]
    return {"training_step": ("checkpoint", step), "train_loss": ("checkpoint", loss)}


def combine(new: xr.Dataset, old: xr.Dataset) -> xr.Dataset:
    """``new`` extended by ``old``: the union of coordinates; where both have a value, the one in
    ``new`` whose status is not "not_run" wins."""
    names = dict.fromkeys([*new.data_vars, *old.data_vars])
    fill = {v: _fill(new[v] if v in new else old[v]) for v in names}
    a, b = xr.align(new, old, join="outer", fill_value=fill)
    has_new = a["status"] != "not_run"
    merged = {}
    for var in fill:
        if var in a and var in b:
            merged[var] = xr.where(has_new, a[var], b[var]).astype(a[var].dtype)
        else:
            merged[var] = (a if var in a else b)[var]
    ds = xr.Dataset(merged).transpose(*new.dims)
    for name in ("checkpoint_path", "training_step", "train_loss"):
        if name in a.coords or name in b.coords:
            ds = ds.assign_coords({name: _coalesce(a, b, name)})
    ds.attrs = dict(new.attrs)
    return ds


def _is_text(var: xr.DataArray) -> bool:
    return var.dtype.kind in ("O", "U", "T")


def _fill(var: xr.DataArray) -> Any:
    if _is_text(var):
        return "not_run" if var.name == "status" else TEXT_FILL
    return FLAG_FILL if np.issubdtype(var.dtype, np.integer) else np.nan


def _coalesce(a: xr.Dataset, b: xr.Dataset, name: str) -> xr.DataArray:
    if name not in b.coords:
        return a[name]
    if name not in a.coords:
        return b[name]
    missing = a[name] == "" if _is_text(a[name]) else a[name].isnull()
    return xr.where(missing, b[name], a[name]).astype(a[name].dtype)


def write_zarr(ds: xr.Dataset, path: Path) -> Path:
    """Write ``ds`` to the Zarr store ``path``, extending what is there (:func:`combine`): the
    new store is written beside it and swapped in, so a crash leaves the old one whole."""
    from slt_ppl.sweep.runner import need

    need("zarr")
    path = Path(path)
    if path.exists():
        old = open_sweep(path)
        check_compatible(old.attrs, ds.attrs, path, tuple(ds.dims))
        ds = combine(ds, old)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.to_zarr(tmp, mode="w", consolidated=False)
    backup = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(backup)
    tmp.rename(path)
    shutil.rmtree(backup, ignore_errors=True)
    return path


def check_compatible(old_attrs: dict, new_attrs: dict, path: Path, dims: tuple) -> None:
    """Refuse to extend a store made with other fixed settings (its values would not be
    comparable along the new coordinates)."""
    old_fixed, new_fixed = old_attrs.get("fixed_settings"), new_attrs.get("fixed_settings")
    old_dims = tuple(json.loads(old_attrs.get("dims", "[]")))
    if old_fixed != new_fixed or (old_dims and old_dims != dims):
        raise SettingError(
            f"{path} holds a sweep with other fixed settings or grid axes "
            f"({old_fixed}, dims {old_dims}); write this sweep to another --out folder"
        )


def open_sweep(path: str | Path) -> xr.Dataset:
    """The merged Dataset of a finished sweep (its ``results.zarr``, or the out folder)."""
    path = Path(path)
    if path.is_dir() and (path / "results.zarr").exists():
        path = path / "results.zarr"
    if not path.exists():
        raise SettingError(f"no sweep results at {path}")
    ds = xr.open_zarr(path, consolidated=False).load()
    # Zarr hands text back as numpy's StringDType; object arrays are what the rest expects
    text = [n for n in [*ds.data_vars, *ds.coords] if ds[n].dtype.kind in ("T", "U")]
    return ds.assign({n: ds[n].astype(object) for n in text if n in ds.data_vars}).assign_coords(
        {n: ds[n].astype(object) for n in text if n not in ds.data_vars}
    )
