"""The CLI's main job on the built-in model, a user model from files, and a TOML run file."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import xarray as xr

from models import data as zoo_data
from slt_ppl.cli import main


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_default_builtin_run(tmp_path, capsys):
    code = main(
        ["--no-progress", "--out", str(tmp_path), "--num-draws", "300", "--num-burnin", "300"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "theory λ" in out and "12.5000" in out
    summary = last_json(out)
    assert np.isfinite(summary["llc"]) and summary["llc_se"] > 0
    assert (tmp_path / "traces.png").stat().st_size > 10_000
    est = xr.open_dataset(tmp_path / "llc.nc")
    assert np.isclose(float(est["llc"]), summary["llc"])


def _user_files(tmp_path):
    problem = zoo_data.make_linear_regression(d=3, n=400)
    np.savez(tmp_path / "data.npz", **problem.data)
    np.savez(tmp_path / "center.npz", **problem.center)
    (tmp_path / "my_model.py").write_text(
        textwrap.dedent(
            """
            import numpyro, numpyro.distributions as dist

            def model(x, y=None):
                w = numpyro.sample("w", dist.Normal(0, 1).expand([x.shape[1]]).to_event(1))
                with numpyro.plate("data", x.shape[0]):
                    numpyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)
            """
        )
    )


def test_user_model_from_files(tmp_path, capsys):
    _user_files(tmp_path)
    argv = [
        "llc",
        "--model", f"{tmp_path / 'my_model.py'}:model",
        "--data", str(tmp_path / "data.npz"),
        "--center", str(tmp_path / "center.npz"),
        "--num-draws", "200", "--no-progress", "--no-plots", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(argv) == 0
    summary = last_json(capsys.readouterr().out)
    assert 0.5 < summary["llc"] < 3.0  # λ = 1.5 for d = 3; a loose sanity bound on a short run


def test_toml_run_file(tmp_path, capsys):
    _user_files(tmp_path)
    (tmp_path / "run.toml").write_text(
        textwrap.dedent(
            """
            [model]
            path = "my_model.py:model"
            [data]
            path = "data.npz"
            [center]
            path = "center.npz"
            [localize]
            gamma = 0.5
            [sampler]
            kernel = "sgld"
            num_chains = 2
            num_draws = 150
            """
        )
    )
    assert main(["llc", "--config", str(tmp_path / "run.toml"), "--no-progress", "--no-plots",
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    est = xr.open_dataset(tmp_path / "out" / "llc.nc")
    assert est.attrs["gamma"] == 0.5 and est.attrs["num_chains"] == 2


def test_clear_error_for_missing_files(tmp_path, capsys):
    code = main(["llc", "--model", "nope.py:model", "--data", "d.npz", "--center", "c.npz"])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
