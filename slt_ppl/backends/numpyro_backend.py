"""NumPyro adapter: an unmodified NumPyro model becomes a
:class:`~slt_ppl.posterior.LocalPosterior`.

The model is called as ``model(**batch)`` with ``batch`` a slice (along axis 0) of the user's data
dict. Effect handlers do the work, so the user never rewrites the model:

- ``trace(seed(model))`` once, to find the latent and observed sites and their supports;
- ``substitute(model, data=constrained_params)`` to evaluate the model at a given w;
- the observed sites' log-probabilities summed and divided by the batch length give −L_B(w), the
  mean per-datum log-likelihood. The model's priors are *not* part of U: the Gaussian localization
  plays the prior's role in the local posterior (Lau et al. 2023).

Plates with ``subsample_size`` and ``handlers.scale`` around observed sites raise
:class:`~slt_ppl.errors.ModelError` (``backends.common`` says why): slt_ppl minibatches itself and
needs the unscaled likelihood of every row it passes.

Latent sites are sampled in unconstrained space: a site with support S is mapped by
``numpyro.distributions.biject_to(S)``; w is the concatenation of the unconstrained values, and the
localization ‖w − w*‖² is measured there. The LLC is invariant under such a smooth change of
coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_ppl.backends.common import (
    check_observed_scale,
    resolve_nbeta,
    subsample_error,
    unit_information_gamma,
    validate_data,
)
from slt_ppl.compile_cache import keyed_call
from slt_ppl.errors import CenterError, ModelError, SLTError
from slt_ppl.posterior import LocalPosterior
from slt_ppl.preflight import check_center_gradient, check_observed_sites
from slt_ppl.sampling.program_key import forget_loss_digests, loss_key, tagged


def _reject_subsampling(model: Callable[..., Any]) -> Callable[..., Any]:
    """``model`` under a handler that raises :class:`ModelError` at a plate with
    ``subsample_size`` (before NumPyro draws the subsample)."""
    from numpyro.primitives import Messenger

    class RejectSubsampling(Messenger):
        def process_message(self, msg: dict) -> None:
            if msg["type"] != "plate":
                return
            size, subsample_size = msg["args"]
            if subsample_size is not None and subsample_size != size:
                raise subsample_error(msg["name"], f"subsample_size={subsample_size}", "numpyro")

    return RejectSubsampling(model)


def trace_model(
    model: Callable[..., Any],
    data: Mapping[str, Any],
    values: Mapping[str, Any] | None = None,
) -> dict[str, dict]:
    """Run the model once under ``seed`` + ``trace`` on ``data`` and return its trace.

    ``values`` (site name → value, e.g. the center) are substituted for those sites instead of
    drawing them from their distributions: the trace then needs no random draws, each of which
    would otherwise be compiled once per site shape (≈ 0.3 s per site on a CPU).
    """
    from numpyro import handlers

    model = _reject_subsampling(model)
    if values:
        model = handlers.substitute(model, data=dict(values))
    try:
        return handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(**data)
    except TypeError as err:
        raise ModelError(
            f"calling the model as model(**data) with data keys {sorted(data)} failed: {err}. "
            "The data dict's keys must be the model's keyword arguments."
        ) from err
    except SLTError:
        raise
    except Exception as err:  # the user's model failed on the user's data: say which call
        shapes = {k: tuple(np.shape(v)) for k, v in data.items()}
        raise ModelError(
            f"the model raised {type(err).__name__} when called as model(**data) with data shapes "
            f"{shapes}: {err}"
        ) from err


def split_sites(tr: Mapping[str, dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Latent and observed sample sites of a trace; discrete latent sites raise
    :class:`ModelError`."""
    latent: dict[str, dict] = {}
    observed: dict[str, dict] = {}
    for name, site in tr.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            check_observed_scale(name, site.get("scale"), "numpyro")
            observed[name] = site
            continue
        fn = site["fn"]
        if getattr(fn, "is_discrete", False) or getattr(fn.support, "is_discrete", False):
            raise ModelError(
                f"latent site {name!r} is discrete ({type(fn).__name__}); the local posterior "
                "needs continuous parameters. Marginalize it (e.g. numpyro's enumeration / "
                "funsor) or observe it."
            )
        latent[name] = site
    if not observed:
        raise ModelError(
            "the model has no observed sample site, so there is no likelihood to temper; pass the "
            "observations through the data dict and use obs= in the model"
        )
    if not latent:
        raise ModelError("the model has no latent sample site: there is nothing to sample")
    return latent, observed


def _center_values(center: Any) -> dict[str, jax.Array] | None:
    """The center's values as arrays for substitution, or None when it is not a dict of numbers
    (the center check then reports the problem)."""
    if not isinstance(center, Mapping):
        return None
    try:
        return {str(k): jnp.asarray(v) for k, v in center.items()}
    except (TypeError, ValueError):
        return None


