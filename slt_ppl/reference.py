"""``slt_ppl.reference.exact_llc``: the exact LLC of a small local posterior, as ground truth.

It targets exactly the posterior the samplers target (``slt_ppl/posterior.py``): full batch, the
same nβ (times a temperature factor f), γ, center and flat unconstrained coordinates,

    p_f(w) ∝ exp(−f·nβ·L_n(w) − (γ/2)·‖w − w*‖²),   λ_f = f·nβ·(E_{p_f}[L_n(w)] − L_n(w*))

(Lau, Furman, Wang, Murfet, Wei 2023, arXiv 2308.12108). Two methods:

- ``"quadrature"`` (d ≤ 2): adaptive sinh-grid quadrature in float64 (``slt_ppl.reference_grid``);
  ``llc_se`` is its numerical error estimate (conservative: the change from half the resolution).
- ``"nuts"``: NumPyro's NUTS (Pyro's for torch posteriors) through ``slt_ppl.sample(kernel=
  "nuts")`` on the full-batch potential, with step size and diagonal mass matrix adapted in the
  warm-up; ``llc_se`` = f·nβ × ArviZ's MCSE of the mean of L_n(w) − L_n(w*). It is only a reference
  when it converged: rank-normalized split R-hat ≤ 1.01 and bulk ESS ≥ 400 on that trace (Vehtari
  et al. 2021, Bayesian Analysis 16:667, the thresholds recommended there), every chain finite and
  at most 0.1 % divergent transitions (a divergence means the integrator failed in a region of high
  curvature, which biases the draws; Betancourt 2017, arXiv 1701.02434). Otherwise it raises
  :class:`ReferenceConvergenceError` (``strict=True``, default) or flags ``converged = 0``.

Torch (Pyro) posteriors: quadrature through their ``loss_fn`` (vectorized with ``torch.func``, in
float64) and NUTS through Pyro (``sampling/pyro_mcmc.py``). Pyro runs the chains one after another
and does not report divergent transitions (noted in ``settings``); it is slow: a two-parameter
crossing at n = 100 took ≈ 6 minutes for 4 × 500 steps on two busy cores (vs ≈ 20 s for NumPyro).

``"auto"`` takes quadrature for d ≤ 2 and NUTS for d ≤ ``NUTS_MAX_DIM`` = 100, else a
SettingError. Why 100: full-batch NUTS costs up to 2^max_tree_depth full-data gradients per draw,
and at a singular center the posterior is badly conditioned (stiff directions ∝ nβ, flat ones held
only by γ: condition numbers nβ·h/γ of 1e4 and more), so trees run deep: a d = 30 reduced-rank
regression at n = 5000 (loss from sufficient statistics) took 4–11 minutes of wall time for
2 × 4 × 2500 NUTS steps on two cores shared by ~10 jobs; and R-hat on one scalar trace is a weak
convergence check when d is in the hundreds. Pass ``method="nuts"`` to go beyond it on purpose.

NUTS is no reference for normal crossings: their valleys narrow like 1/(√a·|w2|^p) far out (a
funnel), NUTS under-visits them and comes out low (y = x·w1·w2², n = 400, default γ: −0.5 and
−3.7 se from quadrature over two seeds, with 37–154 divergent transitions, which the divergence
check flags). Hence quadrature whenever d ≤ 2. The same holds for sums of crossings such as the
tanh network y = Σ_k a_k·tanh(b_k·x) at a = b = 0 (three units, n = 5000, d = 6): 326 leapfrog
steps per draw at step ≈ 0.01, 9.4 minutes for 4 × 2500 steps, 0.77 % divergent transitions and
0.932 ± 0.017 (target_accept 0.99: 14.8 minutes, 0.18 % divergent, 35 % of draws at the depth
cap, 0.969 ± 0.020) against 0.962886 from ``models.tanh_marginal`` (the output weights integrated out
analytically, the input weights by quadrature; docs/validation.md, session 6).

Two temperatures (``temperatures=(f1, f2)``): λ at each factor and the two-temperature estimator
(Watanabe 2013, JMLR 14:867; reference section 1)

    λ̂₂ = (E_{β1}[n·L_n] − E_{β2}[n·L_n]) / (1/β1 − 1/β2),   β_i = f_i·β,
       = (λ_1/f_1 − λ_2/f_2) / (1/f_1 − 1/f_2),

with se √((se_1/f_1)² + (se_2/f_2)²)/|1/f_1 − 1/f_2| (independent NUTS runs per factor).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from slt_ppl.errors import SettingError, SLTError

METHODS = ("auto", "nuts", "quadrature")
QUADRATURE_MAX_DIM = 2
NUTS_MAX_DIM = 100
MAX_RHAT = 1.01
MIN_ESS = 400.0
MAX_DIVERGENT_FRACTION = 1e-3


class ReferenceConvergenceError(SLTError, RuntimeError):
    """The reference sampler (NUTS) did not converge, so its value is no ground truth."""


def exact_llc(
    posterior: Any,
    method: str = "auto",
    *,
    temperatures: Sequence[float] | None = None,
    num_chains: int = 4,
    num_draws: int = 2000,
    num_burnin: int | None = None,
    seed: int = 0,
    strict: bool = True,
    target_accept: float = 0.95,
    max_tree_depth: int = 10,
    rel_tol: float = 1e-4,
    progress: bool = False,
) -> xr.Dataset:
    """The exact LLC of ``posterior``: NUTS or quadrature on the same target.

    λ_f = f·nβ·(E_{p_f}[L_n(w)] − L_n(w*)) with p_f(w) ∝ exp(−f·nβ·L_n(w) − (γ/2)·‖w − w*‖²), full
    batch (Lau, Furman, Wang, Murfet, Wei 2023, arXiv 2308.12108); with two factors also
    λ̂₂ = (λ_1/f_1 − λ_2/f_2)/(1/f_1 − 1/f_2) (Watanabe 2013). Methods and their convergence
    checks: the module docstring.

    Args:
        posterior: a ``LocalPosterior`` (JAX/NumPyro) or ``TorchLocalPosterior`` (Pyro).
        method: "auto" (quadrature for d ≤ 2, NUTS for d ≤ 100), "nuts" or "quadrature".
        temperatures: None, or two distinct factors (f1, f2) > 0 multiplying nβ; then the result
            also holds λ at each factor and the two-temperature value.
        num_chains, num_draws, num_burnin, seed: NUTS settings (burn-in = warm-up, default
            num_draws); factor k uses seed + k.
        strict: raise :class:`ReferenceConvergenceError` when NUTS did not converge (else flag it).
        target_accept, max_tree_depth: NUTS settings (default 0.95: smaller steps than NumPyro's
            0.8, fewer divergences in the narrow valleys of singular posteriors).
        rel_tol: quadrature tolerance (relative change from half the resolution).
        progress: NUTS progress bars.

    Returns:
        ``xr.Dataset`` with ``llc`` and ``llc_se`` at the first factor (1 when ``temperatures`` is
        None); with temperatures also ``llc_at_temperature``, ``llc_at_temperature_se`` (dim
        ``temperature``), ``llc_two_temperature`` and ``llc_two_temperature_se``; NUTS adds
        ``rhat``, ``ess`` and ``divergent``. attrs: method, converged (0/1), problems, settings
        (JSON), n, nbeta, gamma, dim, backend, wall_time_s.
    """
    factors = _factors(temperatures)
    chosen = _choose_method(posterior, method)
    t0 = time.perf_counter()
    if chosen == "quadrature":
        values, extra, problems, settings = _quadrature(posterior, factors, rel_tol)
    else:
        _check_nuts_settings(num_chains, num_draws, num_burnin, target_accept, max_tree_depth)
        settings = {
            "num_chains": num_chains, "num_draws": num_draws,
            "num_burnin": num_draws if num_burnin is None else num_burnin, "seed": seed,
            "target_accept": target_accept, "max_tree_depth": max_tree_depth,
            "max_rhat": MAX_RHAT, "min_ess": MIN_ESS,
            "max_divergent_fraction": MAX_DIVERGENT_FRACTION,
        }  # fmt: skip
        values, extra, problems = _nuts(posterior, factors, settings, progress)
    ds = _dataset(values, extra, factors, temperatures is not None)
    ds.attrs.update(
        {
            "estimator": "exact_llc",
            "method": chosen,
            "formula": "f*nbeta*(E_f[L_n(w)] - L_n(w*)), full batch, same gamma and center",
            "converged": int(not problems),
            "problems": "; ".join(problems) if problems else "none",
            "settings": json.dumps(settings),
            "n": int(posterior.n),
            "nbeta": float(posterior.nbeta),
            "gamma": float(posterior.gamma),
            "dim": int(posterior.dim),
            "backend": str(posterior.backend),
            "wall_time_s": time.perf_counter() - t0,
        }
    )
    if temperatures is not None:
        ds.attrs["temperatures"] = json.dumps([float(f) for f in factors])
    if problems and strict:
        raise ReferenceConvergenceError(
            f"the {chosen} reference did not converge: {'; '.join(problems)}. Raise num_draws "
            "(or num_burnin), or pass strict=False to get the flagged value."
        )
    return ds


def _factors(temperatures: Sequence[float] | None) -> np.ndarray:
    if temperatures is None:
        return np.asarray([1.0])
    try:
        factors = np.asarray([float(f) for f in temperatures])
    except (TypeError, ValueError) as err:
        raise SettingError(f"temperatures must be two numbers, got {temperatures!r}") from err
    if factors.size != 2 or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        raise SettingError(
            f"temperatures must be two positive finite factors (f1, f2) of nβ, got {temperatures!r}"
        )
    if factors[0] == factors[1]:
        raise SettingError(f"the two temperature factors must differ, got {temperatures!r}")
    return factors


def _choose_method(posterior: Any, method: str) -> str:
    if method not in METHODS:
        raise SettingError(f"method must be one of {METHODS}, got {method!r}")
    d = int(posterior.dim)
    if method == "quadrature" and d > QUADRATURE_MAX_DIM:
        raise SettingError(
            f"quadrature handles d ≤ {QUADRATURE_MAX_DIM} parameters, this posterior has d = {d}; "
            "use method='nuts'"
        )
    if method != "auto":
        return method
    if d <= QUADRATURE_MAX_DIM:
        return "quadrature"
    if d <= NUTS_MAX_DIM:
        return "nuts"
    raise SettingError(
        f"no automatic exact reference for d = {d} > {NUTS_MAX_DIM} parameters (full-batch NUTS "
        "gets too slow and its convergence checks too weak, see slt_ppl.reference); pass "
        "method='nuts' to run it anyway"
    )


def _check_nuts_settings(chains: int, draws: int, burnin: int | None, accept: float,
                         depth: int) -> None:  # fmt: skip
    if not (isinstance(chains, int) and chains >= 2):
        raise SettingError(f"num_chains must be an integer ≥ 2 (R-hat needs chains), got {chains}")
    if not (isinstance(draws, int) and draws >= 100):
        raise SettingError(f"num_draws must be an integer ≥ 100, got {draws}")
    if burnin is not None and not (isinstance(burnin, int) and burnin >= 100):
        raise SettingError(f"num_burnin must be an integer ≥ 100 (NUTS warm-up), got {burnin}")
    if not 0.5 <= accept < 1:
        raise SettingError(f"target_accept must lie in [0.5, 1), got {accept}")
    if not (isinstance(depth, int) and 1 <= depth <= 15):
        raise SettingError(f"max_tree_depth must be an integer in 1..15, got {depth}")


# ---------------------------------------------------------------------------------------- NUTS


def _nuts(posterior: Any, factors: np.ndarray, settings: dict[str, Any], progress: bool
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:  # fmt: skip
    from slt_ppl.diagnostics import ess, mcse, rhat
    from slt_ppl.sampling.api import sample

    out: dict[str, list[float]] = {k: [] for k in ("llc", "llc_se", "rhat", "ess", "divergent")}
    problems: list[str] = []
    notes: set[str] = set()
    for k, f in enumerate(factors):
        post_f = posterior.replace(nbeta=float(posterior.nbeta) * float(f))
        result = sample(
            post_f, kernel="nuts", num_chains=settings["num_chains"],
            num_draws=settings["num_draws"], num_burnin=settings["num_burnin"],
            seed=settings["seed"] + k, progress=progress,
            kernel_options={"target_accept_prob": settings["target_accept"],
                            "max_tree_depth": settings["max_tree_depth"]},
        )  # fmt: skip
        stats = result["sample_stats"].to_dataset()
        diff = stats["loss"] - float(result.attrs["loss_center_full"])
        nbeta_f = float(post_f.nbeta)
        finite = bool(np.all(np.isfinite(diff.values)))
        r, e = (rhat(diff), ess(diff)) if finite else (math.nan, math.nan)
        divergent = float(result.attrs.get("num_divergent_transitions", math.nan))
        out["llc"].append(nbeta_f * float(diff.mean()) if finite else math.nan)
        out["llc_se"].append(nbeta_f * mcse(diff) if finite else math.nan)
        out["rhat"].append(r)
        out["ess"].append(e)
        out["divergent"].append(divergent)
        where = f"factor {float(f):g}: " if len(factors) > 1 else ""
        total = settings["num_chains"] * settings["num_draws"]
        if not finite:
            problems.append(f"{where}non-finite loss in some chain")
        if not r <= MAX_RHAT:
            problems.append(f"{where}R-hat {r:.3f} > {MAX_RHAT}")
        if not e >= MIN_ESS:
            problems.append(f"{where}bulk ESS {e:.0f} < {MIN_ESS:.0f}")
        if divergent > MAX_DIVERGENT_FRACTION * total:
            problems.append(f"{where}{divergent:.0f} divergent transitions in {total} draws")
        if math.isnan(divergent):  # Pyro's MCMC does not report them (sampling/pyro_mcmc.py)
            notes.add("divergent transitions not recorded by this backend: not checked")
    values = {k: np.asarray(out[k]) for k in ("llc", "llc_se")}
    extra = {k: np.asarray(out[k]) for k in ("rhat", "ess", "divergent")}
    settings["notes"] = sorted(notes)
    return values, extra, problems


# ---------------------------------------------------------------------------------- quadrature


def _quadrature(posterior: Any, factors: np.ndarray, rel_tol: float
                ) -> tuple[dict, dict, list[str], dict[str, Any]]:  # fmt: skip
    from slt_ppl.reference_grid import grid_llc

    if posterior.backend == "pyro":
        energy, center = _torch_energy(posterior)
    else:
        energy, center = _jax_energy(posterior)
    res = grid_llc(energy, center, float(posterior.gamma), factors, rel_tol=rel_tol)
    problems = [] if res.converged else [
        f"quadrature not converged at {res.points} points: change from half the resolution "
        f"{res.error.max():.2g}"
    ]  # fmt: skip
    settings = {"rel_tol": rel_tol, "box": res.box, "inner_scale": res.inner_scale, "dt": res.dt,
                "points": res.points, "evaluations": res.evaluations}  # fmt: skip
    return {"llc": res.llc, "llc_se": res.error}, {}, problems, settings


def _chunk(n: int) -> int:
    """Grid points per vectorized loss call: about 2²² data-point evaluations at a time."""
    return max(1, 2**22 // max(n, 1))


def _jax_energy(posterior: Any) -> tuple[Any, np.ndarray]:
    """E(W) = nβ·(L_n(w) − L_n(w*)) over rows of W, in float64 (JAX's enable_x64 context)."""
    import jax
    import jax.numpy as jnp

    nbeta = float(posterior.nbeta)
    center = np.asarray(posterior.center, np.float64)
    chunk = _chunk(posterior.n)
    with jax.enable_x64(True):
        data = {
            k: jnp.asarray(v, jnp.float64) if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)
            else jnp.asarray(v)
            for k, v in posterior.data.items()
        }  # fmt: skip

        def loss(w: jax.Array) -> jax.Array:
            return posterior.loss_fn(w, data)

        batched = jax.jit(lambda ws: jax.lax.map(loss, ws, batch_size=chunk))
        loss0 = float(loss(jnp.asarray(center)))

    def energy(points: np.ndarray) -> np.ndarray:
        with jax.enable_x64(True):
            values = np.asarray(batched(jnp.asarray(points, jnp.float64)), np.float64)
        return nbeta * (values - loss0)

    return energy, center


