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

from slt_ppl.compile_cache import cached_call
from slt_ppl.errors import DataError, DataWarning, HealthWarning, SuspiciousCenterWarning
from slt_ppl.posterior import LocalPosterior

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

    try:
        grad_norm, trace_cov = (
            float(x) for x in cached_call(stats, posterior.center, posterior.data, sub)
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
