"""HMC and NUTS on a torch local posterior through Pyro's own kernels (``pyro.infer.mcmc``, full
batch, exact), with ``potential_fn(params) = U({"w": w})`` over the flat unconstrained vector.

Pyro adapts the step size and a diagonal mass matrix during warm-up (``num_burnin`` steps). Pyro's
multi-chain MCMC runs chains in separate processes, so here chains run one after another, each a
single-chain ``MCMC`` seeded from (seed, chain) inside ``torch.random.fork_rng`` (the caller's
global RNG is left untouched). Per-draw acceptance probabilities are read back from the running
mean Pyro's kernel keeps (a_t = t·m_t − (t−1)·m_{t−1}); L_n(w) and ‖∇U‖ at the draws are evaluated
afterwards in one batched pass (``torch.func.vmap``). The result is assembled by
``sampling.result.external_mcmc_result``, as NumPyro's is.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyro
import torch
import xarray as xr
from pyro.infer.mcmc import HMC, MCMC, NUTS

from slt_ppl.posterior_torch import TorchLocalPosterior
from slt_ppl.sampling.options import RunSettings
from slt_ppl.sampling.result import external_mcmc_result, mcmc_options


def sample_pyro_mcmc(posterior: TorchLocalPosterior, s: RunSettings) -> xr.DataTree:
    """Run ``s.num_chains`` Pyro HMC/NUTS chains of ``num_draws``·``thin`` steps, keep every
    ``thin``-th."""
    data = posterior.data

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return posterior.potential(params["w"], data)[0]

    options = mcmc_options(s.step_size, s.kernel_options)
    cls = NUTS if s.kernel == "nuts" else HMC
    devices = [posterior.device] if posterior.device.type == "cuda" else []
    chains, accepts, steps = [], [], []
    t0 = time.perf_counter()
    for c in range(s.num_chains):
        mcmc_kernel = cls(potential_fn=potential, **options)
        means: list[float] = []

        def hook(k: Any, _params: Any, stage: str, _i: int, means: list[float] = means) -> None:
            if stage == "Sample":
                means.append(float(k._mean_accept_prob))

        with torch.random.fork_rng(devices=devices):
            pyro.set_rng_seed(int(np.random.SeedSequence([s.seed, c]).generate_state(1)[0]))
            mcmc = MCMC(
                mcmc_kernel,
                num_samples=s.num_draws * s.thin,
                warmup_steps=s.burnin_steps,
                initial_params={"w": posterior.center.clone()},
                num_chains=1,
                disable_progbar=not s.progress,
                hook_fn=hook,
            )
            mcmc.run()
        chains.append(mcmc.get_samples()["w"][:: s.thin])
        m = np.asarray(means)
        t = np.arange(1, m.size + 1)
        acc = t * m - (t - 1) * np.concatenate([[0.0], m[:-1]])
        accepts.append(np.clip(acc, 0.0, 1.0)[:: s.thin])
        steps.append(float(mcmc_kernel.step_size))
    wall = time.perf_counter() - t0
    positions = torch.stack(chains)  # (C, D, d)
    loss, grad_norm = _loss_and_grad_norm(posterior, positions)
    return external_mcmc_result(
        posterior, s, positions.cpu().numpy(), loss, np.stack(accepts), grad_norm,
        step_size=float(np.mean(steps)), options=options,
        method="pyro dual averaging (warm-up)",
        attrs={"sampling_time_s": float(wall), "device": str(posterior.device)},
    )  # fmt: skip


def _loss_and_grad_norm(
    posterior: TorchLocalPosterior, positions: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """L_n and ‖∇U‖ at every draw (C, D, d), batched over draws with ``torch.func.vmap``."""
    flat = positions.reshape(-1, positions.shape[-1])
    vg = torch.func.vmap(
        torch.func.grad_and_value(lambda w: posterior.potential(w, posterior.data), has_aux=True)
    )
    losses, norms = [], []
    with torch.no_grad():
        for piece in torch.split(flat, 256):
            grad, (_, loss) = vg(piece)
            losses.append(loss)
            norms.append(torch.linalg.vector_norm(grad, dim=-1))
    shape = positions.shape[:2]
    return (
        torch.cat(losses).reshape(shape).cpu().numpy(),
        torch.cat(norms).reshape(shape).cpu().numpy(),
    )
