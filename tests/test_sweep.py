"""The sweep on a local Ray cluster with two worker processes (issue 16): 3 checkpoints (.npz,
.safetensors, torch .pt) + 1 corrupt × 2 step sizes of a 2-parameter NumPyro regression.

One sweep checks the "done when" items together, to pay the workers' JAX compilation once: the
model file SIGKILLs the first worker that loads it (a marker file makes that happen exactly once),
so one task loses its worker mid-sweep and must be retried; the corrupt checkpoint must give failed
tasks with a clear message while the rest completes; the merged values must equal the same runs
called one by one in this process with the same seeds (bit for bit: the same program on the same
inputs, JAX's CPU random bits and arithmetic are deterministic); a rerun of the command must
execute no task; a later sweep of a new checkpoint must extend the Zarr store.

The sweep starts its own local Ray, as the command does (its workers inherit the thread and
cache settings; runner.run_on_ray), and must compile its programs in one worker only: the first
task goes alone, the other workers load its compilations from the shared persistent cache.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import slt_ppl  # noqa: E402
from slt_ppl.cli import main as cli_main  # noqa: E402
from slt_ppl.sweep import open_sweep, runner, sweep  # noqa: E402
from slt_ppl.sweep.store import write_record  # noqa: E402
from slt_ppl.sweep.task import load_function, run_task  # noqa: E402

MODEL = """
import os
import signal
from pathlib import Path

import numpyro
import numpyro.distributions as dist

MARKER = Path(__file__).with_name("killed_once")
try:  # the first worker to load this file writes its pid and dies (exactly once: O_EXCL)
    fd = os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
except FileExistsError:
    pass


def model(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)
"""
SAMPLER = {"kernel": "sgld", "num_chains": 2, "num_draws": 40, "num_burnin": 20, "thin": 1,
           "seed": 3}  # fmt: skip
GAMMA = 10.0
STEP_SIZES = [1e-3, 3e-3]


def _toml(folder, checkpoints: list[str]) -> str:
    paths = ", ".join(f'"{c}"' for c in checkpoints)
    return f"""
