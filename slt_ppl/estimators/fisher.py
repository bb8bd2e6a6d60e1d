"""Fisher information of a NumPyro or Pyro model, computed from the model itself.

F(θ) = E_x E_{y ~ p(y|x,θ)}[∇_θ log p(y|x,θ) ∇_θ log p(y|x,θ)ᵀ] (reference §5; Abbas et al. 2021,
arXiv 2011.00027). It is estimated from k per-sample scores J (k × d): F̂(θ) = JᵀJ/k, the x_i a
random subset of the data and y_i drawn through the model (``empirical=False``, ``num_y`` draws per
x_i) or the observed responses (``empirical=True``, the "empirical Fisher"). Only spectra are kept:
the non-zero eigenvalues of JᵀJ/k are those of JJᵀ/k (O(k³ + k²d), no d × d matrix).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from slt_ppl.errors import DataError, SettingError
from slt_ppl.estimators.fisher_spectra import FisherResult, _check_layers, spectra_from_scores
from slt_ppl.estimators.parameter_distribution import ThetaSpec, draw_theta

__all__ = ["FisherResult", "fisher", "fisher_from_loglik"]


def detect_backend(data: Mapping[str, Any], backend: str | None) -> str:
    """'numpyro' or 'pyro': the given name, else 'pyro' when any data value is a torch tensor."""
    if backend is not None:
        if backend not in ("numpyro", "pyro"):
            raise SettingError(f"backend must be 'numpyro' or 'pyro', got {backend!r}")
        return backend
    for value in data.values():
        if type(value).__module__.startswith("torch"):
            return "pyro"
    return "numpyro"


def model_info(model: Callable, data: Mapping[str, Any], backend: str | None) -> Any:
    """The backend adapter (latent sites, transforms, score function) for ``model(**data)``."""
    if not isinstance(data, Mapping):
        raise DataError("data must be a dict of keyword arguments for the model")
    if detect_backend(data, backend) == "pyro":
        from slt_ppl.estimators.fisher_torch import PyroModelInfo

        return PyroModelInfo(model, data)
    from slt_ppl.estimators.fisher_numpyro import NumPyroModelInfo

    return NumPyroModelInfo(model, data)


def layer_columns(info: Any, layers: Mapping[str, Sequence[str]] | None) -> dict[str, np.ndarray]:
    """Layer -> flat columns. Default: each latent site is its own layer, in model (trace)
    order."""
    if layers is None:
        return dict(info.site_columns)
    cols = {}
    for name, sites in layers.items():
        if isinstance(sites, str):
            sites = [sites]
        unknown = [s for s in sites if s not in info.site_columns]
        if unknown:
            raise SettingError(f"layer {name!r} names unknown latent site(s) {unknown}")
        cols[str(name)] = np.concatenate([info.site_columns[s] for s in sites])
    return _check_layers(cols, info.d)


def _subset(n: int, num_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    if num_samples is None:
        num_samples = min(n, 256)
    if not 1 <= num_samples <= n:
        raise SettingError(f"num_samples must be in [1, n={n}], got {num_samples}")
    if num_samples == n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=num_samples, replace=False))


def fisher(
    model: Callable,
    data: Mapping[str, Any],
    *,
    theta: ThetaSpec = "prior",
    num_theta: int = 8,
    num_samples: int | None = None,
    num_y: int = 1,
    empirical: bool = False,
    layers: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    backend: str | None = None,
    keep_scores: bool = False,
) -> FisherResult:
    """Fisher information spectra of ``model(**data)`` at ``num_theta`` parameter draws.

    F(θ) = E_x E_{y~p(y|x,θ)}[∇log p(y|x,θ) ∇log p(y|x,θ)ᵀ] (Abbas et al. 2021, arXiv
    2011.00027), estimated from k per-sample scores J (k × d) as F = JᵀJ/k; its non-zero
    eigenvalues are those of JJᵀ/k, so each θ costs O(k³ + k²d), never O(d³). ``empirical=True``
    uses the observed y (the "empirical Fisher", a different quantity away from the truth).

    Args:
        model: NumPyro or Pyro model called as ``model(**data)``; observed sites take ``obs=``
            from data.
        data: keyword arguments; arrays with the leading data axis n are sliced per data point.
        theta: parameter distribution (see :mod:`slt_ppl.estimators.parameter_distribution`).
        num_theta: number of parameter draws (draws from a sampling result are thinned evenly).
        num_samples: k, data points per θ (random subset; default min(n, 256)).
        num_y: responses drawn per data point (model-sampled Fisher only); rows =
            num_samples·num_y.
        empirical: use the observed responses instead of draws from the model.
        layers: layer name -> latent site names (default: one layer per site, in trace order).
        seed: seed for the data subset, the θ draws and the response draws.
        backend: 'numpyro' or 'pyro' (default: 'pyro' when data holds torch tensors).
        keep_scores: keep the (num_theta, k, d) score matrices (memory k·d per θ).

    Scores are taken in unconstrained coordinates of constrained sites (identity for real sites).
    """
    if num_y < 1:
        raise SettingError(f"num_y must be >= 1, got {num_y}")
    if empirical and num_y != 1:
        raise SettingError("num_y > 1 needs model-sampled responses (empirical=False)")
    info = model_info(model, data, backend)
    cols = layer_columns(info, layers)
    rng = np.random.default_rng(seed)
    index = _subset(info.n, num_samples, rng)
    thetas, source = draw_theta(theta, info, num_theta, seed)
    score_fn = info.score_function(index, empirical)
    parts, kept = [], []
    for t, u in enumerate(thetas):
        rows = [score_fn(u, seed * 1_000_003 + t * num_y + r) for r in range(num_y)]
        j = np.concatenate(rows, axis=0)
        if not np.all(np.isfinite(j)):
            raise DataError(f"non-finite scores at theta draw {t} (log-likelihood gradient)")
        parts.append(spectra_from_scores(j, cols))
        if keep_scores:
            kept.append(j)
    notes = {
        "backend": type(info).__name__,
        "responses": "observed (empirical Fisher)" if empirical else f"{num_y} draw(s) per x",
        "theta": source,
        "coordinates": "unconstrained (biject_to of each site's support)",
    }
    return FisherResult._assemble(
        parts,
        info.d,
        cols,
        scores=np.stack(kept) if keep_scores else None,
        k=len(index) * num_y,
        site_names=list(info.site_names),
        site_shapes=dict(info.site_shapes),
        theta=thetas,
        notes=notes,
    )


def fisher_from_loglik(
    loglik: Callable,
    x: Any,
    y: Any,
    theta: np.ndarray,
    *,
    layers: Mapping[str, np.ndarray] | None = None,
    keep_scores: bool = False,
) -> FisherResult:
    """Empirical Fisher spectra from a plain JAX log-likelihood ``loglik(params_flat, x_i, y_i)``.

    F(θ) = JᵀJ/k with J_i = ∇_θ loglik(θ, x_i, y_i) at the observed y (the empirical Fisher;
    Abbas et al. 2021 define F with y drawn from the model: use :func:`fisher` for that).

    ``theta`` is (num_theta, d); ``x`` and ``y`` have the data axis first; ``layers`` maps layer
    names to column indices of params_flat. Scores come from ``jax.vmap(jax.grad(loglik))`` over
    data points.
    """
    import jax
    import jax.numpy as jnp

    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    if not (np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(y)))):
        raise DataError("x or y has non-finite values")
    grad_point = jax.jit(jax.vmap(jax.grad(loglik), in_axes=(None, 0, 0)))
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    scores = np.stack([np.asarray(grad_point(jnp.asarray(u), xs, ys)) for u in theta])
    return FisherResult.from_scores(
        scores,
        layers,
        keep_scores=keep_scores,
        theta=theta,
        notes={"backend": "loglik", "responses": "observed (empirical Fisher)"},
    )
