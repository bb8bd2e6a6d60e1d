"""Small torch posteriors shared by the torch parity tests: a Pyro model and an ``nn.Module``, both
the regression of ``_reliability_models.regression_problem`` centered at its least-squares fit."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from _reliability_models import regression_problem

import slt_ppl


def pyro_regression(x, y=None):
    """y ~ N(x·w, 1) in Pyro."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def torch_posterior(kind: str):
    """The regression posterior as a Pyro model ("pyro") or an ``nn.Linear`` ("module"), on the
    CPU; the module's center is its weights (least squares, bias 0)."""
    _, data, center = regression_problem()
    if kind == "pyro":
        return slt_ppl.localize(pyro_regression, data, center, backend="pyro", device="cpu")
    torch.manual_seed(0)
    linear = torch.nn.Linear(data["x"].shape[1], 1, bias=False)
    with torch.no_grad():
        linear.weight[:] = torch.as_tensor(center["w"])[None]
    return slt_ppl.localize(linear, data, likelihood="gaussian", noise=1.0, device="cpu")
