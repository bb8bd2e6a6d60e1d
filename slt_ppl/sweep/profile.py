"""Where a sweep task's time goes, for the cold start of a worker above all: timestamps of the
worker process (its start, the import of the sweep's task code, the task's start and end) and the
seconds of the parts a warm task does not pay: importing JAX/NumPyro/slt_ppl, tracing Python to
jaxprs, lowering them to StableHLO, XLA compilation (or loading the executable from JAX's
persistent cache).

The compile-side numbers come from JAX's own monitoring events (``jax.monitoring``): the time
spans of ``/jax/core/compile/jaxpr_trace_duration``, ``jaxpr_to_mlir_module_duration`` and
``backend_compile_duration`` (XLA compilation, including the persistent-cache lookup and, on a
hit, the load), each merged where spans nest (a jit traced inside another) so that no second is
counted twice; the seconds of ``/jax/compilation_cache/cache_retrieval_time_sec`` and the cache's
hit and miss counts. ``benchmarks/sweep_overhead.py`` turns the records into a breakdown.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any

MODULE_LOADED = time.time()  # when this process imported the sweep's task code (epoch seconds)
LIBRARIES = ("jax", "numpyro", "slt_ppl.backends", "slt_ppl.sampling", "slt_ppl.estimators.llc")
SPANS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "xla_compile_s",
}
DURATIONS = {"/jax/compilation_cache/cache_retrieval_time_sec": "cache_load_s"}
COUNTS = {
    "/jax/compilation_cache/cache_hits": "cache_hits",
    "/jax/compilation_cache/cache_misses": "cache_misses",
}
WORKER_ENV = ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR")
_SEEN: dict[str, Any] = {"spans": [], "compiles": [], "totals": {}}
_STATE = {"listening": False, "tasks": 0}


def import_libraries(torch: bool) -> float:
    """Import what a task runs on (JAX, NumPyro, slt_ppl's sampling and estimators; torch only
    for a torch model), start listening to JAX's compile events, and return the seconds it took
    (≈ 0 once the worker has them)."""
    t0 = time.perf_counter()
    for name in (*LIBRARIES, *(("torch",) if torch else ())):
        importlib.import_module(name)
    listen()
    return time.perf_counter() - t0


def listen() -> None:
    """Collect JAX's compile events of this process (registered once)."""
    if _STATE["listening"]:
        return
    from jax import monitoring

    def on_span(event: str, start: float, end: float, **kwargs: Any) -> None:
        if event in SPANS:
            _SEEN["spans"].append((SPANS[event], start, end))
            if SPANS[event] == "xla_compile_s":
                _SEEN["compiles"].append((end - start, str(kwargs.get("fun_name", "?"))))

    def on_duration(event: str, duration: float, **_: Any) -> None:
        if event in DURATIONS:
            _add(DURATIONS[event], duration)

    def on_event(event: str, **_: Any) -> None:
        if event in COUNTS:
            _add(COUNTS[event], 1.0)

    monitoring.register_event_time_span_listener(on_span)
    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    _STATE["listening"] = True


def _add(name: str, value: float) -> None:
    _SEEN["totals"][name] = _SEEN["totals"].get(name, 0.0) + value


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of the intervals ``spans`` (nested or overlapping ones count once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def task_profile(started: float, imports_s: float) -> dict[str, Any]:
    """The profile of the task that started at ``started`` (epoch seconds) and ends now, and
    consumes the events collected since the previous task of this process: worker timestamps,
    how many tasks this process ran before (0: a cold worker), the import seconds, the merged
    trace / lower / XLA seconds, cache load seconds and hit/miss counts, the number of XLA
    compilations and the five longest (name, seconds), whether torch is loaded, and the
    environment variables that pin threads, devices and the compilation cache."""
    profile: dict[str, Any] = {name: 0.0 for name in (*SPANS.values(), *DURATIONS.values(),
                                                      *COUNTS.values())}  # fmt: skip
    profile.update(_SEEN["totals"])
    for name in SPANS.values():
        profile[name] = union_seconds([(a, b) for n, a, b in _SEEN["spans"] if n == name])
    compiles = sorted(_SEEN["compiles"], reverse=True)
    profile.update({
        "xla_programs": len(compiles), "longest_compiles": [(n, round(s, 3)) for s, n in compiles[:5]],
        "pid": os.getpid(), "process_start": process_start(), "module_loaded": MODULE_LOADED,
        "task_start": started, "task_end": time.time(), "tasks_before": _STATE["tasks"],
        "imports_s": imports_s, "torch_loaded": "torch" in sys.modules,
        "env": {k: os.environ.get(k, "") for k in WORKER_ENV},
    })  # fmt: skip
    _SEEN.update(spans=[], compiles=[], totals={})
    _STATE["tasks"] += 1
    return profile


def process_start() -> float:
    """This process's start (epoch seconds, from /proc; NaN where there is none)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return float("nan")
