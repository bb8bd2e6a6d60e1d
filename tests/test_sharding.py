"""Chains sharded over (forced) host devices give the same draws as an unsharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    import slt_ppl
    from models.numpyro_zoo import dln

    assert len(jax.devices()) == 4, jax.devices()
    model, problem = dln(widths=[4, 3, 4], n=500, seed=1)
    post = slt_ppl.localize(model, problem.data, problem.center)
    out = {}
    for shared in (True, False):
        runs = {}
        for devices in (False, 4, None):
            res = slt_ppl.sample(
                post, step_size=1e-4, batch_size=50, num_chains=8, num_draws=30, num_burnin=10,
                thin=2, keep_draws=True, shared_batches=shared, devices=devices, progress=False,
                num_segments=3,
            )
            stats = res["sample_stats"].to_dataset()
            draws = res["posterior"].to_dataset()
            runs[str(devices)] = {
                "num_devices": int(res.attrs["num_devices"]),
                "loss": stats["loss"].values.tolist(),
                "loss_center": stats["loss_center"].values.tolist(),
                "acceptance": np.nan_to_num(stats["acceptance"].values).tolist(),
                "draws": [draws[k].values.ravel().tolist() for k in sorted(draws.data_vars)],
            }
        out[str(shared)] = runs
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def runs() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("shared", ["True", "False"])
def test_sharded_chains_match_unsharded(runs: dict, shared: str) -> None:
    import numpy as np

    group = runs[shared]
    assert group["False"]["num_devices"] == 1
    assert group["4"]["num_devices"] == 4
    assert group["None"]["num_devices"] == 4  # automatic when several devices exist
    for sharded in ("4", "None"):
        for field in ("loss", "loss_center", "acceptance"):
            np.testing.assert_allclose(
                group[sharded][field], group["False"][field], rtol=1e-5, atol=1e-6, err_msg=field
            )
        for a, b in zip(group[sharded]["draws"], group["False"]["draws"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resolve_devices_picks_a_divisor() -> None:
    import jax

    from slt_ppl.errors import SettingError
    from slt_ppl.sampling.sharding import resolve_devices

    assert resolve_devices(False, 8) is None
    assert resolve_devices(1, 8) is None
    d = jax.devices()[0]
    assert resolve_devices([d, d, d], 4) == [d, d]  # the largest count dividing the chains
    assert resolve_devices([d, d, d], 5) is None
    with pytest.raises(SettingError):
        resolve_devices(0, 4)
