"""The sweep specification: a TOML file (or the same dict) naming the model, data, checkpoints,
estimators, fixed settings and the grid; :func:`load_spec` checks it and :func:`expand` turns it
into one :class:`Task` per (checkpoint, grid point).

A sweep file (relative paths resolve against the file's folder)::

    [model]
    builtin = "dln"              # the zoo (models/numpyro_zoo.py), with its options:
    widths = [6, 6, 6, 6]
    # path = "my_model.py:model"     a NumPyro model or a JAX loss(params, batch)
    # torch_module = "net.py:make_net"  a factory returning a torch.nn.Module (options:
    #                                   likelihood, noise, input_key, target_key)
    [data]
    path = "data.npz"            # optional for a built-in model (its own data otherwise)
    [checkpoints]
    glob = "checkpoints/*.npz"   # or paths = [...]; .npz, torch state_dicts (.pt/.pth), .safetensors
    training_log = "training.csv"  # optional: columns checkpoint,step,loss
    [estimators]
    names = ["llc", "wbic"]      # llc always; two temperatures come with a temperatures setting
    [localize]                   # fixed keywords of slt_ppl.localize
    [sampler]                    # fixed keywords of slt_ppl.sample
    num_draws = 500
    [grid]                       # one axis per key, the Cartesian product is swept
    step_size = [3e-6, 1e-5, 3e-5]
    gamma = [300.0, 1000.0]
    [resources]
    num_cpus = 1                 # per task; also the thread count of XLA/OpenMP/torch in it
    num_gpus = 0
    max_retries = 2
"""

from __future__ import annotations

import glob as globlib
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slt_ppl.errors import SettingError

