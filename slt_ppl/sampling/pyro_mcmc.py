"""HMC and NUTS on a torch local posterior through Pyro's own kernels (``pyro.infer.mcmc``, full
batch,
exact), with ``potential_fn(params) = U({"w": w})`` over the flat unconstrained vector.

Pyro adapts the step size and a diagonal mass matrix during warm-up (``num_burnin`` steps). Pyro's
multi-chain MCMC runs chains in separate processes, so here chains run one after another, each a
single-chain ``MCMC`` seeded from (seed, chain) inside ``torch.random.fork_rng`` (the caller's
global
RNG is left untouched). Per-draw acceptance probabilities are read back from the running mean Pyro's
kernel keeps (a_t = t·m_t − (t−1)·m_{t−1}); L_n(w) and ‖∇U‖ at the draws are evaluated afterwards
in one
batched pass (``torch.func.vmap``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyro
import torch
import xarray as xr
from pyro.infer.mcmc import HMC, MCMC, NUTS

from slt_ppl.posterior_torch import TorchLocalPosterior
from slt_ppl.sampling.result import build_result


def sample_pyro_mcmc(
    posterior: TorchLocalPosterior,
    kernel: str,
    step_size: Any,
    num_chains: int,
    num_draws: int,
    num_burnin: int,
    thin: int,
    seed: int,
    *,
    keep_draws: bool,
    progress: bool,
    kernel_options: dict[str, Any],
) -> xr.DataTree:
    """Run ``num_chains`` Pyro HMC/NUTS chains of ``num_draws``·``thin`` steps, keep every
    ``thin``-th."""
    data = posterior.data

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return posterior.potential(params["w"], data)[0]

    options = dict(kernel_options)
    if step_size not in (None, "auto"):
        options.setdefault("step_size", float(step_size))
        options.setdefault("adapt_step_size", False)
    cls = NUTS if kernel == "nuts" else HMC
    devices = [posterior.device] if posterior.device.type == "cuda" else []
    chains, accepts, steps = [], [], []
    t0 = time.perf_counter()
    for c in range(num_chains):
        mcmc_kernel = cls(potential_fn=potential, **options)
        means: list[float] = []

        def hook(k: Any, _params: Any, stage: str, _i: int, means: list[float] = means) -> None:
            if stage == "Sample":
                means.append(float(k._mean_accept_prob))

        with torch.random.fork_rng(devices=devices):
            pyro.set_rng_seed(int(np.random.SeedSequence([seed, c]).generate_state(1)[0]))
            mcmc = MCMC(
                mcmc_kernel,
                num_samples=num_draws * thin,
                warmup_steps=num_burnin,
                initial_params={"w": posterior.center.clone()},
                num_chains=1,
                disable_progbar=not progress,
                hook_fn=hook,
            )
            mcmc.run()
        chains.append(mcmc.get_samples()["w"][::thin])
        m = np.asarray(means)
        t = np.arange(1, m.size + 1)
        acc = t * m - (t - 1) * np.concatenate([[0.0], m[:-1]])
        accepts.append(np.clip(acc, 0.0, 1.0)[::thin])
        steps.append(float(mcmc_kernel.step_size))
    wall = time.perf_counter() - t0
    positions = torch.stack(chains)  # (C, D, d)
    loss, grad_norm = _loss_and_grad_norm(posterior, positions)
    bad = ~np.isfinite(loss)
    first_bad = np.where(bad.any(axis=1), bad.argmax(axis=1), -1)
    pos = positions.cpu().numpy()
    records = {
        "loss": loss,
        "loss_center": np.full_like(loss, posterior.info["loss_center_full"]),
        "acceptance": np.stack(accepts).astype(loss.dtype),
        "grad_norm": grad_norm,
        "distance": np.linalg.norm(pos - posterior.center.cpu().numpy(), axis=-1),
        "position": pos,
    }
    return build_result(
        posterior,
        records,
        num_burnin_draws=0,
        diverged_at=first_bad,
        attrs={
            "kernel": kernel,
            "kernel_params": json.dumps({k: str(v) for k, v in options.items()}),
            "step_size": float(np.mean(steps)),
            "step_size_tuning": json.dumps({"method": "pyro dual averaging (warm-up)"}),
            "batch_size": int(posterior.n),
            "num_chains": int(num_chains),
            "num_draws": int(num_draws),
            "num_burnin": int(num_burnin),
            "thin": int(thin),
            "seed": int(seed),
            "sampling_time_s": float(wall),
            "device": str(posterior.device),
        },
        keep_draws=keep_draws,
    )


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