def _site_shape(site: Mapping[str, Any]) -> tuple[int, ...]:
    """A latent site's shape from its distribution (sample_shape + batch + event shape), which
    does not depend on whether the value was drawn or substituted."""
    sample_shape = tuple(site.get("kwargs", {}).get("sample_shape", ()) or ())
    try:
        return sample_shape + tuple(site["fn"].shape())
    except Exception:  # an exotic distribution without shape(): the traced value's shape
        return tuple(np.shape(site["value"]))


def unconstrain_center(
    center: Mapping[str, Any], latent: Mapping[str, dict]
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Check the center against the latent sites and map it to unconstrained space."""
    from numpyro.distributions import biject_to

    if not isinstance(center, Mapping):
        raise CenterError(
            f"center must be a dict of latent site values, got {type(center).__name__}; "
            f"expected keys {list(latent)}"
        )
    missing = [k for k in latent if k not in center]
    extra = [k for k in center if k not in latent]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing latent site(s) {missing}")
        if extra:
            parts.append(f"unknown site(s) {extra} (not latent sample sites of the model)")
        raise CenterError("center does not match the model: " + "; ".join(parts))
    transforms = {name: biject_to(site["fn"].support) for name, site in latent.items()}
    unconstrained: dict[str, jax.Array] = {}
    for name, site in latent.items():
        value = jnp.asarray(center[name], dtype=jnp.result_type(float))
        expected = _site_shape(site)
        if tuple(value.shape) != expected:
            raise CenterError(
                f"center[{name!r}] has shape {tuple(value.shape)}, the model's site has shape "
                f"{expected}"
            )
        # host-side checks: an eager jnp reduction would compile once per site shape
        if not np.all(np.isfinite(np.asarray(value))):
            raise CenterError(f"center[{name!r}] holds non-finite values")
        u = transforms[name].inv(value)
        if not np.all(np.isfinite(np.asarray(u))):
            raise CenterError(
                f"center[{name!r}] lies outside the support {site['fn'].support} of its "
                "distribution"
            )
        unconstrained[name] = u
    return unconstrained, transforms


def make_loss_fn(
    model: Callable[..., Any],
    observed_names: list[str],
    unravel: Callable[[jax.Array], dict[str, jax.Array]],
    transforms: Mapping[str, Any],
) -> tuple[Callable[[jax.Array, Mapping[str, jax.Array]], jax.Array], Callable]:
    """L_B(w) = −(1/B)·Σ_{observed sites} log p(obs | w), with B the batch length (scaled sites
    were rejected when the model was traced)."""
    from numpyro import handlers

    def constrain(params_u: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return {k: transforms[k](v) for k, v in params_u.items()}

    def loss_fn(w: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        params = constrain(unravel(w))
        conditioned = handlers.substitute(handlers.seed(model, rng_seed=0), data=params)
        tr = handlers.trace(conditioned).get_trace(**batch)
        log_lik = 0.0
        for name in observed_names:
            site = tr[name]
            lp = site["fn"].log_prob(site["value"])
            log_lik = log_lik + jnp.sum(lp)
        batch_len = next(iter(batch.values())).shape[0]
        return -log_lik / batch_len

    return loss_fn, constrain


def localize_numpyro(
    model: Callable[..., Any],
    data: Mapping[str, Any],
    center: Mapping[str, Any],
    *,
    nbeta: float | None = None,
    gamma: float | str | None = None,
) -> LocalPosterior:
    """Build the local posterior of a NumPyro model (see the module docstring)."""
    arrays, n = validate_data(data)
    jdata = {k: jnp.asarray(v) for k, v in arrays.items()}
    probe = {k: jnp.asarray(np.asarray(v)[: min(n, 8)]) for k, v in arrays.items()}
    given = _center_values(center)
    try:
        tr = trace_model(model, probe, given)
    except ModelError:
        # a center of the wrong shape can break the model itself: trace with draws from the
        # prior instead, so that the center check below names the site and both shapes
        given = None
        tr = trace_model(model, probe)
    latent, observed = split_sites(tr)
    full_trace = trace_model(model, jdata, given) if n > len(next(iter(probe.values()))) else tr
    check_observed_sites({k: full_trace[k] for k in observed if k in full_trace})
    params_u, transforms = unconstrain_center(center, latent)
    flat_center, unravel = ravel_pytree(params_u)
    loss_fn, constrain = make_loss_fn(model, list(observed), unravel, transforms)
    return finish_posterior(
        loss_fn=loss_fn,
        data=jdata,
        n=n,
        center=flat_center,
        unravel=unravel,
        sites={k: _site_shape(s) for k, s in latent.items()},
        backend="numpyro",
        constrain=constrain,
        nbeta=nbeta,
        gamma=gamma,
        info={"model": getattr(model, "__name__", type(model).__name__)},
        explain_loss=lambda: nonfinite_sites(model, jdata, _center_values(center), list(observed)),
    )


def nonfinite_sites(
    model: Callable[..., Any],
    data: Mapping[str, jax.Array],
    values: Mapping[str, jax.Array] | None,
    observed: list[str],
) -> str:
    """'; non-finite log-likelihood at w* in site 'y' (3 of 10 values)' from a trace at the
    center, with NumPyro's argument validation off (it would reject e.g. a zero scale before
    the log-density could be seen); '' when nothing is found."""
    import numpyro

    try:
        with numpyro.validation_enabled(False):
            tr = trace_model(model, data, values)
    except SLTError:
        return ""
    parts = []
    for name in observed:
        site = tr.get(name)
        if site is None:
            continue
        lp = np.asarray(site["fn"].log_prob(site["value"]))
        bad = int(np.size(lp) - np.count_nonzero(np.isfinite(lp)))
        if bad:
            parts.append(f"site {name!r} ({bad} of {np.size(lp)} values)")
    return "; non-finite log-likelihood at w* in " + ", ".join(parts) if parts else ""


def finish_posterior(
    *,
    loss_fn: Callable[[jax.Array, Mapping[str, jax.Array]], jax.Array],
    data: dict[str, jax.Array],
    n: int,
    center: jax.Array,
    unravel: Callable,
    sites: dict[str, tuple[int, ...]],
    backend: str,
    constrain: Callable | None,
    nbeta: float | None,
    gamma: float | str | None,
    info: dict[str, Any],
    explain_loss: Callable[[], str] | None = None,
) -> LocalPosterior:
    """Resolve nβ and γ, check that L_n(w*) and ∇L_n(w*) are finite
    (:func:`~slt_ppl.preflight.check_center_gradient` names non-finite gradient coordinates), and
    assemble the :class:`LocalPosterior`. ``explain_loss()``: text appended to the error when
    L_n(w*) is not finite (the backend names the observed sites at fault)."""
    from slt_ppl.errors import SettingError

    forget_loss_digests()  # the loss is traced afresh once per call (sampling.program_key)
    nbeta_value = resolve_nbeta(nbeta, n)
    try:  # one program for L_n(w*) and ∇L_n(w*) (the gradient is checked below)
        key = tagged("value_and_grad", loss_key(loss_fn, center, data, {n}))
        value, center_grad = keyed_call(key, jax.value_and_grad(loss_fn), center, data)
        center_loss = float(value)
    except SLTError:
        raise
    except Exception as err:  # user code under jit: non-traceable control flow, shape errors
        raise ModelError(
            f"evaluating the loss at the center under jax.jit failed with "
            f"{type(err).__name__}: {err}. The model/loss must be traceable by JAX (no Python "
            "branching on parameter or data values), differentiable in the parameters (the loss "
            "is evaluated together with its gradient), and accept the full data"
        ) from err
    if not np.isfinite(center_loss):
        raise ModelError(
            f"the loss at the center, L_n(w*) = {center_loss}, is not finite: the likelihood is "
            "improper there (e.g. zero scale, observations outside the support)"
            + (explain_loss() if explain_loss is not None else "")
        )
    info = dict(info)
    info["loss_center_full"] = center_loss
    # before γ's Hessian trace: an error naming the coordinates, not a wasted compile
    check_center_gradient(
        SimpleNamespace(backend=backend, center=center, unravel=unravel, info=info), center_grad
    )
    if gamma is None or gamma == "auto":
        gamma_value, hbar = unit_information_gamma(loss_fn, center, data, n, nbeta_value)
        info["gamma_rule"] = "unit-information: beta*max(1, tr H/d)"
        info["mean_hessian_diagonal"] = hbar
    else:
        try:
            gamma_value = float(gamma)
        except (TypeError, ValueError) as err:
            raise SettingError(f"gamma must be a number or 'auto', got {gamma!r}") from err
        if not (np.isfinite(gamma_value) and gamma_value >= 0):
            raise SettingError(f"gamma must be a non-negative finite number, got {gamma!r}")
        info["gamma_rule"] = "user"
    return LocalPosterior(
        loss_fn=loss_fn,
        data=data,
        n=n,
        nbeta=nbeta_value,
        gamma=gamma_value,
        center=center,
        unravel=unravel,
        sites=sites,
        backend=backend,
        constrain=constrain if constrain is not None else (lambda p: p),
        info=info,
    )
