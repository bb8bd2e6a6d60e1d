"""The default kernel, chosen by measured accuracy and cost.

``sample(posterior)`` uses ``kernel="auto"``, resolved here once per run and recorded in the result's
attrs (``kernel`` and ``kernel_choice``, the reason). Measured against the exact value of the same
localized posterior (quadrature or NUTS; 4 chains, ε automatic, thin automatic, 2-core CPU):

| model (exact) | SGLD, batch 256 | full-batch MALA |
|---|---|---|
| RRR (5,3,5) at A = B = 0, n = 10⁴ (5.82) | 5.90 ± 0.14 (60 s) | 5.46 ± 0.22, acceptance 0.39 (29 s) |
| crossing y = w1·w2·x, n = 1000 (0.196) | 0.200 ± 0.019 (130 s) | 0.126 ± 0.043, ESS 89 (26 s) |

MALA is exact per step but, with one step size for the whole posterior, it stalls in the valleys of
singular models where the curvature across the valley grows; SGLD with ε adapted along the chains
(``sampling.stepsize``) and its heating checked by the verdict matched the exact values. So "auto" is
SGLD with minibatches of ``DEFAULT_BATCH_SIZE`` (the full data when n is smaller). MALA, HMC and
NUTS remain available by name, and ``slt_ppl.reference`` uses NUTS as the exact reference.
"""

from __future__ import annotations

from typing import Any

DEFAULT_BATCH_SIZE = 256


def choose_kernel(posterior: Any, kernel: Any, batch_size: int | None) -> tuple[Any, str]:
    """(kernel, reason): ``kernel`` itself unless it is "auto", which is SGLD (module docstring)."""
    if not (isinstance(kernel, str) and kernel == "auto"):
        name = kernel if isinstance(kernel, str) else getattr(kernel, "name", "custom")
        return kernel, f"{name} (given)"
    batch = min(int(posterior.n), batch_size or DEFAULT_BATCH_SIZE)
    return "sgld", (
        f"sgld (auto: minibatches of {batch}, ε adapted along the chains; measured more accurate "
        "than full-batch MALA at singular centers, see slt_ppl.sampling.defaults)"
    )


WORK_BUDGET = 2e10  # row·parameter gradient evaluations a default run may spend on thinning
MAX_STEPS = 250_000  # and at most this many steps per chain (per-step overhead of tiny models)
RELAXATIONS = 10  # recorded draws should span this many relaxation times of the slowest mode
# Tiny models: a step whose minibatch gradient is at most TINY_STEP_COST row·parameter products per
# chain costs its fixed overhead, not its FLOPs, so these get TINY_MAX_STEPS (``step_cap``).
# 2048 since session 17 (was 1024; ``is_tiny``), so that the 3-unit tanh network (256·6) is tiny.
TINY_STEP_COST = 2048
TINY_MAX_STEPS = 10_000_000
DEFAULT_NUM_CHAINS = 4
TINY_NUM_CHAINS = 16  # a tiny model's default chain count (``choose_num_chains``)


def is_tiny(batch_size: int, dim: int) -> bool:
    """Whether a step's gradient is tiny: batch_size·d ≤ ``TINY_STEP_COST`` row·parameter products
    per chain (``step_cap``; the driver also pools the burn-in's ε estimate for these,
    ``stepsize.adapt_burnin``).

    Why 2048 (session 17; 1024 before): fixed-ε SGLD at batch 256 on the tanh networks of the
    singular suite (``benchmarks/step_cost_threshold.py``, 2-core CPU, compilation excluded), µs
    per step of 16 chains at batch·d = 512, 1 024, 1 536, 2 048, 3 072, 4 608, 6 144: 44, 39, 56,
    61, 70, 80, 116. Up to 2048 a step costs within 1.4× of the d = 2 step; the rise is gradual
    (1.6× at 3 072, 1.8× at 4 608, 2.6× at 6 144), so the threshold is set where it takes in the
    3-unit tanh (d = 6: 1 536) and keeps out every RRR (≥ 4 608) and the DLN (8 448) of the
    suites. At 1024 the 3-unit tanh ran with 4 chains and the step cap ``MAX_STEPS``, its thin
    chosen before the burn-in cut ε ≈ 5×: 0.766 ± 0.057 for an exact 0.963, "healthy"; as a tiny
    model 0.972 ± 0.019 (16 chains, thin 5000; ≈ 25× the wall time; docs/validation.md)."""
    return int(batch_size) * int(dim) <= TINY_STEP_COST


