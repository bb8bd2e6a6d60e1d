"""NumPyro adapter for the Fisher information: latent sites, prior draws, per-sample scores.

The latent sites (sample sites without ``obs``) are the parameters θ, flattened with
``jax.flatten_util.ravel_pytree`` over the sites in trace order. Sites with a constrained support
are handled in unconstrained coordinates u (``numpyro.distributions.biject_to``): θ = T(u) and the
scores are ∇_u log p(y_i | x_i, T(u)); for real-valued sites u = θ. Only the likelihood enters (no
Jacobian term).

Responses are drawn from p(y | x, θ) through the model: the latent values are substituted, the
observed sites have their ``obs`` removed by a small handler, and the model is run under ``seed``.
Per-sample scores use ``jax.vmap(jax.grad(...))`` over data points, each point passed as a batch of
one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.primitives import Messenger

from slt_ppl.errors import DataError, ModelError


class _Uncondition(Messenger):
    """Turn the named observed sample sites into sampled ones (the model's ``obs`` is ignored)."""

    def __init__(self, fn: Callable, names: set[str]):
        self.names = names
        super().__init__(fn)

    def process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] in self.names and msg["is_observed"]:
            msg["value"] = None
            msg["is_observed"] = False


def split_data(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Split data into per-datum arrays (leading axis n) and static keyword arguments."""
    arrays = {k: v for k, v in data.items() if hasattr(v, "shape") and np.ndim(v) >= 1}
    static = {k: v for k, v in data.items() if k not in arrays}
    if not arrays:
        raise DataError("data has no array with a leading data axis")
    lengths = {k: int(np.shape(v)[0]) for k, v in arrays.items()}
    n = max(lengths.values())
    batched = {k: v for k, v in arrays.items() if lengths[k] == n}
    static.update({k: v for k, v in arrays.items() if lengths[k] != n})
    for k, v in batched.items():
        arr = np.asarray(v)
        if np.issubdtype(arr.dtype, np.number) and not np.all(np.isfinite(arr)):
            raise DataError(f"data[{k!r}] has non-finite values")
    if n == 0:
        raise DataError("data are empty (leading length 0)")
    return {k: jnp.asarray(v) for k, v in batched.items()}, static, n


class NumPyroModelInfo:
    """Latent-site structure of a NumPyro model, read from one prior trace."""

    def __init__(self, model: Callable, data: Mapping[str, Any]):
        self.model = model
        self.batched, self.static, self.n = split_data(data)
        try:
            tr = handlers.trace(handlers.seed(model, 0)).get_trace(**self.batched, **self.static)
        except Exception as err:  # the user's model failed: report it as a model error
            raise ModelError(f"running the model on the data failed: {err!r}") from err
        self.site_names: list[str] = []
        self.observed: list[str] = []
        self.transforms: dict[str, Any] = {}
        init_u = {}
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                self.observed.append(name)
                continue
            if site["fn"].support.is_discrete:
                raise ModelError(
                    f"latent site {name!r} is discrete: the Fisher information needs continuous "
                    "parameters (marginalize it or observe it)"
                )
            t = biject_to(site["fn"].support)
            self.site_names.append(name)
            self.transforms[name] = t
            init_u[name] = t.inv(site["value"])
        if not self.observed:
            raise ModelError("the model has no observed sample site (pass the responses as obs=)")
        if not self.site_names:
            raise ModelError("the model has no latent sample site: there are no parameters")
        for name in self.observed:
            if np.ndim(tr[name]["value"]) < 1 or np.shape(tr[name]["value"])[0] != self.n:
                raise ModelError(
                    f"observed site {name!r} has shape {np.shape(tr[name]['value'])}: its leading "
                    f"axis must be the data axis of length {self.n} (use a plate over the data)"
                )
        flat, self.unravel = ravel_pytree([init_u[k] for k in self.site_names])
        self.d = int(flat.shape[0])
        self.site_shapes = {k: tuple(np.shape(init_u[k])) for k in self.site_names}
        sizes = np.cumsum([0] + [int(np.size(init_u[k])) for k in self.site_names])
        self.site_columns = {
            k: np.arange(sizes[i], sizes[i + 1]) for i, k in enumerate(self.site_names)
        }

    def _flat(self, u: Mapping[str, jax.Array]) -> jax.Array:
        return ravel_pytree([u[k] for k in self.site_names])[0]

    def constrain(self, u_flat: jax.Array) -> dict[str, jax.Array]:
        """Site values θ = T(u) from the flat unconstrained vector, T = ``biject_to(support)``."""
        u = self.unravel(u_flat)
        return {k: self.transforms[k](v) for k, v in zip(self.site_names, u, strict=True)}

    def prior_draws(self, num: int, seed: int) -> np.ndarray:
        """``num`` draws θ ~ prior, returned as flat unconstrained rows u = T⁻¹(θ), (num, d)."""

        def one(key):
            tr = handlers.trace(handlers.seed(self.model, key)).get_trace(
                **self.batched, **self.static
            )
            return self._flat({k: self.transforms[k].inv(tr[k]["value"]) for k in self.site_names})

        keys = jax.random.split(jax.random.PRNGKey(seed), num)
        return np.asarray(jax.vmap(one)(keys), dtype=np.float64)

    def to_unconstrained(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Rows u = T⁻¹(θ) for user-given constrained draws ``{site: (num, *shape)}``."""
        missing = [k for k in self.site_names if k not in values]
        if missing:
            raise DataError(f"theta draws miss latent site(s) {missing}")
        num = {int(np.shape(values[k])[0]) for k in self.site_names}
        if len(num) != 1:
            raise DataError(f"theta draws have different leading lengths per site: {sorted(num)}")
        rows = []
        for i in range(num.pop()):
            u = {}
            for k in self.site_names:
                v = jnp.asarray(values[k][i])
                if v.shape != self.site_shapes[k]:
                    raise DataError(
                        f"theta draw for site {k!r} has shape {v.shape}, expected "
                        f"{self.site_shapes[k]}"
                    )
                u[k] = self.transforms[k].inv(v)
            rows.append(np.asarray(self._flat(u)))
        return np.stack(rows).astype(np.float64)

    # -- responses and scores -------------------------------------------------------------------

    def simulate(self, u_flat: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """Draw every observed site from p(y | x, θ) through the model."""
        model = handlers.substitute(self.model, data=self.constrain(u_flat))
        model = handlers.seed(_Uncondition(model, set(self.observed)), key)
        tr = handlers.trace(model).get_trace(**self.batched, **self.static)
        return {k: tr[k]["value"] for k in self.observed}

    def observed_values(self) -> dict[str, jax.Array]:
        """The observed sites' values as passed in the data (the empirical Fisher's y)."""
        tr = handlers.trace(handlers.seed(self.model, 0)).get_trace(**self.batched, **self.static)
        return {k: tr[k]["value"] for k in self.observed}

    def loglik_point(self, u_flat: jax.Array, x_i: dict, y_i: dict) -> jax.Array:
        """log p(y_i | x_i, T(u)) for one data point (arrays without the data axis)."""
        one = {k: v[None] for k, v in x_i.items()}
        ys = {k: v[None] for k, v in y_i.items()}
        model = handlers.condition(
            handlers.substitute(self.model, data=self.constrain(u_flat)), data=ys
        )
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(**one, **self.static)
        return sum(jnp.sum(tr[k]["fn"].log_prob(tr[k]["value"])) for k in self.observed)

    def score_function(self, index: np.ndarray, empirical: bool) -> Callable:
        """(u_flat, seed) -> score matrix J (k × d, NumPy) over the data points ``index``."""
        x_sub = {k: v[index] for k, v in self.batched.items()}
        y_obs = {k: v[index] for k, v in self.observed_values().items()}
        grad_point = jax.vmap(jax.grad(self.loglik_point), in_axes=(None, 0, 0))

        def scores(u_flat, key):
            if empirical:
                ys = y_obs
            else:
                ys = {k: v[index] for k, v in self.simulate(u_flat, key).items()}
            return grad_point(u_flat, x_sub, ys)

        jitted = jax.jit(scores)
        dtype = jnp.result_type(float)

        def run(u_flat: np.ndarray, seed: int) -> np.ndarray:
            key = jax.random.PRNGKey(seed)
            return np.asarray(jitted(jnp.asarray(u_flat, dtype=dtype), key), dtype=np.float64)

        return run
