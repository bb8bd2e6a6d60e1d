"""The model zoo in Pyro: the same models, builders and ``PROBLEMS`` as ``models.numpyro_zoo``,
on the same seeded problems of ``models.data`` (same data, same center, same theoretical λ).
Each model is a plain Pyro function called as ``model(**data)`` with torch tensors."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pyro
import pyro.distributions as dist
import torch

from models import data as zoo
from models.data import Problem


def dln_model(
    x: torch.Tensor, y: torch.Tensor | None = None, *, widths: tuple[int, ...], noise: float = 1.0
):
    """Deep linear network y ~ N(W_M⋯W_1·x, noise²) with standard normal priors on the weights."""
    f = x
    for i in range(len(widths) - 1):
        w = pyro.sample(
            f"w{i}", dist.Normal(0.0, 1.0).expand([widths[i + 1], widths[i]]).to_event(2)
        )
        f = f @ w.T
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(f, noise).to_event(1), obs=y)


def linear_regression_model(x: torch.Tensor, y: torch.Tensor | None = None, *, noise: float = 1.0):
    """y ~ N(x·w, noise²), w ~ N(0, I)."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, noise), obs=y)


def normal_crossing_model(
    x: torch.Tensor, y: torch.Tensor | None = None, *, powers: tuple[int, ...], noise: float = 1.0
):
    """y ~ N(x·Π w_i^{p_i}, noise²)."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([len(powers)]).to_event(1))
    coef = torch.prod(w ** torch.as_tensor(powers, dtype=w.dtype))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x * coef, noise), obs=y)


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


PROBLEMS: dict[str, Callable[..., tuple[Callable, Problem]]] = {
    "dln": dln,
    "rrr": rrr,
    "linear_regression": linear_regression,
    "normal_crossing": normal_crossing,
}