[model]
path = "model.py:model"
[data]
path = "data.npz"
[checkpoints]
paths = [{paths}]
[estimators]
names = ["llc", "wbic"]
[localize]
gamma = {GAMMA}
[sampler]
{chr(10).join(f"{k} = {v!r}".replace("'", '"') for k, v in SAMPLER.items())}
[grid]
step_size = {STEP_SIZES}
[resources]
num_cpus = 1
max_retries = 1
"""


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2)).astype(np.float32)
    y = (x @ np.array([0.5, -1.0]) + rng.normal(size=100)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "model.py").write_text(MODEL)
    centers = [np.array([0.5, -1.0]), np.array([0.4, -0.9]), np.array([0.6, -1.1]),
               np.array([0.3, -1.2])]  # fmt: skip
    centers = [c.astype(np.float32) for c in centers]
    np.savez(tmp_path / "c0.npz", w=centers[0])
    safetensors_numpy.save_file({"w": centers[1]}, str(tmp_path / "c1.safetensors"))
    torch.save({"w": torch.from_numpy(centers[2])}, tmp_path / "c2.pt")
    np.savez(tmp_path / "c3.npz", w=centers[3])
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (tmp_path / "sweep.toml").write_text(_toml(tmp_path, ["c0.npz", "c1.safetensors", "c2.pt",
                                                          "bad.npz"]))  # fmt: skip
    (tmp_path / "more.toml").write_text(_toml(tmp_path, ["c3.npz"]))
    return tmp_path, {f"c{i}": {"w": c} for i, c in enumerate(centers)}


def test_sweep_on_ray(folder, capsys, monkeypatch):
    path, centers = folder
    out = path / "out"
    assert not ray.is_initialized()
    ds = sweep(path / "sweep.toml", out=out, num_cpus=2, plots=False, log=None)
    assert not ray.is_initialized() and ds.attrs["ray_init_s"] > 0

    # the killed worker: its task ran again elsewhere and nothing was lost
    killed_pid = int((path / "killed_once").read_text())
    records = [r for r in _records(out) if r["status"] == "ok"]
    pids = {r["pid"] for r in records}
    # two worker processes ran tasks: the killed one (it was running the first task) and the
    # one(s) that completed them (not necessarily two of those: after the first task a warm
    # worker may run all six short tasks before Ray has started another process)
    assert killed_pid not in pids and pids, (killed_pid, pids)
    good = ds.sel(checkpoint=["c0", "c1", "c2"])
    assert (good["status"] == "ok").all() and len(records) == 6
    # the corrupt checkpoint: failed tasks naming the file and the problem
    bad = ds.sel(checkpoint="bad")
    assert (bad["status"] == "failed").all()
    for err in bad["error"].values:
        assert "DataError" in err and "bad.npz" in err and "corrupt" in err
    assert ds.attrs["tasks_run"] == 8 and ds.attrs["tasks_failed"] == 2
    # the workers Ray started for the sweep have its settings; one of them compiled
    for record in records:
        env = record["profile"]["env"]
        assert env["OMP_NUM_THREADS"] == "1" and env["JAX_PLATFORMS"] == "cpu"
        assert "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
        assert env["JAX_COMPILATION_CACHE_DIR"] == str(out / "jax_cache")
    misses = {pid: sum(r["profile"]["cache_misses"] for r in records if r["pid"] == pid)
              for pid in pids}  # fmt: skip
    hits = {pid: sum(r["profile"]["cache_hits"] for r in records if r["pid"] == pid)
            for pid in pids}  # fmt: skip
    assert sum(m > 0 for m in misses.values()) == 1, (misses, hits)
    assert all(hits[pid] > 0 for pid in pids if misses[pid] == 0), (misses, hits)

    # the same runs one by one, with the same seeds: equal bit for bit
    model = load_function(f"{path / 'model.py'}:model", (path / "model.py").read_text())
    with np.load(path / "data.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    for name in ("c0", "c1", "c2"):
        for eps in STEP_SIZES:
            post = slt_ppl.localize(model, data, centers[name], gamma=GAMMA)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = slt_ppl.sample(post, step_size=eps, progress=False, **SAMPLER)
            est, wb = slt_ppl.llc(result, warn=False), slt_ppl.wbic(result, warn=False)
            cell = ds.sel(checkpoint=name, step_size=eps)
            for var, ref in (("llc", est), ("llc_se", est), ("rhat", est), ("wbic", wb)):
                assert float(cell[var]) == float(ref[var]), (name, eps, var)
            assert str(cell["verdict"].values) == est.attrs["verdict"]
            assert int(cell["healthy"]) == int(est.attrs["healthy"])

    # a rerun of the command executes nothing (exit 1: the corrupt checkpoint's tasks failed)
    assert cli_main(["sweep", str(path / "sweep.toml"), "--out", str(out), "--no-plots"]) == 1
    assert "0 run, 8 skipped, 2 failed" in capsys.readouterr().out
    assert open_sweep(out).attrs["tasks_run"] == 0

    # a sweep of one more checkpoint extends the store; the earlier values stay (its two tasks
    # run in this process: a second Ray start would double this test's time)
    monkeypatch.setattr(runner, "run_on_ray", _run_here)
    more = sweep(path / "more.toml", out=out, plots=False, log=None)
    assert more.attrs["tasks_run"] == 2
    assert set(more["checkpoint"].values) == {"c0", "c1", "c2", "bad", "c3"}
    assert (more["status"].sel(checkpoint="c3") == "ok").all()
    assert np.array_equal(more["llc"].sel(checkpoint=["c0", "c1", "c2"]).values,
                          good["llc"].values)  # fmt: skip


def _run_here(spec, todo, out, **_):
    """runner.run_on_ray without Ray: the tasks one after another in this process."""
    data = runner.load_data(spec.data)
    for task, key in todo:
        record = run_task(runner.payload(spec, task, key, spec.resources), data,
                          task.checkpoint.read_bytes())  # fmt: skip
        write_record(out, record)
    return {"ray_init_s": 0.0, "ray_shutdown_s": 0.0}


def _records(out):
    import json

    return [json.loads(p.read_text()) for p in sorted((out / "tasks").glob("*.json"))]


def test_import_slt_ppl_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, slt_ppl, slt_ppl.sweep; assert 'ray' not in sys.modules; print('ok')"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "ok", out.stderr
