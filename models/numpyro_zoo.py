"""The model zoo in NumPyro. Each model is a plain NumPyro function called as ``model(**data)``;
``PROBLEMS`` maps a name to a builder returning (model, Problem)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from models import data as zoo
from models.data import Problem


def dln_model(
    x: jnp.ndarray, y: jnp.ndarray | None = None, *, widths: tuple[int, ...], noise: float = 1.0
):
    """Deep linear network y ~ N(W_M⋯W_1·x, noise²) with standard normal priors on the weights."""
    f = x
    for i in range(len(widths) - 1):
        w = numpyro.sample(
            f"w{i}", dist.Normal(0.0, 1.0).expand([widths[i + 1], widths[i]]).to_event(2)
        )
        f = f @ w.T
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(f, noise).to_event(1), obs=y)


def linear_regression_model(x: jnp.ndarray, y: jnp.ndarray | None = None, *, noise: float = 1.0):
    """y ~ N(x·w, noise²), w ~ N(0, I)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, noise), obs=y)


def normal_crossing_model(
    x: jnp.ndarray, y: jnp.ndarray | None = None, *, powers: tuple[int, ...], noise: float = 1.0
):
    """y ~ N(x·Π w_i^{p_i}, noise²)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([len(powers)]).to_event(1))
    coef = jnp.prod(w ** jnp.asarray(powers))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x * coef, noise), obs=y)


def tanh_model(x: jnp.ndarray, y: jnp.ndarray | None = None, *, hidden: int, noise: float = 1.0):
    """y ~ N(Σ_k a_k·tanh(b_k·x), noise²) with one input and one output, a, b ~ N(0, I_hidden)."""
    a = numpyro.sample("a", dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
    f = jnp.tanh(x * b) @ a  # x: (n, 1) → (n, hidden) → (n,)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(f[:, None], noise).to_event(1), obs=y)


def relu_mlp_model(
    x: jnp.ndarray, y: jnp.ndarray | None = None, *, widths: tuple[int, ...], noise: float = 1.0
):
    """ReLU MLP regression y ~ N(f(x), noise²), f(x) = W_M·relu(⋯relu(W_1·x + b_1)⋯) + b_M, with
    standard normal priors on every weight ``w{l}`` (shape (H_{l+1}, H_l)) and bias ``b{l}``."""
    f = x
    depth = len(widths) - 1
    for i in range(depth):
        w = numpyro.sample(
            f"w{i}", dist.Normal(0.0, 1.0).expand([widths[i + 1], widths[i]]).to_event(2)
        )
        b = numpyro.sample(f"b{i}", dist.Normal(0.0, 1.0).expand([widths[i + 1]]).to_event(1))
        f = f @ w.T + b
        if i < depth - 1:
            f = jnp.maximum(f, 0.0)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(f, noise).to_event(1), obs=y)


def dln(**kwargs: Any) -> tuple[Callable, Problem]:
    problem = zoo.make_dln(**kwargs)
    s = problem.settings
    return partial(dln_model, widths=tuple(s["widths"]), noise=s["noise"]), problem


def rrr(**kwargs: Any) -> tuple[Callable, Problem]:
    problem = zoo.make_rrr(**kwargs)
    s = problem.settings
    return partial(dln_model, widths=tuple(s["widths"]), noise=s["noise"]), problem


def linear_regression(**kwargs: Any) -> tuple[Callable, Problem]:
    problem = zoo.make_linear_regression(**kwargs)
    return partial(linear_regression_model, noise=problem.settings["noise"]), problem


def normal_crossing(**kwargs: Any) -> tuple[Callable, Problem]:
    problem = zoo.make_normal_crossing(**kwargs)
    s = problem.settings
    return partial(normal_crossing_model, powers=tuple(s["powers"]), noise=s["noise"]), problem


def relu_mlp(**kwargs: Any) -> tuple[Callable, Problem]:
    problem = zoo.make_relu_regression(**kwargs)
    s = problem.settings
    return partial(relu_mlp_model, widths=tuple(s["widths"]), noise=s["noise"]), problem


def tanh_zero(**kwargs: Any) -> tuple[Callable, Problem]:
    problem = zoo.make_tanh_zero(**kwargs)
    s = problem.settings
    return partial(tanh_model, hidden=s["hidden"], noise=s["noise"]), problem


PROBLEMS: dict[str, Callable[..., tuple[Callable, Problem]]] = {
    "dln": dln,
    "rrr": rrr,
    "linear_regression": linear_regression,
    "normal_crossing": normal_crossing,
    "relu_mlp": relu_mlp,
    "tanh_zero": tanh_zero,
}
