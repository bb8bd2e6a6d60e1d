"""``sample(..., stream_to=path)`` of a weight-restricted posterior: the file records the
restriction (restricted_to, sampled_dim, full_dim) as the in-memory result does, and its position
rows are the sampled coordinates, which ``unravel`` embeds back into the full sites at w*."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import slt_ppl


def _loss(params, batch):
    pred = batch["x"] @ params["w"] + params["b"]
    return 0.5 * jnp.mean((batch["y"] - pred) ** 2)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_stream_of_a_restricted_run_records_the_restriction(tmp_path, backend) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5, 0.3]) + rng.normal(size=100)).astype(np.float32)
    mask = np.array([True, False, True])
    if backend == "jax":
        center = {"w": jnp.asarray([1.0, -0.5, 0.3]), "b": jnp.asarray(0.1)}
        full = slt_ppl.localize(_loss, {"x": x, "y": y}, center, gamma=10.0)
        select = {"['w']": mask}  # plain-JAX sites are named by their pytree path
    else:
        import torch

        linear = torch.nn.Linear(3, 1)

        def rows(out, batch):
            return 0.5 * (batch["y"] - out[:, 0]) ** 2

        full = slt_ppl.localize(linear, {"x": x, "y": y}, loss_fn=rows, gamma=10.0, device="cpu")
        select = {"weight": mask[None]}
    post = _restrict(full, select)
    kw = dict(kernel="sgld", step_size=1e-3, batch_size=20, num_chains=2, num_draws=6,
              num_burnin=2, thin=1, seed=0, progress=False)  # fmt: skip
    path = tmp_path / "draws.nc"
    result = slt_ppl.sample(post, stream_to=path, **kw)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        for key in ("restricted_to", "sampled_dim", "full_dim"):
            assert ds.attrs[key] == result.attrs[key], key
        assert ds.attrs["sampled_dim"] == 2 == ds.sizes["param"] and ds.attrs["full_dim"] == 4
        assert json.loads(ds.attrs["restricted_to"])["sampled"]
        row = ds["position"].values[1, -1]
    sites = {k: np.asarray(v) for k, v in post.unravel(_like(post, row)).items()}
    frozen = sites["w"][1] if backend == "jax" else sites["weight"][0, 1]
    expected = -0.5 if backend == "jax" else float(full.unravel(full.center)["weight"][0, 1])
    assert frozen == pytest.approx(expected, rel=1e-6)  # the coordinate not sampled stays at w*


def _restrict(posterior, select):
    from slt_ppl.restrict import restrict

    return restrict(posterior, select)


def _like(posterior, row):
    if posterior.backend == "pyro":
        import torch

        return torch.as_tensor(row)
    return jnp.asarray(row)
