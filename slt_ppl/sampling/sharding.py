"""Chains sharded over devices with ``jax.sharding``: one mesh axis, "chain".

The compiled segment (``sampling.loop``) is a ``vmap`` over chains; with its chain-indexed inputs
(states, chain keys, per-chain batch keys) placed with ``NamedSharding(mesh, P("chain"))`` and the
data, w* and scalars replicated, XLA's SPMD partitioner splits the chains over the devices with no
communication inside a segment (shared minibatch indices are computed on every device from the same
key). Chain i's draws depend only on (seed, i), so a sharded run reproduces an unsharded one.

Memory: each device holds its C/k chains' states (C/k·d numbers per state vector) plus a replica of
the data; the records are C·D scalars per field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "chain"


def resolve_devices(devices: Any, num_chains: int) -> list[Any] | None:
    """The devices to shard ``num_chains`` chains over, or None for an unsharded run.

    ``devices``: None (automatic: all devices of the default backend when there are several),
    an int k (the first k), a sequence of ``jax.Device``, or 1 / False (no sharding). The number
    used is the largest count ≤ the available ones that divides ``num_chains``.
    """
    from slt_ppl.errors import SettingError

    if devices is False:
        return None
    if devices is None:
        pool = list(jax.devices())
    elif isinstance(devices, int):
        if devices < 1:
            raise SettingError(f"devices must be >= 1, got {devices}")
        available = jax.devices()
        if devices > len(available):
            raise SettingError(f"devices = {devices} but only {len(available)} are available")
        pool = list(available[:devices])
    elif isinstance(devices, Sequence):
        pool = list(devices)
        if not pool:
            raise SettingError("devices is an empty list")
    else:
        raise SettingError(
            f"devices must be None, an int or a list of jax devices, got {devices!r}"
        )
    k = max(j for j in range(1, len(pool) + 1) if num_chains % j == 0)
    return pool[:k] if k > 1 else None


def chain_mesh(devices: Sequence[Any]) -> Mesh:
    """A one-axis mesh ("chain") over ``devices``."""
    import numpy as np

    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def chain_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (chain) axis split over the mesh."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Replicated on every device of the mesh."""
    return NamedSharding(mesh, P())


def shard_chains(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` (leading axis = chains) split over the mesh."""
    return jax.device_put(tree, chain_sharding(mesh))


def segment_shardings(mesh: Mesh, shared_batches: bool) -> tuple[tuple[Any, ...], Any]:
    """(in_shardings, out_shardings) of ``SegmentRunner.segment_fn``'s
    ``run(args, states, chain_keys, batch_keys, step_size, start, diag_every) -> (states, records)``."""
    chains, rep = chain_sharding(mesh), replicated(mesh)
    batch = rep if shared_batches else chains
    return (rep, chains, chains, batch, rep, rep, rep), (chains, chains)
