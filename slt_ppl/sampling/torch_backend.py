"""The torch backend of the sampling driver (``sampling.driver``): Pyro models and ``nn.Module``s.

Supplies the batched step program (``sampling.torch_loop.TorchSegmentRunner``: ``torch.func``
gradients of all chains at once), the kernels of ``slt_ppl.kernels_torch``, the tuner's cap
statistics in torch (``sampling.torch_stepsize``) and Pyro's HMC/NUTS; everything else (tuning,
segments, checkpoints, retries, streaming, result) is the driver's, shared with JAX.

Keys are counters, as in JAX: chain i's seed is mix(seed, stream, i) (stream 0 sampling, 2
tuning; ``kernels_torch.base.mix``), shared minibatches use mix(seed, 1) (the tuner's
mix(seed, 2)), per-chain minibatches mix(chain seed, 2³¹ − 1), the init jitter the chain's stream
at counter ``JITTER_TAG``. Chain i's draws therefore depend only on (seed, i); they differ from the
JAX draws of the same seed (different generators), only their statistics agree.

Devices: all chains run as one batch on the posterior's device (``localize(..., device=)``; cuda
when available). ``devices=`` None, False or 1 mean exactly that; asking for more than one device
raises ``SettingError`` (sharding chains over several CUDA devices is a JAX-backend feature).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr

from slt_ppl.errors import SettingError
from slt_ppl.kernels_torch import FULL_BATCH_KERNELS, KERNEL_NAMES, PYRO_KERNELS, get_kernel
from slt_ppl.kernels_torch.base import ChainNoise, mix
from slt_ppl.posterior_torch import TorchLocalPosterior
from slt_ppl.sampling import torch_stepsize
from slt_ppl.sampling.options import RunSettings
from slt_ppl.sampling.torch_loop import TorchChainState, TorchSegmentRunner

JITTER_TAG = (1 << 62) + 7


class TorchBackend:
    """See the module docstring."""

    name = "torch"
    kernel_names = KERNEL_NAMES
    full_batch_kernels = FULL_BATCH_KERNELS
    external_kernels = PYRO_KERNELS
    caps_fn = staticmethod(torch_stepsize.accuracy_caps)
    # eager torch steps cost ~1 ms of Python each on a CPU: automatic thinning stops far sooner
    max_auto_steps = 20_000

    def __init__(self) -> None:
        self.device: torch.device | None = None

    def check_posterior(self, posterior: Any) -> None:
        if not isinstance(posterior, TorchLocalPosterior):
            raise SettingError(
                "the torch backend needs a TorchLocalPosterior from slt_ppl.localize(...), got "
                f"{type(posterior).__name__}"
            )
        self.device = posterior.device

    def sample_external(self, posterior: TorchLocalPosterior, s: RunSettings) -> xr.DataTree:
        from slt_ppl.sampling.pyro_mcmc import sample_pyro_mcmc

        return sample_pyro_mcmc(posterior, s)

    def get_kernel(self, kernel: Any, options: dict[str, Any]) -> Any:
        return get_kernel(kernel, **options)

    def runner(
        self, posterior: TorchLocalPosterior, kernel: Any, batch: int, s: RunSettings,
        num_chains: int, nbeta_factors: np.ndarray | None, probes: Any = None,
    ) -> TorchSegmentRunner:  # fmt: skip
        check_devices(s.devices, posterior.device)
        return TorchSegmentRunner(
            posterior, kernel, batch, s.thin, s.plan.diag_every,
            s.keep_draws or s.stream_to is not None, s.plan.shared_batches,
            float(s.divergence.explode), nbeta_factors, probes=probes,
        )  # fmt: skip

    def keys(
        self, seed: int, stream: int, chain_index: np.ndarray, shared: bool
    ) -> tuple[Any, Any]:
        chain_keys = np.array([mix(seed, stream, int(i)) for i in chain_index], np.uint64)
        if shared:
            return chain_keys, np.uint64(mix(seed, 1 if stream == 0 else stream))
        if stream == 0:
            return chain_keys, np.array([mix(k, 2**31 - 1) for k in chain_keys], np.uint64)
        return chain_keys, chain_keys

    def initial_positions(
        self, posterior: TorchLocalPosterior, chain_keys: Any, jitter: float
    ) -> torch.Tensor:
        positions = posterior.center.expand(len(chain_keys), posterior.dim).clone()
        if jitter > 0:
            positions = positions + jitter * ChainNoise(chain_keys, posterior.device).at(
                JITTER_TAG
            ).normal(positions)
        return positions

    def state_to_host(self, state: TorchChainState) -> list[np.ndarray]:
        return [t.detach().cpu().numpy() for t in _leaves(state)]

    def state_from_host(self, leaves: list[np.ndarray], template: TorchChainState) -> Any:
        it = iter(torch.as_tensor(x, device=self.device) for x in leaves)
        kernel_state = type(template.kernel_state)(*(next(it) for _ in template.kernel_state))
        return TorchChainState(kernel_state, next(it))

    def diverged_at(self, state: TorchChainState) -> np.ndarray:
        return state.diverged_at.cpu().numpy()

    def check_step_size(self, posterior: TorchLocalPosterior, step_size: float) -> None:
        from slt_ppl.preflight import check_step_size

        check_step_size(posterior, step_size)

    def attrs(self) -> dict[str, Any]:
        return {"num_devices": 1, "device": str(self.device)}


def _leaves(state: TorchChainState) -> list[torch.Tensor]:
    return [*state.kernel_state, state.diverged_at]


def check_devices(devices: Any, device: torch.device) -> None:
    """Accept ``devices`` that mean "the posterior's device"; refuse more than one, saying why."""
    if devices is None or devices is False or devices == 1:
        return
    if isinstance(devices, list | tuple) and len(devices) == 1:
        if torch.device(devices[0]) != device:
            raise SettingError(
                f"devices={devices!r}: torch chains run on the posterior's device ({device}); "
                "pass device= to slt_ppl.localize instead"
            )
        return
    raise SettingError(
        f"devices={devices!r}: the torch backend runs all chains as one batch on the posterior's "
        f"device ({device}); sharding chains over several devices is available for NumPyro/JAX "
        "posteriors only. Use devices=None (or run one process per GPU with different seeds)."
    )
