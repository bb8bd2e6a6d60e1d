"""Backends turn a user's model into a :class:`~slt_ppl.posterior.LocalPosterior`.

``localize`` is the one public entry point; it detects the kind of model it is given.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from slt_ppl.errors import SettingError
from slt_ppl.posterior import LocalPosterior

BACKENDS = ("numpyro", "jax", "pyro", "flax", "equinox")


def localize(
    model: Callable[..., Any],
    data: Mapping[str, Any],
    center: Any = None,
    *,
    nbeta: float | None = None,
    gamma: float | str | None = "auto",
    backend: str | None = None,
    restrict_to: Any = None,
    **kwargs: Any,
) -> LocalPosterior:
    """Build the localized tempered posterior p(w) ∝ exp(−nβ·L_n(w) − γ/2·‖w − w*‖²).

    Source: Lau, Furman, Wang, Murfet, Wei 2023 (arXiv 2308.12108); nβ = n/log n by default
    (Watanabe 2013).

    Args:
        model: a NumPyro model called as ``model(**data)``; a Pyro model (``backend="pyro"``, or
            detected); or a plain JAX function ``loss(params, batch)`` returning the mean per-datum
            NLL (``backend="jax"``, or detected from a two-argument signature).
        data: dict of arrays whose leading axis indexes the n data points; minibatches slice axis 0.
        center: w*: a dict of latent site values (constrained, as the model declares them) or, for a
            loss function, a pytree of parameters. For a ``torch.nn.Module`` it defaults to the
            module's current weights (see :func:`slt_ppl.backends.pyro_backend.from_module`).
        nbeta: nβ; default n/log n.
        gamma: γ; ``"auto"`` (default) picks the unit-information localization
            γ = β·max(1, tr ∇²L_n(w*)/d), see
            :func:`slt_ppl.backends.common.unit_information_gamma`.
        backend: force "numpyro", "jax" or "pyro".
        restrict_to: sample only some coordinates, the others stay at w* (the weight-refined
            LLC, Wang et al. 2024, arXiv 2410.02984): a regular expression (``re.fullmatch``
            against site names), a list of site names, or a dict site → boolean mask of the site's
            shape (True = sampled). γ="auto" is computed on the sampled coordinates. See
            :func:`slt_ppl.restrict.restrict` and docs/refined_llc.md.

    Returns:
        A :class:`LocalPosterior` over the flat vector of unconstrained parameters (the sampled
        ones when ``restrict_to`` is given).
    """
    from slt_ppl.preflight import check_center

    kind = backend or detect_backend(model, data)
    # a restriction computes an automatic γ once, on the sampled coordinates
    auto_gamma = restrict_to is not None and (gamma is None or gamma == "auto")
    posterior = _build(
        kind, model, data, center, nbeta=nbeta, gamma=1.0 if auto_gamma else gamma, **kwargs
    )
    if restrict_to is not None:
        from slt_ppl.restrict import restrict

        posterior = restrict(posterior, restrict_to, gamma="auto" if auto_gamma else None)
    check_center(posterior)  # JAX backends only; z on the sampled coordinates
    return posterior


def _build(
    kind: str,
    model: Callable[..., Any],
    data: Mapping[str, Any],
    center: Any,
    *,
    nbeta: float | None,
    gamma: float | str | None,
    **kwargs: Any,
) -> LocalPosterior:
    """The posterior of ``model`` by the backend ``kind``."""
    if kind in ("numpyro", "jax"):
        if kind == "numpyro":
            from slt_ppl.backends.numpyro_backend import localize_numpyro as build
        else:
            from slt_ppl.backends.jax_loss import localize_loss as build
        if kwargs:
            raise SettingError(
                f"unknown keyword argument(s) {sorted(kwargs)} for the {kind} backend; localize "
                "takes nbeta, gamma, backend and restrict_to"
            )
        return build(model, data, center, nbeta=nbeta, gamma=gamma)
    if kind == "pyro":
        try:
            from slt_ppl.backends.pyro_backend import localize_pyro
        except ImportError as err:
            raise SettingError(
                f"the Pyro backend needs torch and pyro-ppl installed ({err}); "
                'install them with pip install torch==2.13.0 "slt_ppl[torch]"'
            ) from err
        return localize_pyro(model, data, center, nbeta=nbeta, gamma=gamma, **kwargs)
    if kind in ("flax", "equinox"):
        return _build_module(kind, model, data, center, nbeta=nbeta, gamma=gamma, **kwargs)
    raise SettingError(f"unknown backend {kind!r}; choose one of {BACKENDS}")


def _build_module(
    kind: str,
    model: Any,
    data: Mapping[str, Any],
    center: Any,
    *,
    nbeta: float | None,
    gamma: float | str | None,
    loss_fn: Any = None,
    **options: Any,
) -> LocalPosterior:
    """A Flax or Equinox module through :mod:`slt_ppl.backends.flax_backend` (a Linen module's
    variables may come as ``center``)."""
    from slt_ppl.backends import flax_backend

    if loss_fn is None:
        raise SettingError(
            f"a {kind} module needs loss_fn=: loss_fn(output, batch) -> per-sample losses (b,) or "
            "(b, T); see slt_ppl.backends.flax_backend"
        )
    if kind == "equinox":
        if center is not None:
            raise SettingError(
                "center is taken from the Equinox module's current weights; pass center=None"
            )
        return flax_backend.localize_equinox(
            model, data, loss_fn, nbeta=nbeta, gamma=gamma, **options
        )
    if center is not None:  # a Linen module's variables (an NNX module refuses them)
        if "variables" in options:
            raise SettingError("pass the Linen variables once: as center or as variables=")
        options["variables"] = center
    return flax_backend.localize_flax(model, data, loss_fn, nbeta=nbeta, gamma=gamma, **options)


def detect_backend(model: Any, data: Mapping[str, Any]) -> str:
    """Guess the backend: Flax / Equinox modules → "flax" / "equinox"; torch modules and Pyro
    models → "pyro"; two-argument functions whose parameters are not data keys → "jax"; anything
    else → "numpyro"."""
    from slt_ppl.backends.flax_backend import module_framework

    framework = module_framework(model)
    if framework is not None:
        return framework
    module = type(model).__module__ if not callable(model) or hasattr(model, "forward") else ""
    if module.startswith("torch") or hasattr(model, "forward"):
        return "pyro"
    fn = model.func if isinstance(model, functools.partial) else model
    source_module = getattr(inspect.getmodule(fn), "__name__", "") or ""
    globals_ = getattr(fn, "__globals__", {})
    names = set(getattr(getattr(fn, "__code__", None), "co_names", ()))
    if names & {"pyro", "numpyro"}:  # the body names its PPL: trust that over the module globals
        globals_ = names
    uses_pyro = "pyro" in globals_ and "numpyro" not in globals_
    if uses_pyro or source_module.startswith("pyro"):
        return "pyro"
    try:
        params = [
            p
            for p in inspect.signature(model).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return "numpyro"
    names = {p.name for p in params}
    if len(params) == 2 and not (names & set(data)) and all(p.default is p.empty for p in params):
        return "jax"
    return "numpyro"
