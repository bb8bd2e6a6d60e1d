"""``sample(..., stream_to=path)`` writes the draws to disk instead of holding them."""

from __future__ import annotations

import numpy as np
import xarray as xr

import slt_ppl
from models.numpyro_zoo import dln


def test_stream_to_matches_kept_draws(tmp_path) -> None:
    model, problem = dln(widths=[3, 2, 3], n=300, seed=3)
    post = slt_ppl.localize(model, problem.data, problem.center)
    kw = dict(
        kernel="sgld",
        step_size=1e-4,
        batch_size=30,
        num_chains=2,
        num_draws=25,
        num_burnin=10,
        thin=2,
    )
    kept = slt_ppl.sample(post, keep_draws=True, progress=False, num_segments=4, **kw)
    path = tmp_path / "draws.nc"
    streamed = slt_ppl.sample(post, stream_to=path, progress=False, num_segments=4, **kw)
    assert "posterior" not in streamed.children
    assert streamed.attrs["draws_file"] == str(path)
    np.testing.assert_array_equal(
        streamed["sample_stats"]["loss"].values, kept["sample_stats"]["loss"].values
    )
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        burn = int(ds.attrs["num_burnin_draws"])
        assert ds["position"].shape == (2, burn + 25, post.dim)
        flat = ds["position"].values[:, burn:]
        np.testing.assert_array_equal(
            ds["loss"].values[:, burn:], kept["sample_stats"]["loss"].values
        )
    draws = kept["posterior"].to_dataset()
    row = post.unravel(flat[1, 7])
    for site, value in post.constrain(row).items():
        np.testing.assert_allclose(draws[site].values[1, 7], np.asarray(value), rtol=1e-6)
