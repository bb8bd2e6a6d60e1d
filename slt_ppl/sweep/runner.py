"""Run a sweep on Ray: one task per (checkpoint, grid point), results written as they arrive,
finished tasks skipped on a rerun, failures recorded, everything merged into one Zarr store.

Ray is the scheduler (retries, placement, clusters); this module only decides what to run and
keeps the records. With no address Ray starts on this machine's cores; with ``address`` (or the
``RAY_ADDRESS`` environment variable) it joins a running cluster (``ray start --head``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import slt_ppl
from slt_ppl.errors import SettingError
from slt_ppl.sweep.dataset import check_compatible, open_sweep, to_dataset, write_zarr
from slt_ppl.sweep.spec import SweepSpec, Task, expand, file_digest, load_spec
from slt_ppl.sweep.store import read_records, task_key, write_record
from slt_ppl.sweep.task import run_task, warm_worker

RESULTS = "results.zarr"
# local sweeps: each program group's first task alone, then the rest (run_on_ray); False: all
# at once (benchmarks/sweep_overhead.py --all-at-once measures the difference)
PILOT_FIRST = True


def sweep(
    spec: str | Path | dict[str, Any] | SweepSpec,
    *,
    out: str | Path = "sweep_out",
    address: str | None = None,
    num_cpus: int | None = None,
    plots: bool = True,
    log: Callable[[str], None] | None = print,
) -> xr.Dataset:
    """Run every (checkpoint, grid point) of ``spec`` (a sweep TOML file or its dict, see
    ``slt_ppl.sweep.spec``) as a Ray task and return the merged Dataset (also in
    ``<out>/results.zarr``; one JSON record per task in ``<out>/tasks``).

    Tasks with a record in ``out`` are skipped: those that succeeded, and those that failed on
    their input (an :class:`~slt_ppl.errors.SLTError` such as a corrupt checkpoint: the same
    bytes fail again). The others run, each retried up to ``[resources] max_retries`` times when
    it raises or its worker dies, then recorded as failed with the error (and run again by the
    next call). ``address``: a Ray cluster (default ``RAY_ADDRESS``, else a local Ray on
    ``num_cpus`` cores, default all). An already initialized Ray is used as it is.
    The returned Dataset's attrs count ``tasks_total``, ``tasks_run``, ``tasks_skipped`` and
    ``tasks_failed`` of this call.
    """
    spec = load_spec(spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks, keys, attrs = plan(spec)
    if (out / RESULTS).exists():
        check_compatible(open_sweep(out / RESULTS).attrs, attrs, out / RESULTS,
                         tuple(json.loads(attrs["dims"])))  # fmt: skip
    todo = pending_tasks(tasks, keys, out)
    if log:
        log(f"slt-ppl sweep: {len(tasks)} tasks, {len(tasks) - len(todo)} already done")
    t0 = time.perf_counter()
    timing = {"ray_init_s": 0.0, "ray_shutdown_s": 0.0}
    if todo:
        timing = run_on_ray(spec, todo, out, address=address, num_cpus=num_cpus, log=log)
    records = read_records(out)
    ds = to_dataset(spec, tasks, keys, records)
    failed = sum(records[k]["status"] == "failed" for _, k in todo if k in records)
    ds.attrs.update(attrs, slt_ppl_version=slt_ppl.__version__, tasks_total=len(tasks),
                    tasks_run=len(todo), tasks_skipped=len(tasks) - len(todo),
                    tasks_failed=failed, wall_time_s=time.perf_counter() - t0,
                    **timing)  # fmt: skip
    write_zarr(ds, out / RESULTS)
    merged = open_sweep(out / RESULTS)
    if plots:
        from slt_ppl.sweep.plots import plot_sweep

        written = plot_sweep(merged, out)
        if log:
            log(f"  wrote {', '.join(str(p) for p in written)}")
    return merged


def plan(spec: SweepSpec) -> tuple[list[Task], list[str], dict[str, str]]:
    """The tasks, their keys (``store.task_key``) and the attrs that identify the sweep."""
    tasks = expand(spec)
    settings = fingerprint(spec)
    digests = {c: file_digest(c) for c in spec.checkpoints}
    keys = [task_key(settings, digests[t.checkpoint], t.point) for t in tasks]
    attrs = {"fixed_settings": json.dumps(settings, sort_keys=True, default=str),
             "dims": json.dumps(["checkpoint", *spec.grid])}  # fmt: skip
    return tasks, keys, attrs


def pending_tasks(tasks: list[Task], keys: list[str], out: Path) -> list[tuple[Task, str]]:
    """The tasks still to run, one per key (checkpoints with the same bytes share their runs).
    Done: succeeded, or failed for a reason a rerun would meet again (an SLTError of the input:
    same bytes and settings). A task whose worker died, or that raised anything else, after
    its retries (record marked ``rerun``) runs again."""
    done = {k for k, r in read_records(out).items() if not r.get("rerun", False)}
    todo: dict[str, Task] = {}
    for task, key in zip(tasks, keys, strict=True):
        if key not in done:
            todo.setdefault(key, task)
    return [(t, k) for k, t in todo.items()]


def fingerprint(spec: SweepSpec) -> dict[str, Any]:
    """Everything that reaches a task besides its checkpoint and grid point, with file contents
    as digests (so a moved file keeps its key) and the library version."""
    model = dict(spec.model)
    if model["kind"] != "builtin":
        file, _, name = model["target"].rpartition(":")
        model["target"] = f"{Path(file).name}:{name}"
        model["source_sha256"] = file_digest(Path(file))
    return {
        "slt_ppl": slt_ppl.__version__,
        "model": model,
        "data_sha256": file_digest(spec.data) if spec.data else None,
        "localize": spec.localize,
        "sampler": spec.sampler,
        "estimators": list(spec.estimators),
    }


def run_on_ray(spec: SweepSpec, todo: list[tuple[Task, str]], out: Path, *, address: str | None,
               num_cpus: int | None, log: Callable[[str], None] | None) -> dict[str, float]:  # fmt: skip
    """Submit ``todo`` to Ray and write each record as its task finishes; returns the seconds
    spent starting and stopping Ray (``ray_init_s``, ``ray_shutdown_s``: 0.0 when Ray was
    running before).

    On a local Ray the workers share JAX's persistent compilation cache, so the first task of
    each program group (:func:`program_group`) goes first, alone, and the rest of its group only
    when it has finished: the other workers then load its compiled programs from the cache
    instead of compiling the same programs at the same moment (:func:`pilot_tasks`; a first task
    that fails hands its turn to the next, :func:`release`). Meanwhile each other worker Ray will
    need is started and imports JAX, NumPyro and slt_ppl (``task.warm_worker``), so that its
    first task does no more than trace, lower and load. A Ray started here starts its processes
    with the workers' environment, so the workers it starts with itself serve the tasks. Ray
    places and retries every task; this only orders the first submissions."""
    ray = need("ray")

    started = not ray.is_initialized()
    address = address or os.environ.get("RAY_ADDRESS")
    local = address is None  # on a cluster, paths of this machine mean nothing to the nodes
    env = worker_env(spec.resources, local=local, cache=out / "jax_cache" if local else None)
    t0 = time.perf_counter()
    if started:
        # "local": always a new Ray on this machine, even when a `ray start` cluster runs here
        with environment(env if local else {}):
            ray.init(address=address or "local",
                     num_cpus=None if address else (num_cpus or os.cpu_count()),
                     include_dashboard=False, log_to_driver=False)  # fmt: skip
    timing = {"ray_init_s": time.perf_counter() - t0 if started else 0.0, "ray_shutdown_s": 0.0}
    try:
        remote, warm = remote_functions(ray, spec.resources, None if started and local else env)
        submit_and_collect(ray, spec, todo, out, remote, warm, pilots=local and PILOT_FIRST,
                           log=log)  # fmt: skip
    finally:
        if started:
            t1 = time.perf_counter()
            ray.shutdown()
            timing["ray_shutdown_s"] = time.perf_counter() - t1
    return timing


def remote_functions(ray: Any, res: dict[str, Any], env: dict[str, str] | None) -> tuple[Any, Any]:
    """``run_task`` and ``warm_worker`` as Ray remote functions with the task's resources (and
    ``env`` as their runtime_env unless None), so that Ray gives both the same worker processes.
    ``max_calls=0``: a worker runs any number of tasks and keeps its compilations (Ray's default
    for CPU tasks; it would be 1, a new process per task, for num_gpus given to ray.remote())."""
    options: dict[str, Any] = {"num_cpus": float(res["num_cpus"]),
                               "num_gpus": float(res["num_gpus"])}  # fmt: skip
    if env is not None:
        options["runtime_env"] = {"env_vars": env}
    remote = ray.remote(max_calls=0)(run_task).options(
        **options, max_retries=int(res["max_retries"]), retry_exceptions=True
    )
    return remote, ray.remote(max_calls=0)(warm_worker).options(**options, max_retries=0)


def submit_and_collect(ray: Any, spec: SweepSpec, todo: list[tuple[Task, str]], out: Path,
                       remote: Any, warm: Any, *, pilots: bool,
                       log: Callable[[str], None] | None) -> None:  # fmt: skip
    """Submit the tasks (with ``pilots``: each program group's first task, the rest on its
    :func:`release`), warm the idle workers, and write each record as its task finishes (with
    the time it was submitted in its ``profile``)."""
    res = spec.resources
    data_ref = ray.put(load_data(spec.data)) if spec.data else None
    content = {c: ray.put(c.read_bytes()) for c in {t.checkpoint for t, _ in todo}}
    pending: dict[Any, tuple[Task, str, float]] = {}

    def submit(batch: list[tuple[Task, str]]) -> None:
        for task, key in batch:
            ref = remote.remote(payload(spec, task, key, res), data_ref, content[task.checkpoint])
            pending[ref] = (task, key, time.time())

    first, held = pilot_tasks(spec, todo) if pilots else (todo, {})
    submit(first)
    torch, threads = spec.model["kind"] == "torch_module", max(1, math.ceil(res["num_cpus"]))
    for _ in range(idle_workers(ray, res, todo, first)):  # fire and forget
        warm.remote(threads, torch)
    finished = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            task, key, submitted = pending.pop(ref)
            record = collect(ref, task, key, int(res["max_retries"]))
            record.setdefault("profile", {})["submitted"] = submitted
            write_record(out, record)
            submit(release(held, program_group(spec, task), record["status"] == "ok"))
            finished += 1
            if log:
                log(f"  [{finished}/{len(todo)}] {describe(task, record)}")


# grid axes whose value changes a task's compiled programs (docs/sweeps.md, "Compilation is
# reused"): the others (step_size values, seed, gamma, nbeta, the checkpoint) are arguments
PROGRAM_AXES = ("kernel", "num_chains", "temperatures", "restrict_to")


def program_group(spec: SweepSpec, task: Task) -> tuple[Any, ...]:
    """A key shared by the tasks that compile the same programs: the grid's kernel, num_chains,
    number of temperatures, restrict_to, and whether ε is tuned ("auto") or given; with a
    restrict_to (grid or fixed) also the checkpoint, whose fixed coordinates are constants of
    the restricted loss."""
    point = task.point
    group = []
    for axis in PROGRAM_AXES:
        if axis in point:
            value = len(point[axis]) if axis == "temperatures" else point[axis]
            group.append((axis, json.dumps(value, sort_keys=True, default=str)))
    if "step_size" in point:
        group.append(("step_size", isinstance(point["step_size"], str)))
    if "restrict_to" in point or "restrict_to" in spec.localize:
        group.append(("checkpoint", str(task.checkpoint)))
    return tuple(group)


def release(held: dict[Any, list], group: Any, ok: bool) -> list:
    """What to submit when a task of ``group`` has finished: the rest of the group if it was
    held back behind this task and the task succeeded (its programs are in the cache); the next
    task alone if it failed (it may have failed before compiling: a corrupt checkpoint); nothing
    if the group was released before."""
    rest = held.get(group)
    if rest is None:
        return []
    if ok or len(rest) <= 1:
        return held.pop(group)
    return [rest.pop(0)]


def idle_workers(ray: Any, resources: dict[str, Any], todo: list, first: list) -> int:
    """How many more workers than ``first`` tasks the sweep will keep busy: the task slots of
    the Ray cluster (its CPUs and GPUs over a task's), at most one per task."""
    total = ray.cluster_resources()
    slots = [total.get("CPU", 0.0) / float(resources["num_cpus"])]
    if float(resources["num_gpus"]) > 0:
        slots.append(total.get("GPU", 0.0) / float(resources["num_gpus"]))
    return max(0, min(int(min(slots)), len(todo)) - len(first))


def pilot_tasks(spec: SweepSpec, todo: list[tuple[Task, str]]
                ) -> tuple[list[tuple[Task, str]], dict[Any, list[tuple[Task, str]]]]:  # fmt: skip
    """The first task of each program group, and the rest of each group (held back until that
    group's first task has finished and its compilations are in the persistent cache)."""
    first: list[tuple[Task, str]] = []
    held: dict[Any, list[tuple[Task, str]]] = {}
    for task, key in todo:
        group = program_group(spec, task)
        if group in held:
            held[group].append((task, key))
        else:
            held[group] = []
            first.append((task, key))
    return first, held


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated by ``env`` within the block, restored after it."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def need(package: str) -> Any:
    """Import an optional dependency of the sweep, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise SettingError(
            f"slt-ppl sweep needs {package!r} ({err}); install it with pip install "
            '"slt_ppl[sweep]" (ray, zarr, safetensors)'
        ) from err


def worker_env(resources: dict[str, Any], *, local: bool, cache: Path | None) -> dict[str, str]:
    """Environment of the worker processes: every thread pool sized to the task's CPUs (XLA's
    Eigen pool, OpenMP/MKL/OpenBLAS), JAX on CPU when the task has no GPU, no GPU memory
    preallocation when it has one (tasks may share a GPU), JAX's persistent compilation cache,
    and (local runs) the driver's slt_ppl on the path."""
    threads = max(1, math.ceil(float(resources["num_cpus"])))
    eigen = "false" if threads == 1 else "true"
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                           "OPENBLAS_NUM_THREADS")}  # fmt: skip
    env["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS", ""),
        f"--xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}",
    ]))  # fmt: skip
    if float(resources["num_gpus"]) == 0:  # neither JAX nor torch may take a GPU unasked
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if cache is not None:  # every program, even those compiling in under the default 1 s
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    if local:
        root = str(Path(slt_ppl.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return env


def load_data(path: Path) -> dict[str, np.ndarray]:
    if path.suffix != ".npz":
        raise SettingError(f"[data] path must be an .npz of the model's arrays, got {path}")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def payload(spec: SweepSpec, task: Task, key: str, resources: dict[str, Any]) -> dict[str, Any]:
    """What a task needs besides data and checkpoint bytes (all plain JSON-able values)."""
    model = dict(spec.model)
    if model["kind"] != "builtin":
        model["source"] = Path(model["target"].rpartition(":")[0]).read_text()
    return {
        "key": key, "checkpoint": task.checkpoint.stem, "suffix": task.checkpoint.suffix,
        "point": task.point, "model": model, "localize": spec.localize, "sampler": spec.sampler,
        "estimators": list(spec.estimators),
        "threads": max(1, math.ceil(float(resources["num_cpus"]))),
        "gpus": float(resources["num_gpus"]),
    }  # fmt: skip


def collect(ref: Any, task: Task, key: str, max_retries: int) -> dict[str, Any]:
    """The task's record, or a failed record naming the error once Ray gave up on it."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        message = f"{type(cause).__name__}: {cause}".strip().splitlines()[-1]
    except ray.exceptions.RayError as err:  # the worker died (killed, out of memory, ...)
        message = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
    return {"key": key, "checkpoint": task.checkpoint.stem, "status": "failed",
            "error": f"failed after {max_retries} retries: {message}", "values": {}, "text": {},
            "rerun": True}  # fmt: skip


def describe(task: Task, record: dict[str, Any]) -> str:
    point = ", ".join(f"{k}={v}" for k, v in task.point.items())
    head = f"{task.checkpoint.stem} [{point}]"
    if record["status"] != "ok":
        return f"{head}: FAILED {record['error']}"
    v = record["values"]
    return (f"{head}: λ̂ = {v['llc']:.3f} ± {v['llc_se']:.3f} "
            f"({'healthy' if v['healthy'] else 'unhealthy'}, {v['wall_time_s']:.1f} s)")  # fmt: skip
