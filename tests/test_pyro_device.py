"""Pyro models run on the posterior's device (session 17: on an H200 every Pyro run failed with a
device mismatch, the priors' float literals making CPU tensors beside cuda data).

CI has no GPU, so these tests check the two halves of the fix on the CPU: torch's device context
puts a device-agnostic prior on the device it names (the mechanism, checked with the "meta"
device), and every model call of the Pyro backend enters that context with the data's device.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import slt_ppl
from slt_ppl.backends import pyro_backend


def _model(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def test_device_context_moves_float_literal_priors():
    assert isinstance(pyro_backend.on_device(torch.device("cpu")), contextlib.nullcontext)
    with pyro_backend.on_device(torch.device("meta")):
        prior = dist.Normal(0.0, 1.0, validate_args=False)  # validation would call .item()
    assert prior.loc.device.type == "meta"
    assert dist.Normal(0.0, 1.0).loc.device.type == "cpu"  # nothing leaks out of the context


def test_every_model_call_enters_the_data_device(monkeypatch):
    entered = []

    def recording(device):
        entered.append(torch.device(device).type)
        return contextlib.nullcontext()

    monkeypatch.setattr(pyro_backend, "on_device", recording)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    data = {"x": x, "y": x @ np.array([0.5, -0.3]) + rng.normal(size=50)}
    post = slt_ppl.localize(_model, data, {"w": np.zeros(2)}, device="cpu")
    assert entered, "localize traced the model outside the device context"
    before = len(entered)
    post.loss_fn(post.center, post.data)
    assert len(entered) > before, "the loss ran the model outside the device context"
    assert set(entered) == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pyro_model_samples_on_cuda():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    data = {"x": x, "y": x @ np.array([0.5, -0.3]) + rng.normal(size=200)}
    post = slt_ppl.localize(_model, data, {"w": np.array([0.5, -0.3])}, device="cuda")
    res = slt_ppl.sample(post, num_draws=50, num_chains=2, progress=False, seed=0)
    assert np.isfinite(float(slt_ppl.llc(res, warn=False)["llc"]))


def test_fisher_of_a_torch_model_refuses_gpu_data_by_name():
    """The Fisher / effective-dimension path of torch models runs on the CPU (NumPy in between):
    data on another device get our error naming the key, not a failure inside the model."""
    from slt_ppl.errors import DataError
    from slt_ppl.estimators.fisher import model_info

    data = {"x": torch.zeros(5, 2, device="meta"), "y": torch.zeros(5, device="meta")}
    with pytest.raises(DataError, match=r"data\['x'\] is on device meta.*run on the CPU"):
        model_info(_model, data, backend="pyro")