def choose_num_chains(
    num_chains: int | None, batch_size: int, dim: int, external: bool = False
) -> tuple[int, str]:
    """(chains per temperature, why): ``num_chains`` itself when given; otherwise
    ``TINY_NUM_CHAINS`` for a tiny model (``is_tiny``) sampled by slt_ppl's own kernels, else
    ``DEFAULT_NUM_CHAINS``.

    Why: a step of a tiny model costs its fixed overhead, not its FLOPs, so chains run side by side
    almost free (crossing y = x·w1^p1·w2^p2, d = 2, batch 256, JAX on a 2-core CPU: 24 µs per step
    at 8 chains, 45 µs at 32), while the precision of λ̂, and more so of λ̂₂ (whose variance is
    ≈ 5·Var_β(nβL_n)/ESS ≈ 5λ/ESS), is set by the draws of all chains together. With 4 chains the
    two-temperature λ̂₂ of the w2⁶ crossings (λ = 1/6, n = 5000) had se 7-24 % of λ; the
    measurements behind ``TINY_NUM_CHAINS`` are in docs/validation.md (session 8).

    Session 17, default runs of the crossing y = x·w1·w2 (n = 1000, exact 0.196, thin 5000 at both
    counts, the two runs of a seed side by side): 16 chains 0.201 ± 0.009 and 0.196 ± 0.009 in 81
    and 79 s of sampling, 4 chains 0.190 ± 0.015 and 0.230 ± 0.013 in 72 and 75 s: 1.07× the time
    for a 2.2× smaller se²·time; a fixed-ε step of that crossing takes 10.5 µs at 16 chains, 6.5
    at 4. Not so for tanh networks (``benchmarks/step_cost_threshold.py``): 45 µs against 9.5 at
    d = 2, 58 against 12 at d = 6, because 256·units·chains tanh evaluations (and their derivatives)
    per step cost more than the overhead; batch·d does not see that. The 3-unit tanh's rows were
    validated at 16 chains (docs/validation.md, session 17).
    """
    if num_chains is not None:
        return int(num_chains), "given"
    if not external and is_tiny(batch_size, dim):
        return TINY_NUM_CHAINS, (
            f"{TINY_NUM_CHAINS} (tiny model: batch·d = {int(batch_size) * int(dim)} ≤ "
            f"{TINY_STEP_COST}, a step costs its overhead, so more chains are almost free)"
        )
    return DEFAULT_NUM_CHAINS, f"{DEFAULT_NUM_CHAINS} (default)"


FULL_LOSS_SHARE = 0.1  # a draw's full-data loss may cost this share of the draw's steps


def choose_full_loss(
    full_loss: bool | None, minibatch: bool, batch_size: int, dim: int, n: int, thin: int
) -> tuple[bool, str]:
    """(record the full-data loss L_n(w_t) at every draw?, why): ``full_loss`` itself when given
    (False for a run without minibatches: its trace already is L_n); otherwise yes for a tiny
    model (``is_tiny``) whose full-data loss costs at most ``FULL_LOSS_SHARE`` of a draw's steps
    (n ≤ 0.1·thin·batch_size).

    Why: a minibatch run otherwise records the paired trace L_B(w_t) − L_B(w*), whose minibatch
    noise is shared by all chains (one batch per step), so it does not average out over chains:
    on the crossing y = x·w2 (n = 1000) 16 chains gave se 0.021 where 4 gave 0.024. The full-data
    trace has no such noise, and the estimand nβ·(E[L_n(w)] − L_n(w*)) is the same. On a tiny model
    with automatic thinning (thin ≥ 1000 on the crossings) one full-data evaluation per draw costs
    well under one step's overhead per step. Measured in docs/validation.md (session 8).
    """
    if not minibatch:
        return False, "full batch: the trace is L_n"
    if full_loss is not None:
        return bool(full_loss), "given"
    cheap = int(n) <= FULL_LOSS_SHARE * int(thin) * int(batch_size)
    if is_tiny(batch_size, dim) and cheap:
        return True, (
            f"full-data loss (tiny model; n = {n} ≤ {FULL_LOSS_SHARE:g}·thin·batch = "
            f"{FULL_LOSS_SHARE * thin * batch_size:.3g})"
        )
    return False, "paired minibatch loss L_B(w) − L_B(w*)"


