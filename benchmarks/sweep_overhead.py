"""Overhead of running a sweep on Ray: 24 small LLC runs (4 checkpoints × 3 step sizes × 2 seeds
of a DLN 4-4-4, n = 1000) as one ``slt_ppl.sweep`` on a local Ray with one task per core, against
the same 24 tasks called one after another in this process.

Reported: the Ray sweep's wall time (``slt_ppl.sweep`` starts and stops Ray itself, as the
command does; its start and stop are also reported apart), the sum of the runs' sampling time
(``attrs["sampling_time_s"]``: the compiled loop only) and the sequential wall time (every task's
localize + compile or cache hit + sampling + estimates), with the mean seconds per task of each
part for the first task and for the later ones (``breakdown``), and the **cold start** of each
Ray worker (``cold_start``: when its first task was submitted, when Ray started the worker
process, when the process had loaded the task code, then the first task's imports, tracing,
lowering, XLA compilation or persistent-cache load, sampling and the rest; from the records'
``profile``, ``slt_ppl.sweep.profile``). The 1-minute load average is printed at the start and
at the end: on this shared 2-core box a reading under load is not an idle one. The goal of
issue 16 is Ray wall ≤ 1.3 × Σ sampling time. Both sides reuse compilations the same way: the
in-process program caches (``slt_ppl.compile_cache``: by structural key, then by lowered text)
and JAX's persistent cache (a fresh folder each). ``SLT_PPL_PROGRAM_CACHE=0`` turns the
structural cache off (the session-4 behaviour: every run traces and lowers its programs);
``--all-at-once`` submits every task at once (the session-5 behaviour) instead of each program
group's first task before the rest.

    python benchmarks/sweep_overhead.py [--draws 5000] [--cpus 2] [--all-at-once]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# one XLA/OpenMP thread, as in each sweep worker (must precede importing jax)
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sweep_bench_jax_")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from models import numpyro_zoo
from slt_ppl.sweep import expand, load_spec, runner, sweep
from slt_ppl.sweep.runner import payload
from slt_ppl.sweep.task import run_task

WIDTHS = [4, 4, 4]
N = 1000


def make_spec(folder: Path, draws: int) -> dict:
    _, problem = numpyro_zoo.dln(widths=WIDTHS, n=N, seed=0)
    np.savez(folder / "data.npz", **problem.data)
    rng = np.random.default_rng(1)
    for i in range(4):  # the true weights and three nearby points
        center = {k: v + 0.01 * i * rng.normal(size=v.shape).astype(np.float32)
                  for k, v in problem.center.items()}  # fmt: skip
        np.savez(folder / f"ckpt{i}.npz", **center)
    return {
        "model": {"builtin": "dln", "widths": WIDTHS, "n": 100},
        "data": {"path": str(folder / "data.npz")},
        "checkpoints": {"glob": str(folder / "ckpt*.npz")},
        "localize": {"gamma": 100.0},
        "sampler": {
            "kernel": "sgld",
            "num_chains": 2,
            "num_draws": draws,
            "num_burnin": draws // 2,
            "thin": 1,
        },
        "grid": {"step_size": [2e-5, 5e-5, 1e-4], "seed": [0, 1]},
        "resources": {"num_cpus": 1, "max_retries": 1},
    }


PARTS = ("localize_time_s", "compile_time_s", "sampling_time_s", "estimate_time_s")


def sequential(spec_dict: dict) -> dict:
    spec = load_spec(spec_dict)
    with np.load(spec.data) as npz:
        data = {k: npz[k] for k in npz.files}
    values = []
    t0 = time.perf_counter()
    for task in expand(spec):
        record = run_task(payload(spec, task, "seq", spec.resources), data,
                          task.checkpoint.read_bytes())  # fmt: skip
        assert record["status"] == "ok", record["error"]
        values.append(record["values"])
    walls = [v["wall_time_s"] for v in values]
    return {"wall_s": time.perf_counter() - t0,
            "sampling_s": float(sum(v["sampling_time_s"] for v in values)),
            "compile_and_trace_s": float(sum(v["compile_time_s"] for v in values)),
            "first_task_s": walls[0], "median_task_s": float(np.median(walls)),
            "breakdown_first_task": breakdown(values[:1]),
            "breakdown_later_tasks": breakdown(values[1:])}  # fmt: skip


def breakdown(values: list[dict]) -> dict:
    """Mean seconds per task of each part of a task (``sweep.task.estimate``): localize, compile
    (trace + lower + XLA, or cache hits), sampling (the compiled loop), estimators, and the rest
    of the sample() call (preflight, tuning, result assembly) and of the task (checkpoint
    reading, record building)."""
    mean = {p: float(np.mean([v[p] for v in values])) for p in PARTS}
    call = float(np.mean([v["sample_call_time_s"] for v in values]))
    wall = float(np.mean([v["wall_time_s"] for v in values]))
    mean["rest_of_sample_s"] = call - mean["compile_time_s"] - mean["sampling_time_s"]
    mean["rest_of_task_s"] = wall - call - mean["localize_time_s"] - mean["estimate_time_s"]
    mean["wall_time_s"] = wall
    return mean


def on_ray(spec_dict: dict, out: Path, cpus: int) -> dict:
    """The sweep on a local Ray that ``sweep`` starts (and stops) itself, as the command does."""
    start = time.time()
    t0 = time.perf_counter()
    ds = sweep(spec_dict, out=out, num_cpus=cpus, plots=False, log=None)
    wall = time.perf_counter() - t0
    assert (ds["status"] == "ok").all()
    records = _records(out)
    ray_s = ds.attrs["ray_init_s"] + ds.attrs["ray_shutdown_s"]
    return {"wall_s": wall, "init_s": ds.attrs["ray_init_s"],
            "shutdown_s": ds.attrs["ray_shutdown_s"], "wall_without_start_stop_s": wall - ray_s,
            "sampling_s": float(ds["sampling_time_s"].sum()),
            "compile_and_trace_s": float(ds["compile_time_s"].sum()),
            "task_wall_s": float(ds["wall_time_s"].sum()),
            "workers": len({r["pid"] for r in records}), **warm_tasks(records),
            "cold_start": cold_start(records, start)}  # fmt: skip


COLD_PARTS = ("imports_s", "trace_s", "lower_s", "xla_compile_s", "cache_load_s")


def cold_start(records: list[dict], start: float) -> list[dict]:
    """Each worker's first task: its timeline in seconds after ``sweep()`` was called
    (submitted, worker process started, task code loaded, task started, task ended) and where the
    task's own time went (imports, tracing, lowering, XLA compilation or persistent-cache load,
    of which the load, sampling, the rest), the cache's hits and misses, the longest XLA
    compilations."""
    first = [r for r in records if r["profile"].get("tasks_before") == 0]
    rows = []
    for r in sorted(first, key=lambda r: r["profile"]["task_start"]):
        p, v = r["profile"], r["values"]
        row = {name: round(p[stamp] - start, 2) for name, stamp in (
            ("submitted_at", "submitted"), ("process_started_at", "process_start"),
            ("task_code_loaded_at", "module_loaded"), ("task_started_at", "task_start"),
            ("task_ended_at", "task_end"))}  # fmt: skip
        row.update({k: round(p[k], 2) for k in COLD_PARTS})
        row["sampling_s"] = round(v["sampling_time_s"], 2)
        parts = sum(p[k] for k in COLD_PARTS if k != "cache_load_s")
        row["rest_s"] = round(v["wall_time_s"] - parts - v["sampling_time_s"], 2)
        row["task_wall_s"] = round(v["wall_time_s"], 2)
        row.update(cache_hits=int(p["cache_hits"]), cache_misses=int(p["cache_misses"]),
                   xla_programs=p["xla_programs"], longest_compiles=p["longest_compiles"],
                   torch_loaded=p["torch_loaded"], env=p["env"])  # fmt: skip
        rows.append(row)
    return rows


def warm_tasks(records: list[dict]) -> dict:
    """Each worker's first task (imports, first compilations) and the rest: Σ task wall time over
    Σ sampling time of the later ("warm") tasks, the steady state of a long sweep."""
    by_pid: dict[int, list[dict]] = {}
    for r in records:
        by_pid.setdefault(r["pid"], []).append(r["values"])
    first = [max(v, key=lambda x: x["wall_time_s"]) for v in by_pid.values()]  # it compiles
    warm = [x for v in by_pid.values() for x in v if not any(x is f for f in first)]
    return {"first_tasks_wall_s": [f["wall_time_s"] for f in first],
            "warm_tasks_wall_s": float(sum(x["wall_time_s"] for x in warm)),
            "warm_tasks_sampling_s": float(sum(x["sampling_time_s"] for x in warm)),
            "warm_tasks_compile_s": float(sum(x["compile_time_s"] for x in warm))}  # fmt: skip


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (out / "tasks").glob("*.json")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=5000)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument(
        "--all-at-once",
        action="store_true",
        help="submit every task at once (no program group's first task alone)",
    )
    args = p.parse_args()
    load_start = os.getloadavg()
    print(f"load average at start (1, 5, 15 min): {load_start}", flush=True)
    runner.PILOT_FIRST = not args.all_at_once
    folder = Path(tempfile.mkdtemp(prefix="sweep_bench_"))
    spec = make_spec(folder, args.draws)
    ray_run = on_ray(spec, folder / "ray_out", args.cpus)
    seq = sequential(spec)
    result = {
        "tasks": 24, "draws": args.draws, "cpus": args.cpus, "ray": ray_run, "sequential": seq,
        "program_cache": "off" if os.environ.get("SLT_PPL_PROGRAM_CACHE") == "0" else "on",
        "submission": "all at once" if args.all_at_once else "program group's first task first",
        "ray_wall_over_sum_sampling": ray_run["wall_s"] / seq["sampling_s"],
        "ray_wall_without_start_stop_over_sum_sampling": ray_run["wall_without_start_stop_s"]
        / seq["sampling_s"],
        "ray_wall_over_ray_sum_sampling": ray_run["wall_s"] / ray_run["sampling_s"],
        "sequential_wall_over_sum_sampling": seq["wall_s"] / seq["sampling_s"],
        "warm_ray_tasks_wall_over_sampling": ray_run["warm_tasks_wall_s"]
        / ray_run["warm_tasks_sampling_s"],
        "warm_sequential_tasks_wall_over_sampling": seq["breakdown_later_tasks"]["wall_time_s"]
        / seq["breakdown_later_tasks"]["sampling_time_s"],
        "ray_wall_over_sequential_wall": ray_run["wall_s"] / seq["wall_s"],
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print(summary(result))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = Path(__file__).parent / "results" / f"sweep_overhead_{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


def summary(r: dict) -> str:
    """The numbers of a RESULTS.md row, and the cold-start timeline of each worker."""
    ray = r["ray"]
    lines = [
        f"{r['tasks']} tasks, {r['draws']} draws, {r['cpus']} workers, {r['submission']}; "
        f"load average start {r['load_average_start'][0]:.1f}, end {r['load_average_end'][0]:.1f}",
        f"Ray sweep wall {ray['wall_s']:.1f} s (Ray start {ray['init_s']:.1f} s, stop "
        f"{ray['shutdown_s']:.1f} s); sequential wall {r['sequential']['wall_s']:.1f} s; "
        f"sum of sampling {r['sequential']['sampling_s']:.1f} s (on Ray {ray['sampling_s']:.1f} s)",
        f"Ray / sum of sampling {r['ray_wall_over_sum_sampling']:.2f} (without Ray start and "
        f"stop {r['ray_wall_without_start_stop_over_sum_sampling']:.2f}); warm Ray tasks "
        f"{r['warm_ray_tasks_wall_over_sampling']:.2f}",
        "cold start, seconds after sweep() was called: submitted, process started, task code "
        "loaded, task started, task ended | task: imports, trace, lower, XLA (of which cache "
        "load), sampling, rest | cache hits/misses",
    ]
    for c in ray["cold_start"]:
        lines.append(
            f"  {c['submitted_at']:6.1f} {c['process_started_at']:6.1f} "
            f"{c['task_code_loaded_at']:6.1f} {c['task_started_at']:6.1f} {c['task_ended_at']:6.1f}"
            f" | {c['imports_s']:5.1f} {c['trace_s']:5.1f} {c['lower_s']:5.1f} "
            f"{c['xla_compile_s']:5.1f} ({c['cache_load_s']:.1f}) {c['sampling_s']:5.1f} "
            f"{c['rest_s']:5.1f} | {c['cache_hits']}/{c['cache_misses']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
