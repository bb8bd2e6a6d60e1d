"""Reuse compiled XLA programs across calls whose lowered program text is identical.

Every :func:`slt_ppl.localize` / :func:`slt_ppl.sample` call builds fresh Python closures (the
model's loss, the kernel, the segment loop), so ``jax.jit``'s own cache, keyed on function
identity, never hits between calls. Yet the programs are often identical: the data, w* and the
center table are *arguments* of the compiled loop, so the λ̂ at the checkpoints of one training
run, the auto- and hand-ε runs of one posterior, or the chains of a sweep over seeds all lower to
the same StableHLO. Lowering costs a fraction of a second; XLA's compilation of the sampling loop
costs seconds (3-10 s for a 5-layer DLN on a CPU), so keying compiled executables on a hash of the
lowered text removes most of the compile time of repeated runs.

JAX's persistent compilation cache (``jax_compilation_cache_dir``) does the same on disk across
processes; this is its in-memory counterpart for one process, always on and bounded
(``MAX_ENTRIES`` executables, least recently used evicted). JAX has no public in-memory cache keyed
on the program, which is why this module exists.

The lowered text costs a trace and a lowering per call (≈ 0.2 s per sampling program of a small
model, ≈ 1.4 s per ``sample()``). :func:`shared_program` goes one step earlier: programs whose
*structural key* (``sampling.program_key``: the loss's jaxpr, the kernel, the static settings) is
equal are the same program, so the second run of a sweep task reuses the first one's traced and
compiled program object without tracing anything (``MAX_PROGRAMS`` of them, least recently used
evicted). ``SLT_PPL_PROGRAM_CACHE=0`` in the environment, or :func:`programs_disabled`, turns the
structural cache off (every run traces and lowers again; the lowered-text cache still applies).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

MAX_ENTRIES = 64
MAX_PROGRAMS = 32
_CACHE: OrderedDict[str, Any] = OrderedDict()
_PROGRAMS: OrderedDict[Any, Any] = OrderedDict()
# hits/misses: compiled executables by lowered text; lowerings: programs traced and lowered (all);
# program_hits/program_misses: program objects by structural key; program_lowerings: lowerings of
# those program objects (CompiledProgram: the sampling loop's programs and keyed_call's)
STATS = {
    "hits": 0, "misses": 0, "lowerings": 0, "program_hits": 0, "program_misses": 0,
    "program_lowerings": 0,
}  # fmt: skip
_DISABLED = {"programs": os.environ.get("SLT_PPL_PROGRAM_CACHE", "1") == "0"}


def _key(lowered: Any) -> str:
    # the argument signature is part of the key: jit prunes unused arguments from the program,
    # so two calls whose unused arguments differ in shape lower to the same text, yet an
    # executable only accepts the argument shapes it was compiled for
    signature = repr(lowered.args_info)
    text = lowered.as_text()
    backend = jax.default_backend()
    return hashlib.sha256(f"{backend}\n{signature}\n{text}".encode()).hexdigest()


def compile_lowered(lowered: Any) -> tuple[Any, float]:
    """The compiled executable of ``lowered`` (from the cache when an identical program was
    compiled before in this process) and the seconds spent compiling (0.0 on a hit)."""
    STATS["lowerings"] += 1
    key = _key(lowered)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        STATS["hits"] += 1
        return _CACHE[key], 0.0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    STATS["misses"] += 1
    _CACHE[key] = compiled
    while len(_CACHE) > MAX_ENTRIES:
        _CACHE.popitem(last=False)
    return compiled, seconds


def cached_call(fn: Callable[..., Any], *args: Any) -> Any:
    """``jax.jit(fn)(*args)`` through the program cache (all arguments traced, none static)."""
    compiled, _ = compile_lowered(jax.jit(fn).lower(*args))
    return compiled(*args)


def keyed_program(key: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.jit(fn)`` compiled once per argument signature, shared through the structural cache:
    ``key`` must name everything that determines ``fn``'s program besides the arguments'
    signature (``sampling.program_key``); None (or the structural cache off): a program of its
    own, whose executable still comes from the lowered-text cache."""
    if key is None or not programs_enabled():
        return CompiledProgram(jax.jit(fn))
    return shared_program(("call", key), lambda: CompiledProgram(jax.jit(fn)))


def keyed_call(key: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``keyed_program(key, fn)(*args)``."""
    return keyed_program(key, fn)(*args)


def programs_enabled() -> bool:
    """Whether :func:`shared_program` may be used (see the module docstring)."""
    return not _DISABLED["programs"]


@contextlib.contextmanager
def programs_disabled() -> Iterator[None]:
    """Within the block, runners build their own programs (the uncached reference of tests)."""
    before = _DISABLED["programs"]
    _DISABLED["programs"] = True
    try:
        yield
    finally:
        _DISABLED["programs"] = before


def shared_program(key: Any, build: Callable[[], Any]) -> Any:
    """The program object stored under the structural ``key``, built by ``build()`` on a miss.

    ``key`` must name everything that determines the program (``sampling.program_key``); the
    object compiles per argument signature itself (``sampling.loop.CompiledProgram``)."""
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        STATS["program_hits"] += 1
        return _PROGRAMS[key]
    STATS["program_misses"] += 1
    program = _PROGRAMS[key] = build()
    while len(_PROGRAMS) > MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return program


def clear() -> None:
    """Drop every cached executable and program (tests; memory)."""
    _CACHE.clear()
    _PROGRAMS.clear()
    STATS.update({k: 0 for k in STATS})


class CompiledProgram:
    """One jitted program compiled ahead of time, once per argument signature (shapes, dtypes,
    weak types, shardings and tree structure of the call), its compile time (trace, lowering and
    XLA compilation, or the ``compile_cache`` hit) added to ``stats["compile_time_s"]`` so that
    timings of the sampling itself exclude it. One instance may serve many runners
    (:func:`shared_program`)."""

    def __init__(self, jitted: Any) -> None:
        self.jitted = jitted
        self.executables: dict[Any, Any] = {}

    def __call__(self, *call: Any, stats: dict[str, float] | None = None) -> Any:
        signature = call_signature(call)
        compiled = self.executables.get(signature)
        if compiled is None:
            t0 = time.perf_counter()
            STATS["program_lowerings"] += 1
            compiled, _ = compile_lowered(self.jitted.lower(*call))
            self.executables[signature] = compiled
            if stats is not None:
                dt = time.perf_counter() - t0
                stats["compile_time_s"] = stats.get("compile_time_s", 0.0) + dt
        return compiled(*call)


def call_signature(call: Any) -> tuple[Any, ...]:
    """What a compiled executable is specific to: the tree structure of ``call`` and each leaf's
    type, shape, dtype, weak type and sharding."""
    leaves, tree = jax.tree_util.tree_flatten(call)
    return tree, tuple(
        (type(x), np.shape(x), dtype_of(x), getattr(x, "weak_type", None),
         getattr(x, "sharding", None))
        for x in leaves
    )  # fmt: skip


def dtype_of(x: Any) -> Any:
    """``x.dtype`` (no transfer to the host), or NumPy's dtype of a Python value."""
    dtype = getattr(x, "dtype", None)
    return np.result_type(x) if dtype is None else dtype
