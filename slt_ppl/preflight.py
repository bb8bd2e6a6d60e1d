"""Checks of suspicious inputs, run before any sampling starts.

``localize`` and ``sample`` call these; each either passes silently, warns with guidance, or raises
one of the documented errors (``slt_ppl.errors``). ``docs/troubleshooting.md`` lists them with
their fixes.

- :func:`check_center`: is w* a local minimum of L_n? At a minimum ∇L_n(w*) = 0; at the true
  parameter (a fine center too) ‖∇L_n(w*)‖² ≈ tr Cov_i(∇ℓ_i(w*))/n, the sampling noise of a mean of
  n per-datum gradients. The ratio z = ‖∇L_n(w*)‖ / √(tr Cov_i(∇ℓ_i)/n) is therefore O(1) at any
  sensible center; z > ``max_z`` (default 5) raises
  :class:`~slt_ppl.errors.SuspiciousCenterWarning`: the chains will slide downhill and λ̂ comes out
  too small or negative.
- :func:`check_observed_sites` (NumPyro): observed values outside their distribution's support
  (a Bernoulli fed 2, a Poisson fed 0.5: the log-density is finite garbage there) raise
  :class:`~slt_ppl.errors.DataError`; integer values fed to a continuous likelihood warn
  (:class:`~slt_ppl.errors.DataWarning`): usually a label/count array passed by mistake.
- :func:`check_center_gradient`: a gradient of L_n that is NaN or infinite at w* (while L_n(w*) is
  finite) raises :class:`~slt_ppl.errors.ModelError` naming the sites and coordinates: every
  gradient-based chain would otherwise diverge at its first step and be reported as a step-size
  problem. The usual cause is an expression JAX or torch differentiates to 0·∞ there, e.g.
  ``w**0.0`` (d/dw = 0·w⁻¹) or ``sqrt(w**2)`` at w = 0.
- :func:`check_step_size`: a user step size with ε·h_max ≥ 2 (h_max the top curvature of U_B at w*)
  warns (:class:`~slt_ppl.errors.HealthWarning`) before sampling; the Langevin step is unstable at
  ε·h_max ≥ 4 and inaccurate well before.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_ppl.compile_cache import cached_call, keyed_call
from slt_ppl.errors import (
    DataError,
    DataWarning,
    HealthWarning,
    ModelError,
    SLTError,
    SuspiciousCenterWarning,
)
from slt_ppl.posterior import LocalPosterior
from slt_ppl.sampling.program_key import loss_key, tagged

#: Backends whose loss function JAX can differentiate directly.
JAX_BACKENDS = ("numpyro", "jax")


def center_gradient(
    posterior: LocalPosterior, *, max_points: int = 512
) -> tuple[float, float, float]:
    """(‖∇L_n(w*)‖, √(tr Cov_i(∇ℓ_i(w*))/n), z = their ratio), per-datum covariance from at most
    ``max_points`` points."""
    # per-datum gradients take m·d floats: keep them under 2**24 (64 MiB in float32)
    m = min(posterior.n, max_points, max(2, 2**24 // max(posterior.dim, 1)))
    sub = {k: v[:m] for k, v in posterior.data.items()}

    def per_datum(w: jax.Array, row: Mapping[str, jax.Array]) -> jax.Array:
        return jax.grad(posterior.loss_fn)(w, {k: v[None] for k, v in row.items()})

    def stats(w, data, rows):
        g = jax.grad(posterior.loss_fn)(w, data)
        per = jax.vmap(per_datum, in_axes=(None, 0))(w, rows)
        trace_cov = jnp.sum(jnp.var(per, axis=0))
        return jnp.linalg.norm(g), trace_cov

    # keyed on the loss's structure (full data and one-row batches): equal models skip the trace
    rows = {posterior.n, 1}
    key = tagged("center-gradient", loss_key(posterior.loss_fn, posterior.center, sub, rows))
    try:
        grad_norm, trace_cov = (
            float(x) for x in keyed_call(key, stats, posterior.center, posterior.data, sub)
        )
    except (TypeError, ValueError):
        # a model that cannot run on one-row batches (it reads the data's shape, e.g.
        # x.shape[-1] of 1-D inputs): no per-datum noise scale, z is NaN and the check is skipped
        grad = jax.jit(jax.grad(posterior.loss_fn))(posterior.center, posterior.data)
        return float(jnp.linalg.norm(grad)), math.nan, math.nan
    noise = math.sqrt(max(trace_cov, 0.0) / posterior.n) if math.isfinite(trace_cov) else math.nan
    floor = 1e-6 * (1.0 + abs(float(posterior.info.get("loss_center_full", 0.0))))
    z = grad_norm / max(noise, floor) if math.isfinite(noise) else math.nan
    return grad_norm, noise, z


def check_center(posterior: LocalPosterior, *, max_z: float = 5.0, warn: bool = True) -> float:
    """Warn when w* is not a local minimum of L_n (see the module docstring); returns z.

    The gradient norm and z are stored in ``posterior.info`` (and so in every result's attrs) as
    ``center_grad_norm`` and ``center_grad_z``. Skipped (NaN) for backends JAX cannot differentiate.
    """
    if posterior.backend not in JAX_BACKENDS:
        return math.nan
    grad_norm, noise, z = center_gradient(posterior)
    posterior.info["center_grad_norm"] = grad_norm
    posterior.info["center_grad_z"] = z
    if not math.isfinite(grad_norm):
        warnings.warn(
            "the gradient of L_n at the center is not finite: the likelihood is not differentiable "
            "there (a kink, a boundary of the support); LLC theory needs a smooth local minimum",
            SuspiciousCenterWarning,
            stacklevel=3,
        )
    elif warn and z > max_z:
        warnings.warn(
            f"the center does not look like a local minimum: ‖∇L_n(w*)‖ = {grad_norm:.3g} is "
            f"{z:.1f} times its sampling noise √(tr Cov(∇ℓ_i)/n) = {noise:.3g}. Chains will slide "
            "downhill and λ̂ will be too small or negative: train to convergence (or use a MAP "
            "estimate) before estimating, or strengthen gamma to pin the chains near w*",
            SuspiciousCenterWarning,
            stacklevel=3,
        )
    return z


def full_gradient(posterior: Any) -> np.ndarray:
    """∇L_n(w*) on the full data as a NumPy vector (JAX or torch posterior)."""
    if posterior.backend in JAX_BACKENDS:
        return np.asarray(
            cached_call(jax.grad(posterior.loss_fn), posterior.center, posterior.data)
        )
    import torch

    def full_loss(w: Any) -> Any:
        return posterior.loss_fn(w, posterior.data)

    return torch.func.grad(full_loss)(posterior.center).detach().cpu().numpy()


def nonfinite_coordinates(posterior: Any, bad: np.ndarray) -> list[str]:
    """'site[coordinate] (flat index i)' for every True entry of the flat mask ``bad``.

    Sites are the keys of ``posterior.unravel``'s dict (NumPyro/Pyro: latent sites, unconstrained
    coordinates) or the pytree paths of a plain JAX loss's parameters ("w" for a bare array).
    """
    if posterior.backend in JAX_BACKENDS:
        tree = posterior.unravel(jnp.asarray(bad, posterior.center.dtype))
    else:
        import torch

        tree = posterior.unravel(torch.as_tensor(bad, dtype=posterior.center.dtype))
    if isinstance(tree, Mapping) and all(hasattr(v, "shape") for v in tree.values()):
        # one level of sites, in the flat vector's order (JAX: sorted keys; torch: trace order)
        named = [(repr(k), v) for k, v in tree.items()]
    else:  # a plain JAX loss's parameter pytree, in ravel_pytree's (tree_leaves) order
        named = [
            (jax.tree_util.keystr(path) or "w", leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        ]
    out: list[str] = []
    offset = 0
    for name, leaf in named:
        mask = np.asarray(leaf.detach().cpu() if hasattr(leaf, "detach") else leaf) > 0.5
        for coord in np.argwhere(mask):
            where = f"[{', '.join(str(int(c)) for c in coord)}]" if coord.size else ""
            index = (
                offset + int(np.ravel_multi_index(tuple(coord), mask.shape))
                if coord.size
                else offset
            )
            out.append(f"{name}{where} (flat index {index})")
        offset += mask.size
    return out


def check_center_gradient(posterior: Any, grad: Any = None, *, max_listed: int = 10) -> None:
    """Raise :class:`~slt_ppl.errors.ModelError` when ∇L_n(w*) is not finite (see the module
    docstring), naming the site(s) and coordinates; returns None otherwise.

    Works for JAX (NumPyro, plain loss) and torch (Pyro) posteriors; the gradient is of the mean
    per-datum NLL on all n data points, the function every sampler differentiates. ``grad``: that
    gradient when the caller has it already (the backends compute it with L_n(w*), and pass an
    object with the posterior's ``backend``, ``center``, ``unravel`` and ``info`` before the
    posterior itself exists).
    """
    if grad is not None:
        grad = np.asarray(grad.detach().cpu() if hasattr(grad, "detach") else grad)
        if np.all(np.isfinite(grad)):
            return
    try:
        grad = full_gradient(posterior) if grad is None else grad
    except SLTError:
        raise
    except Exception as err:  # a loss JAX/torch cannot differentiate at all
        raise ModelError(
            f"differentiating the loss at the center failed with {type(err).__name__}: {err}. The "
            "samplers need ∇L_n: the model/loss must be differentiable in its parameters"
        ) from err
    bad = ~np.isfinite(grad)
    if not bad.any():
        return
    where = nonfinite_coordinates(posterior, bad)
    shown = "; ".join(where[:max_listed])
    more = f"; and {len(where) - max_listed} more" if len(where) > max_listed else ""
    kinds = sorted({"NaN" if np.isnan(g) else "inf" for g in grad[bad]})
    loss = posterior.info.get("loss_center_full", math.nan)
    overflow = (
        " (an inf may also be a float32 overflow of a very steep loss)" if "inf" in kinds else ""
    )
    raise ModelError(
        f"the gradient of L_n at the center w* is not finite ({'/'.join(kinds)}) in "
        f"{int(bad.sum())} of {bad.size} coordinates (site[index] of the unconstrained "
        f"parameters): {shown}{more}. L_n(w*) = {loss:.6g} is finite, so the likelihood as "
        "written has no derivative there: e.g. JAX differentiates w**0.0 at w = 0 as "
        f"0·w⁻¹ = NaN; sqrt(w**2) and |w|**p with p < 1 have no derivative at 0{overflow}. "
        "Every gradient-based chain would diverge at its first step. Rewrite the expression so "
        "its derivative exists at w* (drop constant factors such as w**0, use integer powers, "
        "guard square roots with jnp.where), or choose a center where the model is "
        "differentiable"
    )


def check_observed_sites(observed: Mapping[str, Mapping[str, Any]]) -> None:
    """Support and dtype checks of a NumPyro trace's observed sites (see the module docstring)."""
    for name, site in observed.items():
        fn, value = site["fn"], site["value"]
        support = getattr(fn, "support", None)
        if support is None:
            continue
        discrete = bool(getattr(fn, "is_discrete", False) or getattr(support, "is_discrete", False))
        try:
            inside = np.asarray(support(value))
        except Exception:  # a custom constraint that cannot check this value: nothing to say
            continue
        if inside.size and not bool(np.all(inside)):
            bad = int(inside.size - np.count_nonzero(inside))
            raise DataError(
                f"observed site {name!r} ({type(fn).__name__}) has {bad} value(s) outside its "
                f"support {support}; check the data passed as obs= (e.g. labels coded 1..K "
                "instead of 0..K-1, non-integer counts)"
            )
        if not discrete and np.asarray(value).dtype.kind in "biu":
            warnings.warn(
                f"observed site {name!r} has a continuous distribution ({type(fn).__name__}) but "
                f"integer data ({np.asarray(value).dtype}); the values are used as floats. If "
                "they are labels or counts, use a discrete likelihood (Categorical, Bernoulli, "
                "Poisson)",
                DataWarning,
                stacklevel=4,
            )


