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
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax

MAX_ENTRIES = 64
_CACHE: OrderedDict[str, Any] = OrderedDict()
STATS = {"hits": 0, "misses": 0}


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


def clear() -> None:
    """Drop every cached executable (tests; memory)."""
    _CACHE.clear()
    STATS.update(hits=0, misses=0)