def _torch_energy(posterior: Any) -> tuple[Any, np.ndarray]:
    """E(W) for a torch posterior, its loss vectorized with ``torch.func.vmap``, in float64."""
    import torch

    nbeta = float(posterior.nbeta)
    data = {k: v.double() if v.is_floating_point() else v for k, v in posterior.data.items()}
    center = posterior.center.detach().double()
    chunk = _chunk(posterior.n)
    vloss = torch.func.vmap(lambda w: posterior.loss_fn(w, data))
    with torch.no_grad():
        loss0 = float(posterior.loss_fn(center, data))

    def energy(points: np.ndarray) -> np.ndarray:
        rows = torch.as_tensor(points, dtype=torch.float64, device=center.device)
        with torch.no_grad():
            parts = [vloss(piece) for piece in torch.split(rows, chunk)]
        return nbeta * (torch.cat(parts).cpu().numpy() - loss0)

    return energy, center.cpu().numpy()


# ------------------------------------------------------------------------------------- result


def two_temperature(factors: Sequence[float], llc: Sequence[float], se: Sequence[float]
                    ) -> tuple[float, float]:  # fmt: skip
    """λ̂₂ = (λ_1/f_1 − λ_2/f_2)/(1/f_1 − 1/f_2) and its se (independent estimates; module doc)."""
    (f1, f2), (l1, l2), (s1, s2) = factors, llc, se
    denom = 1.0 / f1 - 1.0 / f2
    return (l1 / f1 - l2 / f2) / denom, math.hypot(s1 / f1, s2 / f2) / abs(denom)


def _dataset(values: dict[str, np.ndarray], extra: dict[str, np.ndarray], factors: np.ndarray,
             tempered: bool) -> xr.Dataset:  # fmt: skip
    ds = xr.Dataset({"llc": float(values["llc"][0]), "llc_se": float(values["llc_se"][0])})
    if not tempered:
        for key, value in extra.items():
            ds[key] = float(value[0])
        return ds
    ds = ds.assign_coords(temperature=("temperature", factors))
    ds["llc_at_temperature"] = ("temperature", values["llc"])
    ds["llc_at_temperature_se"] = ("temperature", values["llc_se"])
    for key, value in extra.items():
        ds[key] = ("temperature", value)
    lam2, se2 = two_temperature(factors, values["llc"], values["llc_se"])
    ds["llc_two_temperature"] = lam2
    ds["llc_two_temperature_se"] = se2
    ds["llc_two_temperature"].attrs["formula"] = (
        "(E_b1[n L_n] - E_b2[n L_n]) / (1/b1 - 1/b2) (Watanabe 2013)"
    )
    return ds
