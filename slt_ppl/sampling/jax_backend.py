"""The JAX backend of the sampling driver (``sampling.driver``): NumPyro and plain-JAX posteriors.

Supplies the compiled step program (``sampling.loop.SegmentRunner``: vmap over chains, scan over
steps, one jit), the kernels of ``slt_ppl.kernels``, sharding over devices (``sampling.sharding``)
and NumPyro's HMC/NUTS. Keys: chain i uses fold_in(fold_in(PRNGKey(seed), stream), i) (stream 0
sampling, 2 tuning); shared minibatches fold_in(PRNGKey(seed), 1) (the tuner's: its stream key);
per-chain minibatches fold_in(chain key, 2³¹ − 1); init jitter fold_in(chain key, 7).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError
from slt_ppl.kernels import FULL_BATCH_KERNELS, KERNEL_NAMES, NUMPYRO_KERNELS, get_kernel
from slt_ppl.posterior import LocalPosterior
from slt_ppl.sampling import sharding
from slt_ppl.sampling.loop import SegmentRunner
from slt_ppl.sampling.options import RunSettings
from slt_ppl.sampling.program_key import Uncacheable, describe


class JaxBackend:
    """See the module docstring; one instance per run (it holds the device mesh)."""

    name = "jax"
    kernel_names = KERNEL_NAMES
    full_batch_kernels = FULL_BATCH_KERNELS
    external_kernels = NUMPYRO_KERNELS
    caps_fn = None  # sampling.stepsize.accuracy_caps

    def __init__(self) -> None:
        self.devices: list[Any] | None = None
        self.mesh: Any = None
        self.kernel_keys: dict[int, Any] = {}  # id(kernel) -> its structural key (program cache)

    def check_posterior(self, posterior: Any) -> None:
        if not isinstance(posterior, LocalPosterior):
            raise SettingError(
                "sample() needs a LocalPosterior from slt_ppl.localize(...), got "
                f"{type(posterior).__name__}"
            )

    def sample_external(self, posterior: LocalPosterior, s: RunSettings) -> xr.DataTree:
        from slt_ppl.sampling.numpyro_mcmc import sample_numpyro

        return sample_numpyro(posterior, s)

    def get_kernel(self, kernel: Any, options: dict[str, Any]) -> Any:
        built = get_kernel(kernel, **options)
        if isinstance(kernel, str):  # a registry kernel is determined by its name and options
            try:
                self.kernel_keys[id(built)] = ("named", kernel, describe(options))
            except Uncacheable:  # e.g. a callable option: key the program on the object
                pass
        return built

    def runner(
        self, posterior: LocalPosterior, kernel: Any, batch: int, s: RunSettings, num_chains: int,
        nbeta_factors: np.ndarray | None, probes: Any = None,
    ) -> SegmentRunner:  # fmt: skip
        self.devices = sharding.resolve_devices(s.devices, num_chains)
        self.mesh = sharding.chain_mesh(self.devices) if self.devices else None
        return SegmentRunner(
            posterior, kernel, batch, s.thin, s.plan.diag_every,
            s.keep_draws or s.stream_to is not None, s.plan.shared_batches,
            float(s.divergence.explode), mesh=self.mesh,
            nbeta_factors=None if nbeta_factors is None else jnp.asarray(nbeta_factors),
            probes=probes, kernel_key=self.kernel_keys.get(id(kernel)),
        )  # fmt: skip

    def keys(
        self, seed: int, stream: int, chain_index: np.ndarray, shared: bool
    ) -> tuple[Any, Any]:
        master = jax.random.PRNGKey(seed)
        base = jax.random.fold_in(master, stream)
        chain_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(chain_index))
        if shared:
            batch_keys = jax.random.fold_in(master, 1) if stream == 0 else base
        elif stream == 0:
            batch_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(chain_keys)
        else:
            batch_keys = chain_keys
        if self.mesh is not None:
            chain_keys = sharding.shard_chains(chain_keys, self.mesh)
            if not shared:
                batch_keys = sharding.shard_chains(batch_keys, self.mesh)
        return chain_keys, batch_keys

    def initial_positions(self, posterior: LocalPosterior, chain_keys: Any, jitter: float) -> Any:
        positions = jnp.broadcast_to(posterior.center, (chain_keys.shape[0], posterior.dim))
        if jitter > 0:
            noise = jax.vmap(
                lambda k: jax.random.normal(jax.random.fold_in(k, 7), (posterior.dim,))
            )(chain_keys)
            positions = positions + jitter * noise
        if self.mesh is not None:
            positions = sharding.shard_chains(positions, self.mesh)
        return positions

    def state_to_host(self, state: Any) -> list[np.ndarray]:
        return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(state))]

    def state_from_host(self, leaves: list[np.ndarray], template: Any) -> Any:
        treedef = jax.tree_util.tree_structure(template)
        state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves])
        return state if self.mesh is None else sharding.shard_chains(state, self.mesh)

    def diverged_at(self, state: Any) -> np.ndarray:
        return np.asarray(state.diverged_at)

    def check_step_size(self, posterior: LocalPosterior, step_size: float) -> None:
        from slt_ppl.preflight import check_step_size

        check_step_size(posterior, step_size)

    def attrs(self) -> dict[str, Any]:
        return {"num_devices": len(self.devices) if self.devices else 1}
