"""``slt_ppl.sample`` for a :class:`~slt_ppl.posterior_torch.TorchLocalPosterior`: the same keyword
arguments and the same result (``sampling.result.build_result``) as the JAX path.

Randomness: one ``torch.Generator`` on the posterior's device seeded from ``seed`` drives chains and
minibatches (the step-size tuner gets its own, seeded from (seed, 2)). Torch draws therefore differ
from JAX draws with the same seed; only their statistics agree.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import torch
import xarray as xr

from slt_ppl.errors import SettingError
from slt_ppl.kernels_torch import FULL_BATCH_KERNELS, KERNEL_NAMES, PYRO_KERNELS, TorchKernel
from slt_ppl.kernels_torch import get_kernel as get_torch_kernel
from slt_ppl.posterior_torch import TorchLocalPosterior
from slt_ppl.sampling import torch_stepsize
from slt_ppl.sampling.result import build_result
from slt_ppl.sampling.stepsize import tune_step_size
from slt_ppl.sampling.torch_loop import RECORD_FIELDS, TorchSegmentRunner

DEFAULT_BATCH_SIZE = 256


def make_generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, stream) through NumPy's SeedSequence."""
    state = int(np.random.SeedSequence([int(seed), stream]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(state)


def sample_torch(
    posterior: TorchLocalPosterior,
    kernel: str | TorchKernel = "sgld",
    step_size: float | str | None = "auto",
    batch_size: int | None = None,
    num_chains: int = 4,
    num_draws: int = 1000,
    num_burnin: int | None = None,
    thin: int = 1,
    seed: int = 0,
    *,
    diag_every: int = 20,
    keep_draws: bool = False,
    shared_batches: bool = True,
    init_jitter: float = 0.0,
    explode: float = 1e3,
    progress: bool = True,
    num_segments: int = 20,
    kernel_options: dict[str, Any] | None = None,
) -> xr.DataTree:
    """Sample the local posterior with ``num_chains`` chains batched as one tensor; arguments and
    result exactly as :func:`slt_ppl.sampling.api.sample` ("hmc"/"nuts" run Pyro's own kernels)."""
    check_settings(
        posterior, kernel, batch_size, num_chains, num_draws, num_burnin, thin, diag_every
    )
    if num_burnin is None:
        num_burnin = num_draws * thin
    if isinstance(kernel, str) and kernel in PYRO_KERNELS:
        from slt_ppl.sampling.pyro_mcmc import sample_pyro_mcmc

        return sample_pyro_mcmc(
            posterior, kernel, step_size, num_chains, num_draws, num_burnin, thin, seed,
            keep_draws=keep_draws, progress=progress, kernel_options=kernel_options or {},
        )  # fmt: skip
    options = dict(kernel_options or {})
    if kernel == "rmsprop_sgld":
        options.setdefault("freeze_after", num_burnin)
    kern = get_torch_kernel(kernel, **options)
    batch = posterior.n if kern.full_batch else min(posterior.n, batch_size or DEFAULT_BATCH_SIZE)
    runner = TorchSegmentRunner(
        posterior, kern, batch, thin, diag_every, keep_draws, shared_batches, float(explode)
    )
    device = posterior.device
    gen = make_generator(seed, 0, device)
    positions = posterior.center.expand(num_chains, posterior.dim).clone()
    if init_jitter > 0:
        positions = positions + init_jitter * torch.randn(
            positions.shape, generator=gen, device=device, dtype=positions.dtype
        )
    state = runner.init(gen, positions)

    tuning: dict[str, Any] = {"method": "user"}
    if step_size is None or step_size == "auto":
        tune_gen = make_generator(seed, 2, device)
        tuner = TorchSegmentRunner(
            posterior, kern, batch, 1, 1, False, shared_batches, float(explode)
        )
        step_size, tuning, _ = tune_step_size(
            tuner, state, tune_gen, None,
            caps_fn=torch_stepsize.accuracy_caps,
        )  # fmt: skip
    else:
        try:
            step_size = float(step_size)
        except (TypeError, ValueError) as err:
            raise SettingError(
                f"step_size must be a positive number or 'auto', got {step_size!r}"
            ) from err
        if not (math.isfinite(step_size) and step_size > 0):
            raise SettingError(f"step_size must be a positive finite number, got {step_size}")

    num_burnin_draws = math.ceil(num_burnin / thin)
    total = num_burnin_draws + num_draws
    records, state, wall = _run_segments(
        runner, state, gen, step_size, total, num_segments, progress
    )
    return build_result(
        posterior,
        records,
        num_burnin_draws=num_burnin_draws,
        diverged_at=state.diverged_at.cpu().numpy(),
        attrs={
            "kernel": kern.name,
            "kernel_params": json.dumps(kern.params),
            "step_size": float(step_size),
            "step_size_tuning": json.dumps(tuning),
            "batch_size": int(batch),
            "num_chains": int(num_chains),
            "num_draws": int(num_draws),
            "num_burnin": int(num_burnin_draws * thin),
            "thin": int(thin),
            "diag_every": int(diag_every),
            "shared_batches": int(bool(shared_batches)),
            "init_jitter": float(init_jitter),
            "seed": int(seed),
            "sampling_time_s": float(wall),
            "device": str(device),
        },
        keep_draws=keep_draws,
    )


def _run_segments(
    runner: TorchSegmentRunner,
    state: Any,
    gen: torch.Generator,
    step_size: float,
    total: int,
    num_segments: int,
    progress: bool,
) -> tuple[dict[str, np.ndarray], Any, float]:
    from tqdm.auto import tqdm

    seg = max(1, math.ceil(total / max(1, num_segments)))
    pieces = []
    start = 0
    t0 = time.perf_counter()
    with tqdm(
        total=total * runner.thin,
        disable=not progress,
        desc=f"{runner.kernel.name} x{state.diverged_at.shape[0]} ({runner.posterior.device})",
        unit="step",
    ) as bar:
        while start < total:
            length = min(seg, total - start)
            state, rec = runner.run(state, gen, step_size, start, length)
            pieces.append(rec)
            start += length
            bar.update(length * runner.thin)
    wall = time.perf_counter() - t0
    records = {f: np.concatenate([getattr(p, f) for p in pieces], axis=1) for f in RECORD_FIELDS}
    return records, state, wall


def check_settings(
    posterior: TorchLocalPosterior,
    kernel: Any,
    batch_size: int | None,
    num_chains: int,
    num_draws: int,
    num_burnin: int | None,
    thin: int,
    diag_every: int,
) -> None:
    """The checks of ``sampling.api`` with the torch kernel names (same messages)."""
    from slt_ppl.sampling.api import check_run_settings

    check_run_settings(
        posterior.n, kernel, KERNEL_NAMES, FULL_BATCH_KERNELS, batch_size, num_chains, num_draws,
        num_burnin, thin, diag_every,
    )  # fmt: skip
