"""Structural keys of compiled programs: what determines a program, computed without building it.

Every ``sample()`` call builds fresh closures (the model's loss, the kernel, the segment loop), so
neither ``jax.jit``'s cache (keyed on function identity) nor ``compile_cache``'s (keyed on the
lowered text, which costs a trace and a lowering, ≈ 0.2 s per program for a small model) spares
the tracing of repeated runs. A *structural key* names the program from what determines it:

- the loss, by its jaxpr traced at every batch row count the program uses (≈ 15 ms each for a
  small model) with the jaxpr's constants hashed by value: two losses with equal jaxprs compute
  the same function at those shapes, whatever Python built them (a freshly loaded model file, a
  new closure over the same widths), and a closure constant that changes the computation (a
  width, a noise scale, an array) changes the jaxpr or its constants. Derivatives follow from the
  jaxpr, except where it calls user-defined differentiation rules: then the jaxpr of
  ``(L_B(w), ∇L_B(w), ∇²L_B(w)·v)`` is part of the key too;
- the kernel, by its registry name and options (a kernel object passed by the user: by identity);
- every static setting of the runner (minibatch size, thin, kept draws, shared batches, the
  divergence threshold, the probe sets' shapes and period, the device mesh) and JAX's configuration.

What varies between the runs of a sweep (w*, the data values, nβ, γ, L_n(w*), keys, ε) is an
*argument* of the program, never part of the key. Anything the key cannot describe (an option that
is not a number, string or array; a loss JAX cannot trace at a shape) makes the runner uncacheable
(``None``): it then compiles as before, through ``compile_cache``'s lowered-text cache.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class Uncacheable(Exception):
    """The object has no structural description: do not cache its program."""


def describe(value: Any) -> Any:
    """A hashable description of a kernel option or similar setting: numbers, strings, None,
    sequences, mappings and arrays (by dtype, shape and bytes); anything else is
    :class:`Uncacheable` (e.g. a callable, whose behaviour its repr does not show)."""
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return (type(value).__name__, value)
    if isinstance(value, np.generic):
        return ("np", str(value.dtype), value.item())
    if isinstance(value, tuple | list):
        return (type(value).__name__, tuple(describe(v) for v in value))
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((str(k), describe(v)) for k, v in value.items())))
    if isinstance(value, np.ndarray | jax.Array):
        arr = np.asarray(value)
        return ("array", str(arr.dtype), arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())
    raise Uncacheable(f"{type(value).__name__} has no structural description")


def jaxpr_digest(fn: Callable[..., Any], *avals: Any, with_text: bool = False) -> Any:
    """SHA-256 of ``fn``'s jaxpr at the abstract arguments ``avals`` (ShapeDtypeStructs) and of
    its constants' values (with the jaxpr's text when ``with_text``); :class:`Uncacheable` when
    ``fn`` cannot be traced there."""
    try:  # a fresh wrapper: JAX caches traces by function identity, and fn may read globals
        closed = jax.make_jaxpr(lambda *args: fn(*args))(*avals)
    except Exception as err:  # the program will raise the same error when it is built
        raise Uncacheable(f"tracing failed: {type(err).__name__}") from err
    text = str(closed.jaxpr)
    h = hashlib.sha256(text.encode())
    for const in closed.consts:
        h.update(repr(describe(const)).encode())
    return (h.hexdigest(), text) if with_text else h.hexdigest()


# loss function -> {(row count, shapes): digest}, within one localize() or sample() call (see
# forget_loss_digests); weak, so a dropped posterior frees its entry
_LOSS_DIGESTS: weakref.WeakKeyDictionary[Any, dict[Any, str]] = weakref.WeakKeyDictionary()


def forget_loss_digests() -> None:
    """Drop the memoized loss digests. Called at the start of every ``localize``/``sample`` call:
    a loss that reads a global the user changed between two calls traces to a new jaxpr, and a
    digest remembered from the earlier call would name the old program."""
    _LOSS_DIGESTS.clear()


CUSTOM_RULES = ("custom_jvp_call", "custom_vjp_call", "custom_lin", "custom_transpose")


def loss_digest(
    loss_fn: Callable[..., Any], center: Any, data: Mapping[str, Any], rows: Iterable[int]
) -> str:
    """Digest of ``loss_fn`` at batches of each row count in ``rows`` (see the module docstring),
    memoized per loss function object and row count until :func:`forget_loss_digests`.

    The forward jaxpr determines the derivatives too, since JAX differentiates a jaxpr of
    standard primitives by fixed rules; only user rules (``jax.custom_jvp``/``custom_vjp``, whose
    rule functions the jaxpr names but does not show) need the value, gradient and Hessian-vector
    product traced as well (≈ 0.1 s instead of ≈ 15 ms for a small model).
    """
    w = jax.ShapeDtypeStruct(jnp.shape(center), jnp.result_type(center))
    shapes = tuple(sorted(
        (k, tuple(jnp.shape(v))[1:], str(jnp.result_type(v))) for k, v in data.items()
    ))  # fmt: skip
    try:
        memo = _LOSS_DIGESTS.setdefault(loss_fn, {})
    except TypeError:  # not weak-referenceable: compute every time
        memo = {}
    h = hashlib.sha256()
    for r in sorted(set(int(r) for r in rows)):
        memo_key = (r, w.shape, str(w.dtype), shapes)
        if memo_key not in memo:
            batch = {k: jax.ShapeDtypeStruct((r, *s), d) for k, s, d in shapes}
            memo[memo_key] = _one_digest(loss_fn, w, batch)
        h.update(f"{r}:{memo[memo_key]}".encode())
    return h.hexdigest()


def _one_digest(loss_fn: Callable[..., Any], w: Any, batch: Mapping[str, Any]) -> str:
    forward, text = jaxpr_digest(loss_fn, w, batch, with_text=True)
    if not any(rule in text for rule in CUSTOM_RULES):
        return forward

    def derivatives(u: Any, v: Any, rows: Mapping[str, Any]) -> Any:
        value, grad = jax.value_and_grad(loss_fn)(u, rows)
        hvp = jax.jvp(lambda x: jax.grad(loss_fn)(x, rows), (u,), (v,))[1]
        return value, grad, hvp

    return forward + jaxpr_digest(derivatives, w, w, batch)


def loss_key(
    loss_fn: Callable[..., Any], center: Any, data: Mapping[str, Any], rows: Iterable[int]
) -> tuple[str, tuple[Any, ...]] | None:
    """The structural key of a program whose only code besides JAX's is ``loss_fn`` at batches of
    ``rows`` rows, with every array an argument (for ``compile_cache.keyed_call``, next to a tag
    naming the program); None when the structural cache is off or the loss cannot be described."""
    from slt_ppl.compile_cache import programs_enabled

    if not programs_enabled():
        return None
    try:
        return loss_digest(loss_fn, center, data, rows), config_key()
    except Uncacheable:
        return None


def tagged(tag: Any, key: Any) -> Any:
    """``(tag, key)``, or None when ``key`` is None (uncacheable)."""
    return None if key is None else (tag, key)


def config_key() -> tuple[Any, ...]:
    """JAX's version, default backend and configuration flags (x64, PRNG implementation, matmul
    precision, ...): a program traced under other flags is another program."""
    values = getattr(jax.config, "values", {})
    flags = tuple(sorted((k, repr(v)) for k, v in values.items()))
    return (jax.__version__, jax.default_backend(), flags)
