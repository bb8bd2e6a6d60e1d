"""Automatic step size: a short warm-up that puts the MALA-acceptance diagnostic in its target band.

Furman & Lau (2024, App. D) read the mean MALA acceptance probability of SGLD steps as a step-size check:
0.90–0.95 is the target; below it discretization error inflates λ̂, above it ε can grow. The tuner:

1. starts from ε₀ = 1/ĥ with ĥ the largest curvature of U_B at w* (in the preconditioned metric) found
   by a few power iterations of Hessian-vector products (a Langevin step is stable for ε·ĥ < 4);
2. runs short probe segments (all chains, diagnostic every step), *keeping the chains' state* between
   probes so later probes see the posterior's bulk rather than w* alone;
3. brackets the band by factors of 4, then bisects on log ε, at most ``max_rounds`` probes;
4. takes the largest ε tried whose acceptance lies in the band, else the one closest to it,
5. capped by two accuracy bounds the acceptance cannot see (measured here: on a d = 10 regular
   regression an in-band ε gave λ̂ = 26.6 for λ = 5, acceptance 0.93-0.99):
   - curvature: ε ≤ ``curvature_fraction``/ĥ. For a direction of precision h the Euler-Maruyama chain
     has variance 1/(h(1 − εh/4)), so its share of λ̂ is inflated by εh/4 (7.5% in the stiffest direction at the default 0.3, less in the others). The fraction trades this
     bias against mixing in the flat directions. Measured: on the quick DLN sweep (10⁴ steps) 0.2
     gave errors −11/−12/−6/−17% (under-equilibrated) and 0.5 gave +19/−6/+4/−10%; against exact
     MALA on RRR (3,2,3), n = 2000, 0.5 gave SGLD 3.55 vs MALA 2.95 (3.4 combined se apart) while
     0.2 agreed. 0.3 passes both the sweep (median ≤ 10%, max ≤ 25%) and the MALA agreement tests;
   - gradient noise: minibatch noise adds (ε/2)²·tr Σ_B per step to the injected ε·d, with
     Σ_B = nβ²·Cov_i(∇ℓ_i)/B; ε ≤ 4κd/tr Σ_B keeps it below a fraction κ (``noise_fraction``) of the
     injected noise, i.e. the effective temperature within κ of the target (momentum kernels,
     which refresh only a fraction f of their momentum per step, get ε ≤ 2κfd/tr Σ_B);
6. verifies the choice on a longer probe (``verify_draws``) and halves ε while any chain diverges or
   the acceptance falls below the band there.

For MALA (full batch, Metropolis-corrected) the same search targets its real acceptance rate in
``MALA_BAND`` (Roberts & Rosenthal 1998: 0.574 is optimal for efficiency; any rate is exact).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_ppl.compile_cache import keyed_program
from slt_ppl.estimators._common import TEMPERATURE, temperature_slices
from slt_ppl.estimators.bias import noise_factor
from slt_ppl.posterior import LocalPosterior
from slt_ppl.sampling.loop import ChainState, SegmentRunner
from slt_ppl.sampling.program_key import loss_key, tagged

SG_BAND = (0.90, 0.95)
# first-order relative heating the along-chain adaptation aims at (:func:`adapt_along_chains`)
HEATING_TARGET = 0.015
MALA_BAND = (0.55, 0.80)


def top_curvature(
    posterior: LocalPosterior,
    batch: dict[str, jax.Array],
    iters: int = 20,
    metric: jax.Array | None = None,
) -> float:
    """Largest eigenvalue of G^½·∇²U_B(w*)·G^½ (G = ``metric``, default 1) by power iteration on
    Hessian-vector products."""
    w0 = posterior.center
    root = jnp.ones_like(w0) if metric is None else jnp.sqrt(metric)

    def power(
        v: jax.Array, w: jax.Array, rows: dict[str, jax.Array], root: jax.Array, temps: Any
    ) -> tuple[jax.Array, jax.Array]:
        # w*, nβ, γ, the data and the metric are arguments (not constants) so that equal programs
        # of different posteriors share one program (``compile_cache.keyed_call``)
        post = dataclasses.replace(posterior, center=w, nbeta=temps[0], gamma=temps[1])

        def grad_fn(x: jax.Array) -> jax.Array:
            return jax.grad(lambda u: post.potential(u, rows)[0])(x)

        hv = root * jax.jvp(grad_fn, (w,), (root * v,))[1]
        norm = jnp.linalg.norm(hv)
        return hv / jnp.where(norm > 0, norm, 1.0), jnp.vdot(v, hv)

    v = jax.random.normal(jax.random.PRNGKey(0), w0.shape, w0.dtype)
    v = v / jnp.linalg.norm(v)
    temps = (jnp.asarray(float(posterior.nbeta)), jnp.asarray(float(posterior.gamma)))
    rows = {len(next(iter(batch.values())))}
    key = tagged("top-curvature", loss_key(posterior.loss_fn, w0, batch, rows))
    step = keyed_program(key, power)
    rayleigh = jnp.asarray(0.0)
    for _ in range(iters):
        v, rayleigh = step(v, w0, batch, root, temps)
    value = float(jnp.abs(rayleigh))
    return value if math.isfinite(value) and value > 0 else 1.0


def gradient_moments(
    posterior: LocalPosterior, batch_size: int, max_points: int = 1024, chunk: int = 64
) -> tuple[jax.Array, jax.Array]:
    """Per-coordinate minibatch-gradient statistics of U at w*, from per-datum gradients of at most
    ``max_points`` points, ``chunk`` at a time:

    diag Σ_B = nβ²/B · Var_i(∂ℓ_i) (the minibatch noise; zero for full batches) and
    E[g²] = (nβ·mean ∂ℓ_i)² + diag Σ_B (what an RMSprop preconditioner sees at w*).
    """
    m = min(posterior.n, max_points)
    m = (m // chunk) * chunk or m
    chunk = min(chunk, m)
    data = {k: v[:m] for k, v in posterior.data.items()}
    w0 = posterior.center

    def moments(w: jax.Array, rows: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        def per_datum(row: dict[str, jax.Array]) -> jax.Array:
            one = {k: v[None] for k, v in row.items()}
            return jax.grad(posterior.loss_fn)(w, one)

        def body(carry, chunk_rows):
            g = jax.vmap(per_datum)(chunk_rows)
            return (carry[0] + g.sum(0), carry[1] + jnp.sum(g**2, axis=0)), None

        init = (jnp.zeros_like(w), jnp.zeros_like(w))
        return jax.lax.scan(body, init, rows)[0]

    rows = {k: v.reshape(m // chunk, chunk, *v.shape[1:]) for k, v in data.items()}
    key = tagged("gradient-moments", loss_key(posterior.loss_fn, w0, data, {1}))
    total, total_sq = keyed_program(key, moments)(w0, rows)
    mean = total / m
    var = jnp.maximum(total_sq / m - mean**2, 0.0)
    noise = (
        jnp.zeros_like(var) if batch_size >= posterior.n else posterior.nbeta**2 * var / batch_size
    )
    return noise, (posterior.nbeta * mean) ** 2 + noise


def accuracy_caps(
    runner: SegmentRunner, curvature_fraction: float, noise_fraction: float
) -> tuple[dict[str, float], float]:
    """Upper bounds on ε from the curvature and the minibatch noise, in the kernel's preconditioned
    metric G (G = 1 without a preconditioner; an RMSprop G is evaluated from E[g²] at w*):

    curvature: ε·λ_max(G^½ ∇²U G^½) ≤ ``curvature_fraction``;
    noise:     (ε/2)²·Σ G_i² Σ_B,ii ≤ κ·ε·Σ G_i, i.e. ε ≤ 4κ·Σ G_i / Σ G_i² Σ_B,ii,
    with κ = ``noise_fraction``; momentum kernels get an extra factor f/(2 − f), f = friction (their
    exact OU refresh injects √(f(2 − f)) of fresh noise per step, so the same minibatch noise heats them
    (2 − f)/f times more
    than SGLD; measured: SGHMC at SGLD's ε gave λ̂ = 9.4 where NUTS gave 3.8).
    Returns (caps, top curvature in the metric).
    """
    post, kernel = runner.posterior, runner.kernel
    noise, second = gradient_moments(post, runner.batch_size)
    if kernel.preconditioner is not None:
        pre = kernel.preconditioner
        _, g_diag = pre.update(pre.init(post.center), jnp.sqrt(second))
    else:
        g_diag = jnp.ones_like(post.center)
    sub = {k: v[: min(post.n, 2048)] for k, v in post.data.items()}
    curvature = top_curvature(post, sub, metric=g_diag)
    caps = caps_from_statistics(
        kernel, curvature, float(jnp.sum(g_diag)), float(jnp.sum(g_diag**2 * noise)),
        curvature_fraction, noise_fraction,
    )  # fmt: skip
    return caps, curvature


def caps_from_statistics(
    kernel: Any,
    curvature: float,
    sum_precond: float,
    total_noise: float,
    curvature_fraction: float,
    noise_fraction: float,
) -> dict[str, float]:
    """The cap arithmetic of :func:`accuracy_caps`, shared with the torch backend: ``curvature`` is
    λ_max(G^½∇²UG^½), ``sum_precond`` Σ G_i and ``total_noise`` Σ G_i² Σ_B,ii."""
    caps = {"curvature": curvature_fraction / curvature}
    if not kernel.full_batch and total_noise > 0 and math.isfinite(total_noise):
        cap = 4.0 * noise_fraction * sum_precond / total_noise
        if kernel.proposal == "probe":
            friction = float(kernel.params["friction"])
            cap *= friction / (2.0 - friction)
        caps["gradient_noise"] = cap
    return caps


def _host(x: Any) -> np.ndarray:
    """A NumPy copy of a JAX array or a (possibly CUDA) torch tensor."""
    return np.asarray(x.detach().cpu()) if hasattr(x, "detach") else np.asarray(x)


def _tune_by_acceptance(
    runner: SegmentRunner,
    state: ChainState,
    chain_keys: jax.Array,
    batch_keys: jax.Array,
    *,
    probe_draws: int = 100,
    max_rounds: int = 12,
    band: tuple[float, float] | None = None,
    curvature_fraction: float = 0.3,
    noise_fraction: float = 0.05,
    verify_draws: int = 400,
    max_verify: int = 6,
    safety: float = 0.5,
    caps_fn: Any = None,
) -> tuple[float, dict[str, Any]]:
    """Search ε so the acceptance lands in ``band`` from w*; returns (ε, record of the search, the
    chains' state after the search). The exact kernels' tuner (MALA), and the SG kernels' fallback
    for backends whose records carry no heating statistics."""
    caps_fn = caps_fn or accuracy_caps
    if band is None:
        band = MALA_BAND if runner.kernel.proposal == "metropolis" else SG_BAND
    lo_band, hi_band = band
    target = 0.5 * (lo_band + hi_band)
    caps, curvature = caps_fn(runner, curvature_fraction, noise_fraction)
    eps = 1.0 / curvature
    if runner.kernel.proposal == "metropolis":
        caps = {}  # MALA is exact at any ε: only its acceptance rate matters
    cap = min(caps.values()) if caps else math.inf
    eps = min(eps, cap)
    run = runner.build(probe_draws)
    initial = state
    history: list[tuple[float, float]] = []
    lo = hi = None  # lo: largest ε with acceptance too high; hi: smallest with acceptance too low
    best: tuple[float, float] | None = None
    for round_ in range(max_rounds):
        new_state, rec = run(
            state, chain_keys, batch_keys, jnp.asarray(eps), round_ * probe_draws, diag_every=1
        )
        acc = _host(rec.acceptance)[:, probe_draws // 2 :]
        diverged = _host(new_state.diverged_at) >= 0
        mean_acc = (
            0.0 if diverged.any() else float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0
        )
        history.append((eps, mean_acc))
        state = initial if diverged.any() else new_state
        if lo_band <= mean_acc <= hi_band or (mean_acc > hi_band and eps >= cap):
            best = (eps, mean_acc)
            break
        if mean_acc > hi_band:
            lo = eps
            eps = min(cap, eps * 4.0 if hi is None else math.sqrt(eps * hi))
        else:
            hi = eps
            eps = eps / 4.0 if lo is None else math.sqrt(lo * eps)
    if best is None:
        in_band = [h for h in history if lo_band <= h[1] <= hi_band]
        best = (
            max(in_band)
            if in_band
            else min(history, key=lambda h: (abs(h[1] - target), -h[0]) if h[1] > 0 else (9, 0))
        )
    # The acceptance is measured near w*; on singular models the curvature grows along the valleys the
    # chains later explore, so the acceptance-derived ε gets a safety factor.
    chosen = min(best[0] * safety, cap) if best[0] < cap else cap
    # Verify on a longer probe from the tuned state: chains that wander into sharper regions (the
    # valleys of singular models) must neither diverge nor fall below the band; halve ε until they don't.
    verify = runner.build(verify_draws)
    verified: list[tuple[float, float, bool]] = []
    for round_ in range(max_verify):
        new_state, rec = verify(
            state,
            chain_keys,
            batch_keys,
            jnp.asarray(chosen),
            (max_rounds + round_) * verify_draws,
            diag_every=1,
        )
        diverged = bool((_host(new_state.diverged_at) >= 0).any())
        acc = _host(rec.acceptance)
        mean_acc = float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0
        verified.append((chosen, mean_acc, diverged))
        if not diverged and mean_acc >= lo_band:
            break
        state = state if diverged else new_state
        chosen = chosen / 2.0
    record = {
        "method": "bisection on log step size, MALA-acceptance target band",
        "band": list(band),
        "initial_curvature": curvature,
        "history": [[float(e), float(a)] for e, a in history],
        "acceptance_choice": float(best[0]),
        "acceptance_at_choice": float(best[1]),
        "in_band": bool(lo_band <= best[1] <= hi_band),
        "caps": {k: float(v) for k, v in caps.items()},
        "chosen": float(chosen),
        "binding": "acceptance"
        if best[0] < cap and len(verified) == 1
        else ("verification" if len(verified) > 1 else min(caps, key=caps.get)),
        "verification": [[float(e), float(a), bool(d)] for e, a, d in verified],
    }
    return float(chosen), record, state


# -- along-chain adaptation (SG kernels) ---------------------------------------------------------


def heating_per_chain(
    rec: Any, step_size: float | np.ndarray, nbeta: np.ndarray, kernel: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(first-order heating of λ̂, λ̂) per chain from one window's records (seam 5):

    heat = (ε_c/8)·(mean laplacian + ν·mean grad_noise) (ε_c: the chain's step size, ε/f_c at
    temperature f_c), ν = 1 for SGLD-type kernels and
    the kernel's noise factor (``estimators.bias.noise_factor``: (2 − f)/f for SGHMC, 0 for SGNHT,
    whose thermostat absorbs gradient noise);
    λ̂ = nβ_c·mean(L_B(w_t) − L_B(w*)) over the window's second half.
    """
    lam = _window_llc(rec, nbeta)
    nu = noise_factor(kernel.name, kernel.params)
    lap = np.nanmean(_host(rec.laplacian), axis=1)
    noise = np.nanmean(_host(rec.grad_noise), axis=1)
    return step_size / 8.0 * (lap + nu * noise), lam


def adapt_along_chains(
    runner: SegmentRunner,
    state: ChainState,
    chain_keys: jax.Array,
    batch_keys: jax.Array,
    start_eps: float,
    *,
    target: float | None = None,
    window: int = 100,
    diag_every: int = 10,
    min_windows: int = 4,
    max_windows: int = 20,
    growth: float = 2.0,
    shrink: float = 0.25,
    min_lambda: float = 0.05,
    offset: int = 0,
    robust: bool = False,
) -> tuple[float, dict[str, Any], ChainState]:
    """Adapt ε during burn-in from the heating measured where the chains go, then freeze it.

    At a singular center the curvature is ≈ 0 where the chains start and grows along the valleys
    they explore, and the minibatch-gradient noise grows with it, so a step size tuned at w* heats
    the chains later (1.7–2× the exact λ on reduced-rank regressions). Here the chains run windows
    of ``window`` draws from w*, keeping their state; after each window the first-order heating of
    λ̂ (:func:`heating_per_chain`, from the Hutchinson Laplacian and the half-batch gradient noise
    recorded every ``diag_every`` draws) is compared with the window's λ̂ and ε is rescaled so the
    relative heating approaches ``target`` (never by more than ×``growth`` or ×``shrink`` per
    window; λ̂ is floored at ``min_lambda`` while the chains are still at w*). A window in which a
    chain diverges is discarded and ε cut by 4. The windows stop after at least ``min_windows`` once
    ε has settled (the last two rescalings within ×0.8–1.25) and neither λ̂ nor the mean squared
    distance ‖w − w*‖² has kept rising (the last window's value is not above the one two windows
    earlier by more than 2 combined standard errors of the chain means), or after ``max_windows``.
    ``offset`` is the first draw index (keys are folded with it; successive stages use disjoint
    ranges). The chains' state is returned so the run
    continues from where the adaptation left them: the windows are burn-in.

    ``target`` (default ``HEATING_TARGET``) is the first-order relative heating kept at the chosen
    ε: halving ε would then move λ̂ by about target/2 (the verdict's bias check allows 5 %). It was
    3 % until session 5: the windows' λ̂ is noisy (one window of RRR 3-3-3 r = 2 read 2.1-4.5 for an
    exact 3.57), so ε landed at up to 1.6× the target (relative heating 4.7 % at seed 0), and a
    run heated by ≈ 5 % plus a realization 2-3 se high (its se underestimates the spread over
    seeds there: sd 0.17 over seven realizations for a reported 0.09-0.14) read 4.06 for 3.57,
    labelled healthy. At 1.5 % the same seed read 3.92 ± 0.11 (first-order heating 0.08 instead of
    0.19; the drop of λ̂, 0.13 on the same sampling keys, matches the estimate's 0.11).
    With several temperatures (``runner.nbeta_factors``, chain c at nβ·f_c stepping at ε/f_c) the
    windows look at the first temperature's chains only (heating, λ̂, spread and acceptance; a
    divergence in any chain still cuts ε), whose λ̂ the result reports as ``llc``, so they choose
    the ε a single-temperature run with the same seed would:
    at ε/f the Laplacian part of the heating is the same at every temperature and the minibatch
    part, larger at f > 1, cancels in λ̂₂ (``sampling.temperatures``); every temperature's own
    heating is still checked by the verdict. Tuned on all chains, ε came out 15–35 % smaller on
    the DLN 4-3-3-4 at rank 1 (4.6–6.2e-7 vs 7.3–7.9e-7 alone) and both temperatures' λ̂ read
    4–7 % low, the chains not yet spread along the valleys (session 7).
    ``robust``: a window's heating is the trimmed mean over chains instead of the mean
    (:func:`window_heating`; the tiny-model burn-in, :func:`adapt_burnin`).
    Metropolis-corrected kernels (MALA) have no heating; for them the same windows keep the
    acceptance rate in ``MALA_BAND`` where the chains go (tuned at w* alone, MALA's acceptance fell to 0.33 in the valleys of a rank-0
    reduced-rank regression).
    """
    post = runner.posterior
    target = HEATING_TARGET if target is None else target
    exact = runner.kernel.proposal == "metropolis"
    factors = getattr(runner, "nbeta_factors", None)
    num_chains = _host(state.diverged_at).shape[0]
    chain_factor = np.ones(num_chains) if factors is None else _host(factors)
    nbeta = post.nbeta * chain_factor  # chain c steps at ε/f_c (``sampling.temperatures``)
    tuned = chain_factor == chain_factor[0]  # ε is tuned on the first temperature's chains
    num_tuned = max(1, int(tuned.sum()))
    run = runner.build(window)
    eps = float(start_eps)
    history: list[dict[str, float]] = []
    lams: list[tuple[float, float]] = []
    spreads: list[tuple[float, float]] = []
    settled = 0
    steps = 0
    for k in range(max_windows):
        new_state, rec = run(
            state,
            chain_keys,
            batch_keys,
            jnp.asarray(eps),
            offset + k * window,
            diag_every=diag_every,
        )
        steps += window * getattr(runner, "thin", 1)
        if bool((_host(new_state.diverged_at) >= 0).any()):
            history.append({"step_size": eps, "diverged": 1.0})
            eps *= 0.25
            settled = 0
            continue
        state = new_state
        acc = _host(rec.acceptance)[tuned]
        mean_acc = float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan
        if exact:  # Metropolis-corrected: only the acceptance rate matters
            heat, lam = np.zeros(num_tuned), _window_llc(rec, nbeta)[tuned]
            rel = 0.0
            factor = _acceptance_factor(mean_acc)
        else:
            heat, lam = heating_per_chain(rec, eps / chain_factor, nbeta, runner.kernel)
            heat, lam = heat[tuned], lam[tuned]
            rel = window_heating(heat, robust) / max(float(np.nanmean(lam)), min_lambda)
            factor = growth if not rel > 0 else min(growth, max(shrink, target / rel))
            if mean_acc < SG_BAND[0]:  # the MALA-acceptance diagnostic as a second guard
                factor = min(factor, 0.5)
        lam_mean = float(np.nanmean(lam))
        lams.append((lam_mean, float(np.nanstd(lam)) / math.sqrt(num_tuned)))
        distance = _host(rec.distance)[tuned]
        dist2 = np.nanmean(distance[:, distance.shape[1] // 2 :] ** 2, axis=1)
        spreads.append((float(np.nanmean(dist2)), float(np.nanstd(dist2)) / math.sqrt(num_tuned)))
        history.append(
            {
                "step_size": eps,
                "llc": lam_mean,
                "heating": window_heating(heat, robust),
                "heating_mean": float(np.nanmean(heat)),
                "relative_heating": rel,
                "acceptance": mean_acc,
            }
        )
        settled = settled + 1 if 0.8 <= factor <= 1.25 else 0
        steady = _stopped_rising(lams) and _stopped_rising(spreads)
        if k + 1 >= min_windows and settled >= 2 and steady:
            break
        eps *= factor
    record = {
        "method": "along-chain adaptation of the first-order heating (burn-in windows)",
        "target_relative_heating": target,
        "heating_over_chains": f"trimmed mean ({TRIM_FRACTION:g} each end)" if robust else "mean",
        "window_draws": window,
        "windows": history,
        "settled": bool(settled >= 2 and _stopped_rising(lams) and _stopped_rising(spreads)),
        "adaptation_steps": steps,
        "chosen": eps,
    }
    return eps, record, state


TRIM_FRACTION = 0.125


def window_heating(heat: np.ndarray, robust: bool) -> float:
    """A window's first-order heating from its per-chain values: the mean, or with ``robust``
    the trimmed mean over chains (:func:`trimmed_mean`, ``TRIM_FRACTION`` of the chains dropped at
    each end: 2 of 16 at the tiny models' default; with fewer than 8 chains, a user's choice,
    nothing is dropped and it is the mean).

    Why robust for tiny models: at the crossing y = x·w1·w2² (n = 1000) the posterior's mean
    Laplacian is dominated by a thin, stiff arm (w1 ≈ 0, |w2| > 3: 0.2 % of the mass, 70 % of
    E[ΔU], by 1-D quadrature), where a chain that enters stays ≈ 2/(εγ) steps. One such chain of 16
    raised a window's mean heating 10-60×, ε was cut, the chain stayed longer, and the burn-in spiralled
    from ε = 4.2e-5 to 4.0e-7 (R-hat 1.12, ESS 84). The first-order formula also overstates what
    such an arm does to λ̂: at ε = 4.2e-5, where it predicted 8-40 % heating, a run 30 relaxation times
    long read 0.112 ± 0.007 for the exact 0.104. The verdict still checks the whole run's mean heating
    (``estimators.bias``) and the tamed steps.
    Why trimmed and not the median (session 10's choice): where many chains carry the heating the
    median is optimistic. On x·w1·w2 (n = 1000, RMSprop-SGLD) the burn-in windows' mean heating was
    2-8× their median, ε settled at 1.57e-4 and λ̂ read 0.224 ± 0.012 for the exact 0.196 (flagged by
    the bias check). The trimmed mean of the same windows sits at 1.4-2.1× the median and, like the
    median, drops a stuck chain (on x·w1·w2², 1.1-3× below the mean of its windows)."""
    return trimmed_mean(heat, TRIM_FRACTION) if robust else float(np.nanmean(heat))


def trimmed_mean(values: np.ndarray, fraction: float) -> float:
    """Mean of the finite values after dropping ⌊fraction·m⌋ of the m at each end (m ≥ 1).

    Written here rather than ``scipy.stats.trim_mean`` so that NaN (a chain without a heating
    estimate) is dropped first, as ``np.nanmean`` does for the plain mean."""
    v = np.sort(np.asarray(values, dtype=float).ravel())
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    k = int(fraction * v.size)
    return float(np.mean(v[k : v.size - k]))


def adapt_burnin(
    runner: SegmentRunner,
    state: ChainState,
    chain_keys: jax.Array,
    batch_keys: jax.Array,
    step_size: float,
    num_draws: int,
    *,
    offset: int | None = None,
    max_windows: int = 10,
    pooled: bool = False,
) -> tuple[float, dict[str, Any], ChainState]:
    """Second adaptation stage on the thinned runner (``auto_thin`` chose thin > 1): the burn-in
    itself, as up to ``max_windows`` windows of num_draws/10 draws (the default burn-in length
    num_draws·thin in all), ε rescaled toward the heating target after each, frozen after.

    Why: the first stage (:func:`tune_step_size`) runs windows of single steps; on a rank-0 reduced-
    rank regression its chains were still spreading along the valleys when it stopped, and over the
    thinned run they went on to regions of 7× the Laplacian and gradient noise, heating λ̂ from the
    exact 5.82 to 7.58 (first-order estimate of the heating 1.8). Adapting over the whole burn-in
    lets ε follow the chains out. Draw indices start at ``offset`` (disjoint from the first stage;
    None: draw 10⁶, or the latest draw whose step index draw·thin still fits the loop's int32 step
    counter: at thin 2500 (tiny models at two temperatures) 10⁶·thin wrapped negative, so a chain
    that diverged in a window was not seen as diverged, kept stepping from its frozen position to
    |w| ≈ 10²⁴ and was reported dead at step 0 of the run; session 8).

    ``pooled`` (the driver sets it for tiny models, ``defaults.is_tiny``): the frozen ε is
    :func:`pooled_step_size` of the windows instead of the last window's rescaling, and a window's
    heating is the chains' trimmed mean (:func:`window_heating`).
    """
    window = max(10, num_draws // 10)
    if offset is None:
        thin = int(getattr(runner, "thin", 1))
        offset = max(0, min(10**6, (2**31 - 1) // thin - max_windows * window - 1))
    eps, record, state = adapt_along_chains(
        runner, state, chain_keys, batch_keys, step_size, window=window, diag_every=2,
        min_windows=3, max_windows=max_windows, offset=offset, robust=pooled,
    )  # fmt: skip
    if pooled:
        record["last_window_choice"] = eps
        eps = pooled_step_size(record, eps)
        record["chosen"] = eps
        record["choice"] = "pooled over the windows (tiny model)"
    return eps, record, state


def pooled_step_size(record: dict[str, Any], fallback: float, min_lambda: float = 0.05) -> float:
    """ε = target·Σ_k max(λ̂_k, min_lambda) / Σ_k (heat_k/ε_k) over the windows of an
    :func:`adapt_along_chains` record after the first (the first-order heating is linear in ε, so
    heat_k/ε_k estimates the heating per unit step of window k); ``fallback`` when fewer than two
    such windows. Never above half the smallest ε at which a window diverged.

    Why: the last window's rescaling target/rel_k carries one window's noise. On the crossing
    y = x·w1·w2² (n = 1000, RMSprop-SGLD, thin 1250) the per-window choices ranged 4.8e-5–1.1e-3,
    the last one gave ε = 1.6e-4 (R-hat 1.13, ESS 24: unhealthy), the pooled 3.0e-4 (healthy,
    0.080 ± 0.015 for an exact 0.104).
    """
    target = float(record["target_relative_heating"])
    windows = [w for w in record["windows"] if "llc" in w][1:]
    diverged = [w["step_size"] for w in record["windows"] if w.get("diverged")]
    per_step = sum(w["heating"] / w["step_size"] for w in windows)
    if len(windows) < 2 or not (per_step > 0 and math.isfinite(per_step)):
        return float(fallback)
    eps = target * sum(max(w["llc"], min_lambda) for w in windows) / per_step
    if diverged:
        eps = min(eps, 0.5 * min(diverged))
    return float(eps)


def _window_llc(rec: Any, nbeta: np.ndarray) -> np.ndarray:
    """λ̂ per chain over the window's second half."""
    half = _host(rec.loss).shape[1] // 2
    return nbeta * np.nanmean((_host(rec.loss) - _host(rec.loss_center))[:, half:], axis=1)


def _acceptance_factor(acceptance: float) -> float:
    """Rescaling of a Metropolis kernel's ε toward ``MALA_BAND``: ×0.6 below, ×1.5 above."""
    if not math.isfinite(acceptance) or acceptance < MALA_BAND[0]:
        return 0.6
    return 1.5 if acceptance > MALA_BAND[1] else 1.0


def _stopped_rising(lams: list[tuple[float, float]]) -> bool:
    """λ̂ of the last window is not above the one two windows earlier by more than 2 combined se."""
    if len(lams) < 3:
        return False
    (now, se_now), (before, se_before) = lams[-1], lams[-3]
    return now - before <= 2.0 * math.hypot(se_now, se_before)


def tune_step_size(
    runner: SegmentRunner,
    state: ChainState,
    chain_keys: jax.Array,
    batch_keys: jax.Array,
    *,
    caps_fn: Any = None,
    curvature_fraction: float = 0.3,
    noise_fraction: float = 0.05,
    start_fraction: float = 0.1,
    **kwargs: Any,
) -> tuple[float, dict[str, Any], ChainState | None]:
    """Automatic ε; returns (ε, record of the search, the chains' state after it or None).

    SG kernels whose runner records heating statistics: ε starts at ``start_fraction`` × the
    accuracy caps at w* (:func:`accuracy_caps`) and is then adapted along the chains
    (:func:`adapt_along_chains`); the returned state continues the run (the windows were burn-in).
    MALA, and backends without heating statistics: the acceptance search from w*
    (:func:`_tune_by_acceptance`), state None (the run starts from w* again).
    ``caps_fn`` defaults to :func:`accuracy_caps`; the torch backend passes its own.
    """
    caps_fn = caps_fn or accuracy_caps
    kernel = runner.kernel
    # runners of other backends say whether they record the heating statistics (seam 2)
    along = getattr(runner, "records_heating", isinstance(runner, SegmentRunner))
    if kernel.proposal != "metropolis" and along:
        caps, curvature = caps_fn(runner, curvature_fraction, noise_fraction)
        start = start_fraction * min(caps.values())
        eps, record, new_state = adapt_along_chains(
            runner, state, chain_keys, batch_keys, start, **kwargs
        )
        record.update(
            {
                "caps_at_center": {k: float(v) for k, v in caps.items()},
                "initial_curvature": curvature,
            }
        )
        return eps, record, new_state
    eps, record, searched = _tune_by_acceptance(
        runner, state, chain_keys, batch_keys, caps_fn=caps_fn,
        curvature_fraction=curvature_fraction, noise_fraction=noise_fraction,
    )  # fmt: skip
    if kernel.proposal != "metropolis" or not along:
        return eps, record, None
    eps, windows, new_state = adapt_along_chains(
        runner, searched, chain_keys, batch_keys, eps, **kwargs
    )
    record["along_chains"] = windows
    record["chosen"] = eps
    return eps, record, new_state


def warn_minibatch_heating(tree: Any, limit: float = 0.05) -> float:
    """Warn (``HealthWarning``) when minibatch-gradient noise heats a run whose ε the user gave.

    The noise part of the first-order heating, (ε/8)·ν·E[tr(G·Σ_B)] (:func:`heating_per_chain`),
    is compared with λ̂ ≈ nβ·E[L_B(w_t) − L_B(w*)] of the same draws, at every temperature of the
    run with its own ε and nβ (``estimators._common.temperature_slices``); above ``limit`` (5 %)
    the warning names ε, the temperature and the batch size. Measured: n = 20 000, batch 64,
    ε = 2e-5 gave λ̂ = 6.57 for λ = 5 with every diagnostic passing. Returns the largest relative
    noise heating (NaN if not recorded).
    """
    import warnings

    from slt_ppl.errors import HealthWarning

    stats, attrs = tree["sample_stats"], dict(tree.attrs)
    if "grad_noise" not in stats or int(attrs.get("batch_size", 0)) >= int(attrs["n"]):
        return math.nan
    if not np.isfinite(stats["grad_noise"].values).any():  # no diagnostic draw kept: nothing to say
        return math.nan
    nu = noise_factor(str(attrs.get("kernel", "")), json.loads(attrs.get("kernel_params", "{}")))
    slices = temperature_slices(stats, attrs) if TEMPERATURE in stats.dims else [(stats, attrs)]
    found = [_noise_heating(part, a, nu) for part, a in slices]
    rel, eps, heat, lam, factor = max(found, key=lambda entry: entry[0])
    if math.isfinite(rel) and rel > limit:
        where = "" if factor is None else f" (the chains at temperature factor {factor:g})"
        warnings.warn(
            f"minibatch gradient noise heats the chains{where}: at step_size {eps:.3g} and "
            f"batch_size {attrs['batch_size']} it adds about {100 * rel:.0f}% to the LLC "
            f"(first-order estimate (ε/8)·tr Σ_B = {heat:.3g} vs λ̂ ≈ {lam:.3g}); use a larger "
            "batch_size or a smaller step_size, or step_size='auto'",
            HealthWarning,
            stacklevel=4,
        )
    return rel if math.isfinite(rel) else math.nan


def _noise_heating(stats: Any, attrs: dict, nu: float) -> tuple[float, float, float, float, Any]:
    """(relative noise heating, ε, (ε/8)·ν·E[tr Σ_B], λ̂ ≈ nβ·E[L_B(w_t) − L_B(w*)], temperature
    factor or None) of one temperature's draws; −inf for the ratio when it is not finite."""
    eps = float(attrs["step_size"])
    heat = eps / 8.0 * nu * float(np.nanmean(stats["grad_noise"].values))
    lam = float(attrs["nbeta"]) * float(np.nanmean((stats["loss"] - stats["loss_center"]).values))
    rel = heat / max(abs(lam), 1e-12)
    return (
        (rel if math.isfinite(rel) else -math.inf),
        eps,
        heat,
        lam,
        attrs.get("temperature_factor"),
    )
