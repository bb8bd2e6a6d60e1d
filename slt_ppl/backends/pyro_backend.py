"""Pyro adapter: an unmodified Pyro model (or a trained ``torch.nn.Module``) becomes a
:class:`~slt_ppl.posterior_torch.TorchLocalPosterior`.

Mirrors :mod:`slt_ppl.backends.numpyro_backend` with Pyro's effect handlers (``pyro.poutine``):

- ``trace(model)`` once on a few rows, to find the latent and observed sample sites and their
  supports;
- ``condition(model, data=constrained_params)`` to evaluate the model at a given w;
- the observed sites' log-probabilities (times the site's ``mask``) summed and divided by the batch
  length give −L_B(w). Priors are *not* part of U: the Gaussian localization plays the prior's role
  (Lau et al. 2023). Plates that subsample (``subsample_size``, ``subsample=``) and
  ``poutine.scale`` around observed sites raise :class:`~slt_ppl.errors.ModelError`
  (``backends.common`` says why).

Latent sites live in unconstrained space through ``torch.distributions.biject_to(support)``; w is
the
concatenation of the unconstrained values in trace order. The loss is pure torch, so
``torch.func.vmap``/``grad`` batch it over chains; Pyro's argument validation is switched off
inside it
(validation branches on tensor values, which ``vmap`` cannot do) — the center is validated instead.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import site_is_subsample

from slt_ppl.backends.common import (
    check_observed_scale,
    resolve_nbeta,
    subsample_error,
    validate_data,
)
from slt_ppl.backends.torch_common import unit_information_gamma
from slt_ppl.errors import CenterError, ModelError, SettingError, SLTError
from slt_ppl.posterior_torch import TorchLocalPosterior, default_device
from slt_ppl.preflight import check_center_gradient

Tensor = torch.Tensor
LIKELIHOODS = ("gaussian", "categorical", "bernoulli")


class _RejectSubsampling(Messenger):
    """Raise :class:`ModelError` at a ``pyro.plate`` that subsamples, before Pyro draws (or checks)
    the subsample."""

    def _process_message(self, msg: dict) -> None:
        fn = msg.get("fn")
        if msg["type"] != "sample" or not isinstance(fn, _Subsample):
            return
        given = msg.get("value")
        if fn.subsample_size is not None and fn.subsample_size != fn.size:
            raise subsample_error(msg["name"], f"subsample_size={fn.subsample_size}", "pyro")
        if given is not None and len(given) != fn.size:
            raise subsample_error(msg["name"], f"subsample=<{len(given)} indices>", "pyro")


def on_device(device: torch.device) -> Any:
    """A context in which the model's own tensor constructors land on ``device``.

    Pyro models are written without a device: ``dist.Normal(0.0, 1.0)`` makes its parameters with
    torch's default device, the CPU. With the data on a GPU such a model fails at its first
    ``x @ w`` (prior draw on the CPU, data on cuda; seen on an H200 in session 17, where every
    Pyro run of ``benchmarks/llc_speed.py`` failed so). Every call of the model therefore runs
    under ``torch.device(device)``, which sets the default device of factory functions. On the
    CPU nothing is entered: torch's device context is a function mode, a small cost per op.
    """
    device = torch.device(device)
    return contextlib.nullcontext() if device.type == "cpu" else device


def _device_of(tensors: Mapping[str, Tensor]) -> torch.device:
    first = next((v for v in tensors.values() if isinstance(v, Tensor)), None)
    return first.device if first is not None else torch.device("cpu")


def trace_model(model: Callable[..., Any], data: Mapping[str, Tensor]) -> poutine.Trace:
    """Run the model once under ``poutine.trace`` on ``data`` (on the data's device,
    ``on_device``) and return its trace."""
    try:
        with torch.no_grad(), on_device(_device_of(data)):
            return poutine.trace(_RejectSubsampling()(model)).get_trace(**data)
    except TypeError as err:
        raise ModelError(
            f"calling the model as model(**data) with data keys {sorted(data)} failed: {err}. "
            "The data dict's keys must be the model's keyword arguments."
        ) from err
    except SLTError as err:
        # Pyro's trace re-raises errors with the trace's shapes appended: raise ours as written
        cause = err.__cause__
        raise (cause if isinstance(cause, SLTError) else err) from None
    except Exception as err:  # the user's model failed on the user's data: say which call
        shapes = {k: tuple(v.shape) for k, v in data.items()}
        raise ModelError(
            f"the model raised {type(err).__name__} when called as model(**data) with data shapes "
            f"{shapes}: {err}"
        ) from err


def split_sites(tr: poutine.Trace) -> tuple[dict[str, dict], dict[str, dict]]:
    """Latent and observed sample sites of a trace; discrete latent sites raise
    :class:`ModelError`."""
    latent: dict[str, dict] = {}
    observed: dict[str, dict] = {}
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            check_observed_scale(name, site.get("scale"), "pyro")
            observed[name] = site
            continue
        fn = site["fn"]
        if getattr(fn.support, "is_discrete", False) or getattr(fn, "has_enumerate_support", False):
            raise ModelError(
                f"latent site {name!r} is discrete ({type(fn).__name__}); the local posterior "
                "needs continuous parameters. Marginalize it (e.g. Pyro's enumeration)"
                " or observe it."
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


def unconstrain_center(
    center: Mapping[str, Any], latent: Mapping[str, dict], device: torch.device
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Check the center against the latent sites and map it to unconstrained space."""
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
    transforms = {
        name: torch.distributions.biject_to(site["fn"].support) for name, site in latent.items()
    }
    unconstrained: dict[str, Tensor] = {}
    for name, site in latent.items():
        value = _as_tensor(center[name], device)
        expected = tuple(site["value"].shape)
        if tuple(value.shape) != expected:
            raise CenterError(
                f"center[{name!r}] has shape {tuple(value.shape)}, "
                f"the model's site has shape {expected}"
            )
        if not bool(torch.all(torch.isfinite(value))):
            raise CenterError(f"center[{name!r}] holds non-finite values")
        inside = site["fn"].support.check(value)
        with torch.no_grad():
            u = transforms[name].inv(value)
        if not bool(torch.all(inside)) or not bool(torch.all(torch.isfinite(u))):
            raise CenterError(
                f"center[{name!r}] lies outside the support {site['fn'].support} "
                "of its distribution"
            )
        unconstrained[name] = u
    return unconstrained, transforms