def step_cap(batch_size: int, dim: int) -> tuple[int, str]:
    """(most steps per chain a default run may take, why): ``TINY_MAX_STEPS`` when a step's gradient
    is tiny (batch_size·d ≤ ``TINY_STEP_COST`` per chain), ``MAX_STEPS`` otherwise.

    Why: on the crossings y = x·w1^p1·w2^p2 (d = 2, batch 256, n = 1000) the slowest relaxation
    2/(εγ) is 1.6–3·10⁵ steps, so ``MAX_STEPS`` left the draws 0.4–0.8 relaxation times long
    (R-hat 1.06–1.22, ESS 15–67: unhealthy, though accurate); 10⁶ was not enough (healthy, but
    0.010 ± 0.029 for an exact 0.104), 2.5·10⁶ passed (docs/validation.md, session 6). Session 10:
    10⁷, because the burn-in's ε of y = x·w1·w2², no longer spiralling down (``stepsize.window_heating``),
    settles at 1.6-2.2e-5, where 2/(εγ) ≈ 7·10⁵ steps: the draws of thin 1250 spanned 1.8 of them
    (R-hat 1.076), of thin 5000 seven (R-hat 1.021, ESS 562, 0.103 ± 0.010 for an exact 0.104,
    229 s). Only runs whose relaxation needs it take the extra steps (thin = 10 relaxation times
    when that is less). A step
    costs its overhead there (4 chains, d = 2, load 9–10 on the shared 2-core box: 34 µs at batch
    256, 23 µs at batch 1000), so a default run went from 30–45 s to 2–5 min at load 10–30.
    Full-batch SGLD was measured as well and mixed no better (its tuned ε was no larger: the
    Laplacian, not the minibatch noise, sets the heating there). Every RRR (d ≥ 18, batch 256:
    ≥ 4 608) and DLN (d = 33: 8 448) of the validation suites stays above the threshold, so their
    runs are unchanged; the 3-unit tanh (d = 6: 1 536) is tiny since session 17 (``is_tiny``).
    """
    cost = int(batch_size) * int(dim)
    if is_tiny(batch_size, dim):
        return TINY_MAX_STEPS, (
            f"tiny model: batch·d = {cost} ≤ {TINY_STEP_COST}, step cap {TINY_MAX_STEPS:.3g}"
        )
    return MAX_STEPS, f"step cap {MAX_STEPS:.3g}"


def auto_thin(
    posterior: Any,
    step_size: float,
    batch_size: int,
    num_chains: int,
    num_draws: int,
    kernel_state: Any = None,
    max_steps: int | None = None,
    kernel_params: dict[str, Any] | None = None,
    coldest: float = 1.0,
) -> tuple[int, str]:
    """Steps per recorded draw so that the draws span ``RELAXATIONS`` relaxation times of the slowest
    mode, within ``WORK_BUDGET``; returns (thin, reason).

    Every direction of the localized posterior has precision ≥ γ, and a Langevin chain of step ε
    relaxes a direction of precision γ in τ = 2/(ε·γ) steps (the Euler–Maruyama chain of an
    Ornstein–Uhlenbeck process). At singular centers the valleys are exactly such directions: on the
    crossing y = w1·w2·x (n = 1000, γ = 0.145) MALA's ε = 1e-3 gives τ ≈ 1.4·10⁴ steps, and 2 000
    steps of it read λ̂ = 0.146 for an exact 0.196. For preconditioned kernels ε is scaled by the
    smallest diagonal G (``slowest_preconditioner``; until session 13 the median, which let the
    draws of y = x·w2³ span 2 % of a relaxation), read from the chains' RMSprop state when given,
    with the decay α and damping δ of ``kernel_params`` (the driver sets δ = √γ,
    ``preconditioners.localized_delta``, so G ≤ 1/√γ; the paper's 1e-5 overstated G 10⁵-fold at a
    singular center). The cost of a step
    is taken as batch_size·d per chain; the thinning is capped so that burn-in plus draws (2·thin·
    num_draws steps) stay within ``WORK_BUDGET`` and ``max_steps`` per chain (None: ``step_cap``,
    which gives tiny models more steps), and is never below 1 (large models keep the run length
    the user asked for). A tiny model (``is_tiny``) is not charged per chain: its step costs the
    same overhead at 4 or 32 chains (``choose_num_chains``), so only the step cap binds there.

    Several temperatures (``coldest`` = the largest nβ factor f > 1): the coldest chains step at
    ε/f (``sampling.temperatures``), so τ is computed at ε/f and the step cap is f × the single-
    temperature cap, so that they relax as far as a single run's chains (the work budget, which
    counts every chain, is unchanged). At the single cap the DLN 4-3-3-4 at rank 1 (d = 33,
    n = 5000; τ ≈ 4·10⁶ steps at ε/2, thin 125) read λ̂₂ 4.93-5.28 for an exact 5.17, two of three
    seeds unhealthy (ESS 64; ‖w − w*‖² still rising); with it (thin 147, where the work budget
    binds) 5.18-5.50, all three healthy, for 1.2-1.5× the wall time (session 7).
    """
    import math

    gamma = float(posterior.gamma)
    coldest = max(1.0, float(coldest))
    g_min = slowest_preconditioner(kernel_state, kernel_params or {})
    eps = float(step_size) / coldest * g_min
    if not (gamma > 0 and eps > 0 and math.isfinite(eps)):
        tau = math.inf
    else:
        tau = 2.0 / (eps * gamma)
    if max_steps is None:
        max_steps, cap_reason = step_cap(batch_size, int(posterior.dim))
    else:
        cap_reason = f"step cap {max_steps:.3g}"
    if coldest > 1.0:
        max_steps = int(max_steps * coldest)
        cap_reason += f" × {coldest:g} (the coldest temperature's chains step at ε/{coldest:g})"
    steps = max_steps
    if not is_tiny(batch_size, int(posterior.dim)):  # a tiny step costs its overhead, not FLOPs
        steps = min(WORK_BUDGET / (float(batch_size) * float(posterior.dim) * num_chains), steps)
    thin_max = max(1, int(steps / (2.0 * num_draws)))
    wanted = math.inf if not math.isfinite(tau) else math.ceil(RELAXATIONS * tau / num_draws)
    thin = int(max(1, min(wanted, thin_max)))
    capped = " (capped by the work budget)" if wanted > thin_max else ""
    relax = "2/(εγ)" if g_min == 1.0 else f"2/(ε·G·γ), smallest G {g_min:.3g},"
    return thin, f"thin {thin}: slowest relaxation {relax} = {tau:.3g} steps{capped}; {cap_reason}"


