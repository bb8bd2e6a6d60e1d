"""``slt_ppl.sample``: run chains on a local posterior and return an xarray DataTree.

The flow (``sampling.driver``, the same for both backends): check the settings → build the kernel
and the backend's step program → tune ε → run segments (progress, checkpoints, divergence retries,
streaming) → assemble the result. This module only picks the backend and gathers the settings.
"""

from __future__ import annotations

import os
from typing import Any

import xarray as xr

from slt_ppl.sampling.defaults import DEFAULT_BATCH_SIZE
from slt_ppl.sampling.driver import run
from slt_ppl.sampling.options import (
    Checkpointing,
    Divergence,
    Plan,
    RunSettings,
    from_legacy,
)

__all__ = ["DEFAULT_BATCH_SIZE", "Checkpointing", "Divergence", "Plan", "sample"]


def sample(
    posterior: Any,
    kernel: Any = "auto",
    step_size: float | str | None = "auto",
    batch_size: int | None = None,
    num_chains: int | None = None,
    num_draws: int = 1000,
    num_burnin: int | None = None,
    thin: int | None = None,
    seed: int = 0,
    *,
    keep_draws: bool = False,
    init_jitter: float = 0.0,
    progress: bool = True,
    kernel_options: dict[str, Any] | None = None,
    plan: Plan | None = None,
    divergence: Divergence | None = None,
    checkpoint: Checkpointing | str | os.PathLike[str] | None = None,
    stream_to: str | os.PathLike[str] | None = None,
    devices: Any = None,
    temperatures: tuple[float, ...] | None = None,
    observe: dict[str, dict[str, Any]] | None = None,
    observe_every: int = 1,
    **legacy: Any,
) -> xr.DataTree:
    """Sample the local posterior with ``num_chains`` chains in one compiled (JAX) or batched
    (torch) program.

    Args:
        posterior: from :func:`slt_ppl.localize` (NumPyro/JAX or Pyro/``nn.Module``).
        kernel: "auto" (default: SGLD with minibatches, ε adapted along the chains; see
            ``sampling.defaults``, the choice is in attrs["kernel_choice"]), "sgld",
            "rmsprop_sgld", "sghmc", "sgnht" (stochastic gradient), "mala" (full batch,
            Metropolis-corrected), "hmc"/"nuts" (the PPL's own kernels, full batch), or a kernel
            object of the posterior's backend.
        step_size: ε in the Langevin convention w ← w − (ε/2)∇U + √ε ξ; "auto"/None (default)
            tunes it so the MALA-acceptance diagnostic lands in 0.90–0.95 (see
            ``sampling.stepsize``). An auto-tuned ε depends on all chains, so chain i's draws are
            independent of ``num_chains`` only for a given numeric ε.
        batch_size: minibatch size for SG kernels, default min(n, 256); indices are drawn with
            replacement on the device.
        num_chains: chains (per temperature); None (default) is 4, or 16 for a tiny model
            (batch·d ≤ 2048) sampled by slt_ppl's own kernels, where a step costs its overhead
            and more chains are almost free (``sampling.defaults.choose_num_chains``; the choice
            is in attrs["num_chains_choice"]).
        num_draws: recorded draws per chain.
        num_burnin: steps discarded before the first recorded draw (still recorded in the
            ``warmup_sample_stats`` group); default = num_draws·thin, i.e. half the run.
        thin: steps per recorded draw; None (default) chooses it after tuning so the draws span
            ten relaxation times of the slowest mode, 2/(εγ) steps, within a work budget
            (``sampling.defaults.auto_thin``; 1 for large models).
        seed: chain i uses keys derived from (seed, i) only, on both backends.
        keep_draws: also keep parameter draws (group ``posterior``; memory C·D·d).
        init_jitter: chains start at w* + init_jitter·N(0, I) (default exactly at w*).
        progress: show a progress bar (segment by segment; nothing syncs inside a segment).
        kernel_options: passed to the kernel builder (e.g. ``{"friction": 0.2}``).
        plan: :class:`~slt_ppl.sampling.options.Plan` — ``diag_every`` (MALA-acceptance
            diagnostic every k draws, default 20), ``num_segments`` (default 20),
            ``shared_batches`` (default True), ``full_loss`` (record L_n(w_t) on the full data
            instead of the paired minibatch loss; default None: for tiny models where it is
            cheap, ``sampling.defaults.choose_full_loss``; attrs["loss_trace"]).
        divergence: :class:`~slt_ppl.sampling.options.Divergence` — ``explode`` (default 1e3),
            ``retries`` (rerun with ε halved when more than ``max_fraction`` of the chains
            diverged; default 0) and ``max_fraction`` (default 0).
        checkpoint: a path (``run.nc``, or a directory for ``<dir>/checkpoint.nc``) or a
            :class:`~slt_ppl.sampling.options.Checkpointing` (``path``, ``every`` segments,
            ``resume``): the sampler state, draws so far, settings and ε are written atomically
            (``sampling.checkpoint``); a resumed run equals an uninterrupted one bit for bit.
        stream_to: a path: parameter draws (burn-in included) and the per-draw statistics are
            appended there segment by segment (``sampling.stream``, NetCDF4) instead of being held
            in memory; the returned tree then has no ``posterior`` group and names the file in
            attrs["draws_file"].
        devices: JAX: shard the chains over devices (``sampling.sharding``): None (default) all
            devices of the default backend when there are several, an int the first k, a list
            those devices, False none; draws are the same as unsharded. Torch: all chains run on
            the posterior's device; more than one device is refused with a ``SettingError``.
        temperatures: nβ factors, e.g. (1.0, 2.0): ``num_chains`` chains at each nβ·factor (same γ
            and center) in one program, coupled by common random numbers
            (``sampling.temperatures``); the result gains a ``temperature`` dim and
            :func:`slt_ppl.llc` the two-temperature estimate. The chains at factor f step at
            ε/f, ε being ``step_size`` (given, or tuned on the factor-1 chains) at factor 1, so
            every temperature has the same first-order discretization heating and the
            minibatch part of the heating cancels in λ̂₂ (attrs ``temperature_step_rule``).
        observe: probe sets ``{name: data dict}`` (the sampling data's keys, row shapes and
            dtypes; any number of rows): at every ``observe_every``-th sample draw the per-row
            (per-token) losses ℓ_i(w_t) of each set are evaluated inside the compiled loop and
            returned as ``sample_stats["loss_<name>"]`` (dims chain, draw, <name>[,
            <name>_token]; the draw dim is ``observed_draw`` when ``observe_every`` > 1) with
            ``loss_<name>_center`` = ℓ_i(w*). Cost and memory: docs/observables.md;
            estimators: :func:`slt_ppl.bif`, :func:`slt_ppl.susceptibility`,
            :func:`slt_ppl.llc_decomposition` (``sampling.observe``).
        observe_every: k, observe sample draws 0, k, 2k, ... (default 1: every draw).
        **legacy: the old flat keywords, still accepted: ``diag_every``, ``num_segments``,
            ``shared_batches``, ``full_loss`` (→ plan), ``explode``, ``retry_on_divergence``,
            ``max_diverged_fraction`` (→ divergence), ``checkpoint_every``, ``resume`` (→
            checkpoint).

    Returns:
        ``xr.DataTree`` with groups ``sample_stats`` and ``warmup_sample_stats`` (dims chain, draw:
        loss, loss_center, acceptance, grad_norm, distance; diverged_at per chain) and, if kept,
        ``posterior`` (one variable per site, constrained values); attrs carry n, nβ, γ, ε, kernel,
        seed, backend and versions.
    """
    plan, divergence, checkpoint = from_legacy(plan, divergence, checkpoint, legacy)
    settings = RunSettings(
        kernel=kernel, step_size=step_size, batch_size=batch_size, num_chains=num_chains,
        num_draws=num_draws, num_burnin=num_burnin, thin=thin, seed=seed, keep_draws=keep_draws,
        init_jitter=init_jitter, progress=progress, kernel_options=kernel_options, plan=plan,
        divergence=divergence, checkpoint=checkpoint, stream_to=stream_to, devices=devices,
        temperatures=temperatures, observe=observe, observe_every=observe_every,
    )  # fmt: skip
    return run(backend_for(posterior), posterior, settings)


def backend_for(posterior: Any) -> Any:
    """The driver backend of a posterior: torch for Pyro / ``nn.Module`` posteriors, else JAX."""
    if getattr(posterior, "backend", None) == "pyro":
        from slt_ppl.sampling.torch_backend import TorchBackend

        return TorchBackend()
    from slt_ppl.sampling.jax_backend import JaxBackend

    return JaxBackend()
