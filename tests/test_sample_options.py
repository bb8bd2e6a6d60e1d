"""``sample()``'s option objects mean exactly what the old flat keywords meant."""

from __future__ import annotations

import numpy as np
import pytest
from _reliability_models import regression_problem

import slt_ppl
from slt_ppl.errors import SettingError
from slt_ppl.sampling.checkpoint import read_checkpoint
from slt_ppl.sampling.options import Checkpointing, Divergence, Plan


@pytest.fixture(scope="module")
def posterior():
    model, data, center = regression_problem(n=60)
    return slt_ppl.localize(model, data, center)


def test_option_objects_equal_the_flat_keywords(tmp_path, posterior):
    common = dict(num_chains=2, num_draws=12, step_size=1e-3, seed=4, progress=False, thin=1)
    flat = slt_ppl.sample(
        posterior, diag_every=3, num_segments=3, shared_batches=False, explode=50.0,
        retry_on_divergence=1, max_diverged_fraction=0.5, batch_size=10,
        checkpoint=tmp_path / "a.nc", checkpoint_every=2, **common,
    )  # fmt: skip
    grouped = slt_ppl.sample(
        posterior, plan=Plan(diag_every=3, num_segments=3, shared_batches=False),
        divergence=Divergence(explode=50.0, retries=1, max_fraction=0.5), batch_size=10,
        checkpoint=Checkpointing(tmp_path / "b.nc", every=2), **common,
    )  # fmt: skip
    for name, var in flat["sample_stats"].data_vars.items():
        assert np.array_equal(var.values, grouped["sample_stats"][name].values, equal_nan=True)
    for key in ("diag_every", "shared_batches", "explode", "divergence_retries"):
        assert flat.attrs[key] == grouped.attrs[key], key
    a, b = read_checkpoint(tmp_path / "a.nc"), read_checkpoint(tmp_path / "b.nc")
    assert a.settings == b.settings and a.complete and b.complete
    # a legacy keyword refines an option object
    resumed = slt_ppl.sample(
        posterior, plan=Plan(diag_every=3, num_segments=3, shared_batches=False),
        divergence=Divergence(explode=50.0, retries=1, max_fraction=0.5), batch_size=10,
        checkpoint=Checkpointing(tmp_path / "b.nc", every=2), resume=True, **common,
    )  # fmt: skip
    assert resumed.attrs["resumed_from_draw"] == a.total_draws


def test_unknown_keyword_and_bad_option_values_are_named(posterior):
    with pytest.raises(SettingError, match=r"unknown keyword arguments \['diag_evry'\]"):
        slt_ppl.sample(posterior, diag_evry=3, progress=False, thin=1)
    with pytest.raises(SettingError, match="diag_every must be an integer >= 1"):
        slt_ppl.sample(posterior, plan=Plan(diag_every=0), progress=False)
    with pytest.raises(SettingError, match="retry_on_divergence must be an integer >= 0"):
        slt_ppl.sample(posterior, divergence=Divergence(retries=-1), progress=False)
    with pytest.raises(SettingError, match="checkpoint_every must be an integer >= 1"):
        slt_ppl.sample(posterior, checkpoint=Checkpointing("x.nc", every=0), progress=False)
