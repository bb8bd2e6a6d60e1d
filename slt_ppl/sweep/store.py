"""Task results on disk: one JSON file per task in ``<out>/tasks/``, named by the task's key and
written atomically (a temporary file in the same folder, then ``os.replace``), so a killed driver
leaves whole records or none.

The key is the sha256 of (checkpoint content, every setting that reaches the task, slt_ppl's
version): rerunning a sweep skips the tasks that have a record (except failures marked
``rerun``, see ``runner.sweep``); a changed checkpoint, setting or library version runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

TASKS_DIR = "tasks"


def task_key(settings: dict[str, Any], checkpoint_digest: str, point: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the task's settings, checkpoint digest and grid point
    (``settings`` includes the library version, see ``runner.fingerprint``)."""
    blob = json.dumps(
        {"settings": settings, "checkpoint": checkpoint_digest, "point": point},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def write_record(out: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``<out>/tasks/<key>.json`` atomically; returns the path."""
    folder = Path(out) / TASKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{record['key']}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, sort_keys=True, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """Every whole record under ``<out>/tasks`` by key (half-written temporaries are skipped)."""
    folder = Path(out) / TASKS_DIR
    records = {}
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        if path.name.startswith(".tmp-"):
            continue
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue  # not ours or damaged by hand: the task simply runs again
        records[record.get("key", path.stem)] = record
    return records