def slowest_preconditioner(kernel_state: Any, params: dict[str, Any]) -> float:
    """Smallest diagonal preconditioner G = 1/(√V̂ + δ) of RMSprop-type chain states, over chains
    and coordinates (1 for other kernels); α and δ from the kernel's ``params`` (RMSprop's defaults
    0.99 and 1e-5 if absent).

    Why the smallest: coordinate i relaxes in at most 2/(ε·G_i·γ) steps (its precision is ≥ γ), and
    at a singular center one coordinate can have both a small G (its E[g²] = E[∂²U], Stein's
    identity, is set by stiff walls far out) and a precision of only ≈ γ near w* (the flat bottom).
    On the crossing y = x·w2³ (n = 5000, RMSprop-SGLD, 16 chains) G was 0.0014 for w2 and 1.31
    for w1 (which enters only the prior): with their median, 0.65, thin came out 9 and the draws
    spanned 2 % of w2's 2/(εGγ); λ̂ read 0.122 ± 0.015 for an exact 0.147, "healthy" (session 13).
    Where G is nearly uniform, or thin is capped by the step budget anyway (every RRR, DLN and
    tanh-3 run of the validation suites), the minimum changes nothing.
    """
    import numpy as np

    g = preconditioner_diagonal(kernel_state, params)
    return 1.0 if g is None else float(np.min(g))


def preconditioner_diagonal(kernel_state: Any, params: dict[str, Any]) -> Any:
    """G = 1/(√V̂ + δ) of RMSprop-type chain states (chains × coordinates, NumPy), None for kernels
    without an adaptive preconditioner."""
    import numpy as np

    pre = getattr(kernel_state, "precond_state", kernel_state)  # JAX nests it; torch does not
    v = getattr(pre, "second_moment", None)
    count = getattr(pre, "count", None)
    if v is None or count is None:
        return None
    v, count = (x.detach().cpu().numpy() if hasattr(x, "detach") else x for x in (v, count))
    v = np.asarray(v, np.float64)
    if v.size == 0:  # torch's plain SGLD keeps an empty second moment
        return None
    c = np.maximum(np.asarray(count, np.float64), 1.0).reshape(-1, *([1] * (v.ndim - 1)))
    alpha, delta = float(params.get("alpha", 0.99)), float(params.get("delta", 1e-5))
    return 1.0 / (np.sqrt(v / (1.0 - alpha**c)) + delta)