def check_step_size(
    posterior: LocalPosterior,
    step_size: float,
    batch: Mapping[str, jax.Array] | None = None,
    *,
    limit: float = 2.0,
) -> float:
    """Warn when ε·h_max ≥ ``limit`` (Langevin instability, see the module docstring); returns
    ε·h_max.

    NaN (and no warning) for backends JAX cannot differentiate.
    """
    if posterior.backend not in JAX_BACKENDS:
        return math.nan
    from slt_ppl.sampling.stepsize import top_curvature

    if batch is None:
        cached = posterior.info.get("top_curvature_center")
        if cached is None:
            sub = {k: v[: min(posterior.n, 2048)] for k, v in posterior.data.items()}
            cached = posterior.info["top_curvature_center"] = top_curvature(posterior, sub)
        curvature = float(cached)
    else:
        curvature = top_curvature(posterior, dict(batch))
    product = step_size * curvature
    if product >= limit:
        warnings.warn(
            f"step size ε = {step_size:.3g} times the top curvature of U = nβ·L + γ/2‖w − w*‖² "
            f"at w* (h ≈ {curvature:.3g}) is {product:.2g} ≥ {limit:g}: the Langevin step is "
            f"unstable (ε·h ≥ 4) or badly biased. Use step_size='auto' or ε well below "
            f"{1 / curvature:.3g}",
            HealthWarning,
            stacklevel=3,
        )
    return product