# grid key -> the slt_ppl function that takes it
GRID_KEYS = {
    "step_size": "sample",
    "seed": "sample",
    "kernel": "sample",
    "num_chains": "sample",
    "temperatures": "sample",
    "gamma": "localize",
    "nbeta": "localize",
    "restrict_to": "localize",  # seams.md 4: passed to localize as is
}
ESTIMATORS = ("llc", "wbic")
MODEL_KINDS = ("builtin", "path", "torch_module")
SECTIONS = (
    "model",
    "data",
    "checkpoints",
    "estimators",
    "localize",
    "sampler",
    "grid",
    "resources",
)
RESOURCE_DEFAULTS = {"num_cpus": 1.0, "num_gpus": 0.0, "max_retries": 2}
CHECKPOINT_SUFFIXES = (".npz", ".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep: the model (``model["kind"]`` one of :data:`MODEL_KINDS`, plus its
    options), the data file or None, the checkpoint files in order, the training log (or None),
    the estimators, fixed localize/sample keywords, the grid axes in file order and the Ray
    resources per task."""

    model: dict[str, Any]
    data: Path | None
    checkpoints: list[Path]
    training_log: Path | None
    estimators: tuple[str, ...]
    localize: dict[str, Any]
    sampler: dict[str, Any]
    grid: dict[str, list[Any]]
    resources: dict[str, Any] = field(default_factory=lambda: dict(RESOURCE_DEFAULTS))


@dataclass(frozen=True)
class Task:
    """One Ray task: a checkpoint at one grid point. ``point`` holds the grid values."""

    checkpoint: Path
    point: dict[str, Any]


def load_spec(source: str | Path | dict[str, Any] | SweepSpec) -> SweepSpec:
    """A :class:`SweepSpec` from a TOML file path or the same content as a dict (relative paths
    of a dict resolve against the working directory)."""
    if isinstance(source, SweepSpec):
        return source
    if isinstance(source, dict):
        return _from_dict(source, Path.cwd())
    path = Path(source)
    if not path.exists():
        raise SettingError(f"sweep file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SettingError(f"sweep file {path} is not valid TOML: {err}") from err
    return _from_dict(raw, path.parent)


def _from_dict(raw: dict[str, Any], base: Path) -> SweepSpec:
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise SettingError(f"unknown sweep section(s) {sorted(unknown)}; use {list(SECTIONS)}")
    data = raw.get("data", {}).get("path")
    checkpoints, log = _checkpoints(raw.get("checkpoints", {}), base)
    resources = {**RESOURCE_DEFAULTS, **raw.get("resources", {})}
    bad = set(resources) - set(RESOURCE_DEFAULTS)
    if bad:
        raise SettingError(
            f"unknown [resources] key(s) {sorted(bad)}; use {list(RESOURCE_DEFAULTS)}"
        )
    return SweepSpec(
        model=_model(raw.get("model", {}), base),
        data=_resolve(data, base) if data else None,
        checkpoints=checkpoints,
        training_log=log,
        estimators=_estimators(raw.get("estimators", {})),
        localize=dict(raw.get("localize", {})),
        sampler=dict(raw.get("sampler", {})),
        grid=_grid(raw.get("grid", {})),
        resources=resources,
    )


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _model(entry: dict[str, Any], base: Path) -> dict[str, Any]:
    kinds = [k for k in MODEL_KINDS if k in entry]
    if len(kinds) != 1:
        raise SettingError(
            f"[model] needs exactly one of {list(MODEL_KINDS)} (builtin zoo name, "
            f"file.py:function, or file.py:factory of a torch module), got {sorted(entry)}"
        )
    kind = kinds[0]
    options = {k: v for k, v in entry.items() if k != kind}
    target = entry[kind]
    if kind != "builtin":
        file, sep, name = str(target).rpartition(":")
        if not sep or not file or not name:
            raise SettingError(
                f"[model] {kind} must look like path/to/file.py:function, got {target!r}"
            )
        resolved = _resolve(file, base)
        if not resolved.exists():
            raise SettingError(f"[model] {kind}: file {resolved} does not exist")
        target = f"{resolved}:{name}"
    return {"kind": kind, "target": target, "options": options}


def _checkpoints(entry: dict[str, Any], base: Path) -> tuple[list[Path], Path | None]:
    paths = [_resolve(p, base) for p in entry.get("paths", [])]
    if "glob" in entry:
        pattern = str(_resolve(entry["glob"], base))
        found = sorted(Path(p) for p in globlib.glob(pattern))
        if not found:
            raise SettingError(f"[checkpoints] glob {pattern!r} matches no file")
        paths += found
    if not paths:
        raise SettingError("[checkpoints] needs paths = [...] or glob = '...' (at least one file)")
    for p in paths:
        if not p.is_file():
            raise SettingError(f"checkpoint {p} does not exist")
        if p.suffix not in CHECKPOINT_SUFFIXES:
            raise SettingError(f"checkpoint {p}: unknown format; use one of {CHECKPOINT_SUFFIXES}")
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise SettingError(f"checkpoint names (file stems) must be unique, got {names}")
    log = entry.get("training_log")
    log_path = _resolve(log, base) if log else None
    if log_path is not None and not log_path.is_file():
        raise SettingError(f"[checkpoints] training_log {log_path} does not exist")
    return paths, log_path


def _estimators(entry: dict[str, Any]) -> tuple[str, ...]:
    names = list(entry.get("names", ["llc"]))
    unknown = set(names) - set(ESTIMATORS)
    if unknown:
        raise SettingError(f"unknown estimator(s) {sorted(unknown)}; choose from {ESTIMATORS}")
    return tuple(["llc", *[n for n in names if n != "llc"]])


def _grid(entry: dict[str, Any]) -> dict[str, list[Any]]:
    grid = {}
    for key, values in entry.items():
        if key not in GRID_KEYS:
            raise SettingError(f"unknown [grid] key {key!r}; choose from {list(GRID_KEYS)}")
        if not isinstance(values, list) or not values:
            raise SettingError(f"[grid] {key} must be a non-empty list, got {values!r}")
        labels = [label(key, v) for v in values]
        if len(set(labels)) != len(labels):
            raise SettingError(f"[grid] {key} has repeated values {values}")
        grid[key] = list(values)
    return grid


def label(key: str, value: Any) -> Any:
    """The coordinate value of a grid entry in the merged Dataset: numbers and strings as they
    are; temperatures as "1,2"; anything else (restrict_to lists or tables) as JSON."""
    if key == "temperatures":
        return "none" if value is None else ",".join(f"{float(t):g}" for t in value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return json.dumps(value, sort_keys=True)
    return value


def expand(spec: SweepSpec) -> list[Task]:
    """Every (checkpoint, grid point), checkpoints outermost, grid axes in file order."""
    axes = list(spec.grid)
    points = [
        dict(zip(axes, combo, strict=True)) for combo in itertools.product(*spec.grid.values())
    ]
    return [Task(checkpoint=c, point=p) for c in spec.checkpoints for p in points]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (the checkpoint part of a task's key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
