"""Pyro adapter for the Fisher information (torch and pyro are imported lazily: both optional).

Same contract as :mod:`slt_ppl.estimators.fisher_numpyro`: latent sites in trace order, flattened
into one vector of unconstrained coordinates (``torch.distributions.biject_to`` of each support),
responses drawn through the model with ``poutine.uncondition`` and ``poutine.condition`` on the
latent values, per-sample scores by ``torch.func.vmap(torch.func.grad(...))`` over data points (each
point passed as a batch of one). Pyro's argument validation is switched off while scoring, since
its data-dependent checks cannot run under ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from slt_ppl.errors import DataError, ModelError


def _torch():
    try:
        import pyro
        import torch
    except ImportError as err:  # torch is an optional extra
        raise ModelError(
            "the Pyro backend needs torch and pyro-ppl: pip install slt_ppl[torch]"
        ) from err
    return torch, pyro


class PyroModelInfo:
    """Latent-site structure of a Pyro model, read from one prior trace."""

    def __init__(self, model: Callable, data: Mapping[str, Any]):
        torch, pyro = _torch()
        from pyro import poutine
        from pyro.poutine.util import site_is_subsample

        self.torch, self.pyro, self.poutine = torch, pyro, poutine
        self.model = model
        arrays = {k: v for k, v in data.items() if isinstance(v, torch.Tensor) and v.dim() >= 1}
        if not arrays:
            raise DataError("data has no tensor with a leading data axis")
        # Fisher and effective dimension of torch models run on the CPU (draws and scores go
        # through NumPy); a GPU tensor would fail deep inside the model or at .numpy()
        for k, v in data.items():
            if isinstance(v, torch.Tensor) and v.device.type != "cpu":
                raise DataError(
                    f"data[{k!r}] is on device {v.device}; the Fisher / effective-dimension "
                    "estimators of torch models run on the CPU: pass v.cpu()"
                )
        self.n = max(int(v.shape[0]) for v in arrays.values())
        if self.n == 0:
            raise DataError("data are empty (leading length 0)")
        self.batched = {k: v for k, v in arrays.items() if v.shape[0] == self.n}
        self.static = {k: v for k, v in data.items() if k not in self.batched}
        for k, v in self.batched.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise DataError(f"data[{k!r}] has non-finite values")
        try:
            with pyro.validation_enabled(False):
                tr = poutine.trace(model).get_trace(**self.batched, **self.static)
        except Exception as err:  # the user's model failed: report it as a model error
            raise ModelError(f"running the model on the data failed: {err!r}") from err
        self.site_names: list[str] = []
        self.observed: list[str] = []
        self.transforms: dict[str, Any] = {}
        self.site_shapes: dict[str, tuple[int, ...]] = {}
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                self.observed.append(name)
                continue
            if site["fn"].support.is_discrete:
                raise ModelError(
                    f"latent site {name!r} is discrete: the Fisher information needs continuous "
                    "parameters (marginalize it or observe it)"
                )
            t = torch.distributions.biject_to(site["fn"].support)
            self.site_names.append(name)
            self.transforms[name] = t
            self.site_shapes[name] = tuple(t.inv(site["value"]).shape)
        if not self.observed:
            raise ModelError("the model has no observed sample site (pass the responses as obs=)")
        if not self.site_names:
            raise ModelError("the model has no latent sample site: there are no parameters")
        self.y_obs = {}
        for name in self.observed:
            value = tr.nodes[name]["value"]
            if value.dim() < 1 or value.shape[0] != self.n:
                raise ModelError(
                    f"observed site {name!r} has shape {tuple(value.shape)}: its leading axis must "
                    f"be the data axis of length {self.n} (use a plate over the data)"
                )
            self.y_obs[name] = value.detach()
        sizes = np.cumsum([0] + [int(np.prod(self.site_shapes[k])) for k in self.site_names])
        self.site_columns = {
            k: np.arange(sizes[i], sizes[i + 1]) for i, k in enumerate(self.site_names)
        }
        self.d = int(sizes[-1])
        self.dtype = torch.get_default_dtype()

    def constrain(self, u_flat: Any) -> dict[str, Any]:
        """Site values θ = T(u) from the flat unconstrained tensor, T = ``biject_to(support)``."""
        out = {}
        for k in self.site_names:
            cols = self.site_columns[k]
            piece = u_flat[int(cols[0]) : int(cols[-1]) + 1].reshape(self.site_shapes[k])
            out[k] = self.transforms[k](piece)
        return out

    def _flat(self, u: Mapping[str, Any]) -> Any:
        return self.torch.cat([u[k].reshape(-1) for k in self.site_names])

    def prior_draws(self, num: int, seed: int) -> np.ndarray:
        """``num`` draws θ ~ prior, returned as flat unconstrained rows u = T⁻¹(θ), (num, d)."""
        self.pyro.set_rng_seed(seed)
        rows = []
        with self.pyro.validation_enabled(False):
            for _ in range(num):
                tr = self.poutine.trace(self.model).get_trace(**self.batched, **self.static)
                u = {k: self.transforms[k].inv(tr.nodes[k]["value"]) for k in self.site_names}
                rows.append(self._flat(u).detach().double().numpy())
        return np.stack(rows)

    def to_unconstrained(self, values: Mapping[str, Any]) -> np.ndarray:
        """Rows u = T⁻¹(θ) for user-given constrained draws ``{site: (num, *shape)}``."""
        missing = [k for k in self.site_names if k not in values]
        if missing:
            raise DataError(f"theta draws miss latent site(s) {missing}")
        torch = self.torch
        num = {int(np.shape(values[k])[0]) for k in self.site_names}
        if len(num) != 1:
            raise DataError(f"theta draws have different leading lengths per site: {sorted(num)}")
        rows = []
        for i in range(num.pop()):
            u = {}
            for k in self.site_names:
                v = torch.as_tensor(np.asarray(values[k][i]), dtype=self.dtype)
                u[k] = self.transforms[k].inv(v)
                if tuple(u[k].shape) != self.site_shapes[k]:
                    raise DataError(
                        f"theta draw for site {k!r} has the wrong shape {tuple(v.shape)}"
                    )
            rows.append(self._flat(u).detach().double().numpy())
        return np.stack(rows)

    def simulate(self, u_flat: Any, seed: int) -> dict[str, Any]:
        """Draw every observed site from p(y | x, θ) through the model."""
        poutine = self.poutine
        self.pyro.set_rng_seed(seed)
        model = poutine.condition(poutine.uncondition(self.model), data=self.constrain(u_flat))
        with self.pyro.validation_enabled(False):
            tr = poutine.trace(model).get_trace(**self.batched, **self.static)
        return {k: tr.nodes[k]["value"].detach() for k in self.observed}

    def loglik_point(self, u_flat: Any, x_i: dict, y_i: dict) -> Any:
        """log p(y_i | x_i, T(u)) for one data point (tensors without the data axis)."""
        poutine = self.poutine
        one = {k: v.unsqueeze(0) for k, v in x_i.items()}
        cond = {k: v.unsqueeze(0) for k, v in y_i.items()}
        cond.update(self.constrain(u_flat))
        tr = poutine.trace(poutine.condition(self.model, data=cond)).get_trace(**one, **self.static)
        return sum(tr.nodes[k]["fn"].log_prob(tr.nodes[k]["value"]).sum() for k in self.observed)

    def score_function(self, index: np.ndarray, empirical: bool) -> Callable:
        """(u_flat, seed) -> score matrix J (k × d, NumPy) over the data points ``index``."""
        torch = self.torch
        from torch.func import grad, vmap

        idx = torch.as_tensor(index, dtype=torch.long)
        x_sub = {k: v[idx] for k, v in self.batched.items()}
        grad_point = vmap(grad(self.loglik_point), in_dims=(None, 0, 0))

        def run(u_flat: np.ndarray, seed: int) -> np.ndarray:
            u = torch.as_tensor(u_flat, dtype=self.dtype)
            if empirical:
                ys = {k: v[idx] for k, v in self.y_obs.items()}
            else:
                ys = {k: v[idx] for k, v in self.simulate(u, seed).items()}
            with self.pyro.validation_enabled(False):
                j = grad_point(u, x_sub, ys)
            return j.detach().double().numpy()

        return run