def _as_tensor(value: Any, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        value = value.detach()
    return torch.as_tensor(np.asarray(value.cpu() if isinstance(value, Tensor) else value)).to(
        device=device, dtype=torch.get_default_dtype()
    )


def make_unravel(shapes: Mapping[str, tuple[int, ...]]) -> Callable[[Tensor], dict[str, Tensor]]:
    """Flat vector → dict of site tensors (trace order), the inverse of concatenating the
    ravelled sites."""
    names = list(shapes)
    sizes = [math.prod(shapes[k]) for k in names]

    def unravel(w: Tensor) -> dict[str, Tensor]:
        parts = torch.split(w, sizes, dim=-1)
        return {
            k: p.reshape((*w.shape[:-1], *shapes[k])) for k, p in zip(names, parts, strict=True)
        }

    return unravel


def make_loss_fn(
    model: Callable[..., Any],
    observed_names: list[str],
    unravel: Callable[[Tensor], dict[str, Tensor]],
    transforms: Mapping[str, Any],
) -> tuple[Callable[[Tensor, Mapping[str, Tensor]], Tensor], Callable]:
    """L_B(w) = −(1/B)·Σ_{observed sites} mask·log p(obs | w), with B the batch length (scaled
    sites were rejected when the model was traced)."""

    def constrain(params_u: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: transforms[k](v) for k, v in params_u.items()}

    def loss_fn(w: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        params = constrain(unravel(w))
        with pyro.validation_enabled(False), on_device(w.device):
            tr = poutine.trace(poutine.condition(model, data=params)).get_trace(**batch)
        log_lik = 0.0
        for name in observed_names:
            site = tr.nodes[name]
            lp = site["fn"].log_prob(site["value"])
            if site.get("mask") is not None:
                lp = lp * site["mask"]
            log_lik = log_lik + torch.sum(lp)
        batch_len = next(iter(batch.values())).shape[0]
        return -log_lik / batch_len

    return loss_fn, constrain


def localize_pyro(
    model: Callable[..., Any] | torch.nn.Module,
    data: Mapping[str, Any],
    center: Mapping[str, Any] | None = None,
    *,
    nbeta: float | None = None,
    gamma: float | str | None = None,
    device: str | torch.device | None = None,
    **module_options: Any,
) -> TorchLocalPosterior:
    """Build the local posterior of a Pyro model called as ``model(**data)`` (see the module
    docstring).

    A ``torch.nn.Module`` is first turned into a Pyro model by :func:`from_module`
    (``module_options``:
    likelihood, noise, input_key, target_key); its center defaults to the module's current weights.
    With ``loss_fn=`` (``loss_fn(module_output, batch) -> ℓ``, shape (b,) or (b, T)) the module's
    loss is the user's instead (:func:`localize_module_loss`).
    ``device`` defaults to the module's device, else cuda if available, else cpu.
    """
    if isinstance(model, torch.nn.Module) and module_options.get("loss_fn") is not None:
        extra = sorted(set(module_options) - {"loss_fn", "input_key"})
        if extra:
            raise SettingError(
                f"options {extra} do not apply with loss_fn=: the user's loss replaces the "
                "likelihood (loss_fn(module_output, batch) -> per-row or per-token NLL)"
            )
        return localize_module_loss(
            model, data, center, nbeta=nbeta, gamma=gamma, device=device, **module_options
        )
    if isinstance(model, torch.nn.Module):
        first = next(model.parameters(), None)
        device = device or (first.device if first is not None else None)
        model, module_center = from_module(model, **module_options)
        center = module_center if center is None else center
    elif module_options:
        raise SettingError(
            f"unexpected options {sorted(module_options)}: likelihood/noise/input_key/target_key "
            "apply to torch.nn.Module models only"
        )
    if center is None:
        raise CenterError("center is required for a Pyro model: a dict of latent site values")
    dev = torch.device(device) if device is not None else default_device()
    arrays, n = validate_data(data)
    tdata = {k: _data_tensor(v, dev) for k, v in arrays.items()}
    probe = {k: v[: min(n, 8)] for k, v in tdata.items()}
    tr = trace_model(model, probe)
    latent, observed = split_sites(tr)
    params_u, transforms = unconstrain_center(center, latent, dev)
    shapes = {k: tuple(v.shape) for k, v in params_u.items()}
    unravel = make_unravel(shapes)
    flat_center = torch.cat([v.reshape(-1) for v in params_u.values()])
    loss_fn, constrain = make_loss_fn(model, list(observed), unravel, transforms)
    return finish_posterior(
        loss_fn=loss_fn,
        data=tdata,
        n=n,
        center=flat_center,
        unravel=unravel,
        sites={k: tuple(s["value"].shape) for k, s in latent.items()},
        constrain=constrain,
        nbeta=nbeta,
        gamma=gamma,
        device=dev,
        info={"model": getattr(model, "__name__", type(model).__name__)},
        explain_loss=lambda: nonfinite_sites(
            model, tdata, constrain(unravel(flat_center)), observed
        ),
    )


def localize_module_loss(
    module: torch.nn.Module,
    data: Mapping[str, Any],
    center: Mapping[str, Any] | None = None,
    *,
    loss_fn: Callable[[Any, Mapping[str, Tensor]], Tensor],
    input_key: str = "x",
    nbeta: float | None = None,
    gamma: float | str | None = None,
    device: str | torch.device | None = None,
) -> TorchLocalPosterior:
    """The local posterior of an ``nn.Module`` under a user loss (no Pyro model involved).

    ``loss_fn(module_output, batch) -> ℓ`` returns the per-row NLL, shape (b,), or the per-token
    NLL, shape (b, T), where ``module_output = functional_call(module, params, batch[input_key])``.
    Then per_sample_loss(w, batch) = ℓ and L_B(w) = mean of ℓ over rows and tokens. Counting (docs/
    observables.md): n = rows (sequences, the i.i.d. units that minibatches draw); for per-token
    losses L_n is the mean per-token NLL and the default nβ is T·n/log n, so that nβ·L_n =
    β·Σ_rows NLL(row) with β = 1/log n (Watanabe's WBIC temperature for n sequences): the same
    tempered posterior as per-sequence losses, and λ̂ the LLC of the sequence model. One latent
    site per named parameter (unconstrained, identity transform); buffers keep their values.
    """
    names_shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    if not names_shapes:
        raise ModelError("the module has no parameters: there is nothing to sample")
    if not callable(loss_fn):
        raise SettingError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    first = next(module.parameters())
    dev = torch.device(device) if device is not None else first.device
    arrays, n = validate_data(data)
    if input_key not in arrays:
        raise SettingError(f"the data dict has no input key {input_key!r} (keys {sorted(arrays)})")
    tdata = {k: _data_tensor(v, dev) for k, v in arrays.items()}
    weights = {k: p.detach() for k, p in module.named_parameters()} if center is None else center
    params, _ = unconstrain_center(weights, {k: {"value": torch.zeros(s), "fn": _REAL} for k, s in
                                             names_shapes.items()}, dev)  # fmt: skip
    unravel = make_unravel(names_shapes)
    flat_center = torch.cat([v.reshape(-1) for v in params.values()])

    def per_sample_loss(w: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        output = torch.func.functional_call(module, unravel(w), (batch[input_key],))
        return loss_fn(output, batch)

    def mean_loss(w: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return torch.mean(per_sample_loss(w, batch))

    tokens = _loss_tokens(per_sample_loss, flat_center, tdata, n)
    info = {"model": f"{type(module).__name__}_loss_fn", "tokens_per_row": tokens}
    if nbeta is None and tokens:
        nbeta = tokens * n / math.log(n)
        info["nbeta_rule"] = "T*n/log n (n rows of T tokens; docs/observables.md)"
    post = finish_posterior(
        loss_fn=mean_loss, data=tdata, n=n, center=flat_center, unravel=unravel,
        sites=names_shapes, constrain=lambda p: p, nbeta=nbeta, gamma=gamma, device=dev,
        info=info,
    )  # fmt: skip
    return post.replace(per_sample_loss=per_sample_loss)


_REAL = SimpleNamespace(support=dist.constraints.real)


def _loss_tokens(
    per_sample_loss: Callable[[Tensor, Mapping[str, Tensor]], Tensor],
    center: Tensor,
    data: Mapping[str, Tensor],
    n: int,
) -> int:
    """Tokens per row of the user's loss (0 for per-row losses), checked on a few rows."""
    rows = min(n, 4)
    try:
        with torch.no_grad():
            values = per_sample_loss(center, {k: v[:rows] for k, v in data.items()})
    except Exception as err:  # the user's module or loss failed: say which call
        raise ModelError(
            f"loss_fn(module(batch[input_key]), batch) failed on {rows} rows with "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(values, Tensor) or values.dim() not in (1, 2) or values.shape[0] != rows:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ModelError(
            f"loss_fn must return per-row losses of shape ({rows},) or per-token losses of shape "
            f"({rows}, T) for a batch of {rows} rows, got {shape}"
        )
    return int(values.shape[1]) if values.dim() == 2 else 0


def nonfinite_sites(
    model: Callable[..., Any],
    data: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
    observed: Mapping[str, dict],
) -> str:
    """'; non-finite log-likelihood at w* in site 'y' (3 of 10 values)' ('' if none is found)."""
    with torch.no_grad(), pyro.validation_enabled(False), on_device(_device_of(data)):
        tr = poutine.trace(poutine.condition(model, data=dict(params))).get_trace(**data)
        parts = []
        for name in observed:
            site = tr.nodes.get(name)
            if site is None:
                continue
            lp = site["fn"].log_prob(site["value"])
            bad = int(lp.numel() - torch.isfinite(lp).sum())
            if bad:
                parts.append(f"site {name!r} ({bad} of {lp.numel()} values)")
    return "; non-finite log-likelihood at w* in " + ", ".join(parts) if parts else ""


def _data_tensor(arr: np.ndarray, device: torch.device) -> Tensor:
    t = torch.as_tensor(arr)
    if t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    elif t.dtype != torch.bool:
        t = t.to(torch.int64)
    return t.to(device)


def finish_posterior(
    *,
    loss_fn: Callable[[Tensor, Mapping[str, Tensor]], Tensor],
    data: dict[str, Tensor],
    n: int,
    center: Tensor,
    unravel: Callable,
    sites: dict[str, tuple[int, ...]],
    constrain: Callable,
    nbeta: float | None,
    gamma: float | str | None,
    device: torch.device,
    info: dict[str, Any],
    explain_loss: Callable[[], str] | None = None,
) -> TorchLocalPosterior:
    """Resolve nβ and γ, check that L_n(w*) and ∇L_n(w*) are finite, and assemble the
    :class:`TorchLocalPosterior` (``explain_loss()``: text appended to the error when L_n(w*) is
    not finite)."""
    nbeta_value = resolve_nbeta(nbeta, n)
    # one pass for L_n(w*) and ∇L_n(w*) (the gradient is checked once the posterior exists)
    try:
        center_grad, value = torch.func.grad_and_value(lambda w: loss_fn(w, data))(center)
    except SLTError:
        raise
    except Exception as err:  # user code torch.func cannot differentiate, shape errors
        raise ModelError(
            f"evaluating the loss and its gradient at the center failed with "
            f"{type(err).__name__}: {err}. The model must be differentiable by torch.func in its "
            "latent sites and accept the full data"
        ) from err
    center_loss = float(value)
    if not math.isfinite(center_loss):
        raise ModelError(
            f"the loss at the center, L_n(w*) = {center_loss}, is not finite: the likelihood is "
            "improper there (e.g. zero scale, observations outside the support)"
            + (explain_loss() if explain_loss is not None else "")
        )
    info = dict(info)
    info["loss_center_full"] = center_loss
    # before γ's Hessian trace: an error naming the coordinates, not a wasted compile
    check_center_gradient(
        SimpleNamespace(backend="pyro", center=center, unravel=unravel, info=info), center_grad
    )
    info["device"] = str(device)
    if gamma is None or gamma == "auto":
        gamma_value, hbar = unit_information_gamma(loss_fn, center, data, n, nbeta_value)
        info["gamma_rule"] = "unit-information: beta*max(1, tr H/d)"
        info["mean_hessian_diagonal"] = hbar
    else:
        try:
            gamma_value = float(gamma)
        except (TypeError, ValueError) as err:
            raise SettingError(f"gamma must be a number or 'auto', got {gamma!r}") from err
        if not (math.isfinite(gamma_value) and gamma_value >= 0):
            raise SettingError(f"gamma must be a non-negative finite number, got {gamma!r}")
        info["gamma_rule"] = "user"
    return TorchLocalPosterior(
        loss_fn=loss_fn,
        data=data,
        n=n,
        nbeta=nbeta_value,
        gamma=gamma_value,
        center=center,
        unravel=unravel,
        sites=sites,
        backend="pyro",
        constrain=constrain,
        info=info,
        device=device,
    )


def from_module(
    module: torch.nn.Module,
    likelihood: str | Callable[[Tensor], Any] = "gaussian",
    *,
    noise: float = 1.0,
    input_key: str = "x",
    target_key: str = "y",
) -> tuple[Callable[..., None], dict[str, Tensor]]:
    """A trained ``nn.Module`` and its likelihood as a Pyro model, plus its current weights as
    center.

    The model is ``model(**batch)`` with ``f = functional_call(module, params, batch[input_key])``
    (``torch.func.functional_call``: the module is evaluated with the sampled weights swapped in,
    so no
    ``PyroModule`` rewrite is needed; buffers keep their current values — put the module in
    ``eval()``
    mode first if it has dropout or batch norm). One latent site per named parameter (name as in
    ``named_parameters``), prior N(0, 1) (unused by U: the localization replaces it), and

        "gaussian":    y ~ N(f, noise²)        (f reshaped to y's shape when sizes agree)
        "categorical": y ~ Categorical(logits=f)
        "bernoulli":   y ~ Bernoulli(logits=f)
        callable:      y ~ likelihood(f), a distribution whose batch shape is (B,)

    with each data row one plate element.
    """
    if not callable(likelihood) and likelihood not in LIKELIHOODS:
        raise SettingError(
            f"likelihood must be one of {LIKELIHOODS} or a callable, got {likelihood!r}"
        )
    names_shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    if not names_shapes:
        raise ModelError("the module has no parameters: there is nothing to sample")
    center = {name: p.detach().clone() for name, p in module.named_parameters()}

    def model(**batch: Tensor) -> None:
        if input_key not in batch:
            raise TypeError(f"the data dict needs the input key {input_key!r}")
        x = batch[input_key]
        y = batch.get(target_key)
        params = {
            name: pyro.sample(name, dist.Normal(0.0, 1.0).expand(list(shape)).to_event(len(shape)))
            for name, shape in names_shapes.items()
        }
        f = torch.func.functional_call(module, params, (x,))
        with pyro.plate("data", x.shape[0]):
            pyro.sample(target_key, _likelihood(likelihood, f, y, noise), obs=y)

    model.__name__ = (
        f"{type(module).__name__}_{likelihood if isinstance(likelihood, str) else 'custom'}"
    )
    return model, center


def _likelihood(kind: str | Callable, f: Tensor, y: Tensor | None, noise: float) -> Any:
    if callable(kind):
        return kind(f)
    if kind == "categorical":
        return dist.Categorical(logits=f)
    if y is not None and f.shape != y.shape and f.numel() == y.numel():
        f = f.reshape(y.shape)
    event = f.dim() - 1
    if kind == "gaussian":
        return dist.Normal(f, noise).to_event(event)
    return dist.Bernoulli(logits=f).to_event(event)
