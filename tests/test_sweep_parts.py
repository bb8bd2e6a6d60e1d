"""The sweep's parts without Ray: the spec, checkpoint readers, task keys, merging and extending
the Zarr store, the plots, and the DLN training run of the built-in example."""

from __future__ import annotations

import numpy as np
import pytest

from slt_ppl.errors import DataError, SettingError
from slt_ppl.sweep import Task, expand, load_spec, open_sweep, plot_sweep
from slt_ppl.sweep.checkpoints import read_checkpoint
from slt_ppl.sweep.dataset import to_dataset, write_zarr
from slt_ppl.sweep.runner import fingerprint
from slt_ppl.sweep.store import task_key


def _spec(tmp_path, **overrides):
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", w=np.zeros(2, np.float32))
    raw = {
        "model": {"builtin": "linear_regression", "d": 2, "n": 50},
        "checkpoints": {"glob": str(tmp_path / "*.npz")},
        "grid": {"step_size": [1e-3, 2e-3], "nbeta": [10.0, 20.0, 40.0]},
    }
    raw.update(overrides)
    return load_spec(raw)


def test_spec_expands_checkpoints_times_grid(tmp_path):
    spec = _spec(tmp_path)
    tasks = expand(spec)
    assert len(tasks) == 2 * 2 * 3
    assert [t.checkpoint.stem for t in tasks[:6]] == ["a"] * 6
    assert tasks[1].point == {"step_size": 1e-3, "nbeta": 20.0}
    assert spec.estimators == ("llc",)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"grid": {"stepsize": [1.0]}}, "unknown [grid] key 'stepsize'"),
        ({"grid": {"gamma": []}}, "non-empty list"),
        ({"grid": {"seed": [1, 1]}}, "repeated values"),
        ({"model": {"path": "nowhere.py:model"}}, "does not exist"),
        ({"model": {"builtin": "dln", "path": "x.py:f"}}, "exactly one of"),
        ({"checkpoints": {"glob": "/nonexistent/*.npz"}}, "matches no file"),
        ({"checkpoints": {"paths": ["/nonexistent.npz"]}}, "does not exist"),
        ({"estimators": {"names": ["llc", "waic"]}}, "unknown estimator"),
        ({"resources": {"gpus": 1}}, "unknown [resources]"),
    ],
)
def test_spec_errors_name_the_problem(tmp_path, override, message):
    with pytest.raises(SettingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _spec(tmp_path, **override)


def test_checkpoint_readers_agree_and_corrupt_files_fail_clearly(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.numpy")
    w = {"layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.savez(tmp_path / "c.npz", **w)
    torch.save({k: torch.from_numpy(v) for k, v in w.items()}, tmp_path / "c.pt")
    st.save_file(w, str(tmp_path / "c.safetensors"))
    for suffix in (".npz", ".pt", ".safetensors"):
        got = read_checkpoint("c", suffix, (tmp_path / f"c{suffix}").read_bytes())
        assert np.array_equal(got["layer.weight"], w["layer.weight"]), suffix
    as_torch = read_checkpoint("c", ".npz", (tmp_path / "c.npz").read_bytes(), as_torch=True)
    assert torch.is_tensor(as_torch["layer.weight"])
    for suffix in (".npz", ".pt", ".safetensors"):
        with pytest.raises(DataError, match=f"checkpoint broken{suffix} is corrupt"):
            read_checkpoint("broken", suffix, b"\x00\x01 truncated")


def test_task_key_follows_checkpoint_settings_and_version(tmp_path):
    spec = _spec(tmp_path)
    settings = fingerprint(spec)
    base = task_key(settings, "abc", {"step_size": 1e-3})
    assert base == task_key(dict(settings), "abc", {"step_size": 1e-3})
    assert base != task_key(settings, "abd", {"step_size": 1e-3})
    assert base != task_key(settings, "abc", {"step_size": 2e-3})
    assert base != task_key({**settings, "slt_ppl": "9.9"}, "abc", {"step_size": 1e-3})


def _records(spec, tasks, keys, rng, skip=()):
    records = {}
    for i, (task, key) in enumerate(zip(tasks, keys, strict=True)):
        if i in skip:
            continue
        failed = task.checkpoint.stem == "b" and task.point["nbeta"] == 40.0
        records[key] = {
            "key": key, "status": "failed" if failed else "ok",
            "error": "DataError: boom" if failed else "",
            "values": {} if failed else {"llc": float(rng.normal(5)), "llc_se": 0.1,
                                         "healthy": int(task.point["step_size"] < 2e-3),
                                         "check_rhat": 1},
            "text": {} if failed else {"verdict": "healthy"},
        }  # fmt: skip
    return records


def test_merged_dataset_zarr_roundtrip_and_extension(tmp_path):
    spec = _spec(tmp_path)
    tasks = expand(spec)
    keys = [f"k{i}" for i in range(len(tasks))]
    records = _records(spec, tasks, keys, np.random.default_rng(0), skip={0})
    ds = to_dataset(spec, tasks, keys, records)
    assert ds["llc"].dims == ("checkpoint", "step_size", "nbeta")
    assert ds["status"].sel(checkpoint="a", step_size=1e-3, nbeta=10.0) == "not_run"
    assert np.isnan(float(ds["llc"].sel(checkpoint="a", step_size=1e-3, nbeta=10.0)))
    assert int(ds["healthy"].sel(checkpoint="b", step_size=1e-3, nbeta=40.0)) == -1
    ds.attrs.update(fixed_settings="x", dims='["checkpoint", "step_size", "nbeta"]')
    store = write_zarr(ds, tmp_path / "results.zarr")
    back = open_sweep(tmp_path)
    assert back.identical(open_sweep(store))
    for var in ("healthy", "status", "verdict"):
        assert np.array_equal(back[var].values, ds[var].values), var
    np.testing.assert_array_equal(back["llc"].values, ds["llc"].values)

    # a second sweep over a new ε fills in the missing task and adds a column; old values stay
    spec2 = _spec(tmp_path, grid={"step_size": [1e-3, 4e-3], "nbeta": [10.0, 20.0, 40.0]})
    tasks2 = expand(spec2)
    keys2 = [f"m{i}" for i in range(len(tasks2))]
    rec2 = _records(spec2, tasks2, keys2, np.random.default_rng(1))
    ds2 = to_dataset(spec2, tasks2, keys2, rec2)
    ds2.attrs.update(ds.attrs)
    merged = open_sweep(write_zarr(ds2, store))
    assert list(merged["step_size"].values) == [1e-3, 2e-3, 4e-3]
    assert merged["healthy"].dtype == np.int8 and merged["status"].dtype == object
    assert merged["status"].sel(checkpoint="a", step_size=1e-3, nbeta=10.0) == "ok"
    np.testing.assert_array_equal(merged["llc"].sel(step_size=2e-3).values,
                                  ds["llc"].sel(step_size=2e-3).values)  # fmt: skip
    np.testing.assert_array_equal(merged["llc"].sel(step_size=4e-3).values,
                                  ds2["llc"].sel(step_size=4e-3).values)  # fmt: skip
    ds3 = ds2.copy()
    ds3.attrs["fixed_settings"] = "other"
    with pytest.raises(SettingError, match="other fixed settings"):
        write_zarr(ds3, store)


def test_plots_are_written(tmp_path):
    spec = _spec(tmp_path)
    tasks = expand(spec)
    keys = [f"k{i}" for i in range(len(tasks))]
    ds = to_dataset(spec, tasks, keys, _records(spec, tasks, keys, np.random.default_rng(0)))
    ds = ds.assign_coords(training_step=("checkpoint", [100, 200]),
                          train_loss=("checkpoint", [3.0, 1.0]))  # fmt: skip
    paths = plot_sweep(ds, tmp_path)
    assert [p.name for p in paths] == ["llc_along_training.png", "calibration_step_size_nbeta.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_training_plateaus_match_the_teacher():
    """Gradient descent from small init learns the teacher's modes one at a time (Jacot et al.
    2021): once the top k singular values s_1..s_k are learned, the population loss is
    E ½‖y − W x‖² = ½(Σ_{j>k} s_j² + H_M) for x ~ N(0, I), unit noise and H_M outputs. With
    s = (8, 4, 2, 1), H_M = 6: 13.5, 5.5, 3.5 after 1, 2, 3 modes. The training loss is the
    empirical mean over n = 5000 rows: its relative sampling error is about √(2/(H_M·n)) ≈ 0.8 %
    for the noise part, so a 3 % tolerance is ≈ 4 se."""
    from models.training import teacher_data, train_dln

    run = train_dln(teacher_data(), steps=4200, num_checkpoints=7)
    by_step = dict(zip(run.steps.tolist(), run.losses.tolist(), strict=True))
    for step, expected in ((1200, 13.5), (2400, 5.5), (4200, 3.5)):
        assert by_step[step] == pytest.approx(expected, rel=0.03), step
    assert run.weights[0]["w0"].shape == (6, 6) and len(run.weights) == 7


NET = """
import torch


def make_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
"""
SMALL = {"kernel": "sgld", "num_chains": 2, "num_draws": 30, "num_burnin": 10, "thin": 1, "seed": 0}


def _payload(**changes):
    base = {"key": "k", "checkpoint": "c", "suffix": ".npz", "point": {"step_size": 1e-3},
            "model": {"kind": "builtin", "target": "linear_regression",
                      "options": {"d": 2, "n": 64}},
            "localize": {"gamma": 10.0}, "sampler": SMALL, "estimators": ["llc"],
            "threads": 1}  # fmt: skip
    return {**base, **changes}


def test_task_of_a_torch_module_equals_the_direct_run(tmp_path):
    """A torch state dict loaded into the factory's module gives the same λ̂ as localize/sample
    called directly on that module (same seed: the torch backend is deterministic on CPU)."""
    torch = pytest.importorskip("torch")
    import slt_ppl
    from slt_ppl.sweep.task import load_function, run_task

    (tmp_path / "net.py").write_text(NET)
    make_net = load_function(f"{tmp_path / 'net.py'}:make_net", NET)
    trained = make_net()
    with torch.no_grad():
        trained[0].weight.mul_(2.0)  # a checkpoint that differs from the factory's weights
    torch.save(trained.state_dict(), tmp_path / "c.pt")
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 2)).astype(np.float32),
            "y": rng.normal(size=(64, 1)).astype(np.float32)}  # fmt: skip
    model = {"kind": "torch_module", "target": f"{tmp_path / 'net.py'}:make_net",
             "options": {"noise": 1.0}, "source": NET}  # fmt: skip
    record = run_task(_payload(model=model, suffix=".pt"), data, (tmp_path / "c.pt").read_bytes())
    assert record["status"] == "ok", record["error"]
    post = slt_ppl.localize(trained.eval(), data, noise=1.0, gamma=10.0)
    result = slt_ppl.sample(post, step_size=1e-3, progress=False, **SMALL)
    assert record["values"]["llc"] == float(slt_ppl.llc(result, warn=False)["llc"])
    wrong = {"0.weight": torch.zeros(5, 5)}
    torch.save(wrong, tmp_path / "w.pt")
    bad = run_task(_payload(model=model, suffix=".pt", checkpoint="w"), data,
                   (tmp_path / "w.pt").read_bytes())  # fmt: skip
    assert bad["status"] == "failed" and "does not fit the module" in bad["error"]


def _center_bytes(value: float = 0.0) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, w=np.full(2, value, np.float32))
    return buf.getvalue()


def test_task_with_temperatures_records_the_two_temperature_llc(tmp_path):
    """... and a second task of the same program group (runner.program_group: another
    checkpoint, ε, γ, seed and temperature values) compiles and traces nothing: JAX's compile
    events, counted by sweep.profile, see no XLA compilation or persistent-cache load."""
    from slt_ppl.sweep.runner import program_group
    from slt_ppl.sweep.task import run_task

    point = {"step_size": 1e-3, "temperatures": [1.0, 2.0]}
    record = run_task(_payload(point=point), None, _center_bytes())
    assert record["status"] == "ok", record["error"]
    assert np.isfinite(record["values"]["llc_two_temperature"])
    assert record["values"]["healthy"] in (0, 1)

    other = {"step_size": 2e-3, "temperatures": [1.0, 3.0], "gamma": 7.0, "seed": 1}
    spec = _spec(tmp_path)
    assert program_group(spec, Task(tmp_path, point)) == program_group(spec, Task(tmp_path, other))
    second = run_task(_payload(point=other), None, _center_bytes(0.1))
    assert second["status"] == "ok", second["error"]
    assert second["profile"]["xla_programs"] == 0 and second["profile"]["trace_s"] < 0.5
    assert second["values"]["compile_time_s"] == 0.0 and second["profile"]["tasks_before"] >= 1


def test_restrict_to_reaches_localize(monkeypatch):
    """seams.md 4: a restrict_to grid value is passed to localize as is (mocked here: localize
    gains restrict_to in the restrict branch)."""
    import slt_ppl
    from slt_ppl.sweep.task import run_task

    seen = {}

    def fake_localize(model, data, center=None, **kwargs):
        seen.update(kwargs)
        raise SettingError("stopped after localize")

    monkeypatch.setattr(slt_ppl, "localize", fake_localize)
    record = run_task(_payload(point={"restrict_to": ["w"], "gamma": 5.0}), None, _center_bytes())
    assert seen == {"restrict_to": ["w"], "gamma": 5.0}
    assert record["status"] == "failed" and "stopped after localize" in record["error"]


def test_worker_environment_pins_threads_and_devices(tmp_path):
    from slt_ppl.sweep.runner import worker_env

    env = worker_env({"num_cpus": 2, "num_gpus": 0}, local=True, cache=tmp_path)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert "intra_op_parallelism_threads=2" in env["XLA_FLAGS"]
    assert env["JAX_PLATFORMS"] == "cpu" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path) and "PYTHONPATH" in env
    gpu = worker_env({"num_cpus": 0.5, "num_gpus": 1}, local=False, cache=None)
    assert (
        gpu["OMP_NUM_THREADS"] == "1" and "--xla_cpu_multi_thread_eigen=false" in gpu["XLA_FLAGS"]
    )
    assert "JAX_PLATFORMS" not in gpu and gpu["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "PYTHONPATH" not in gpu and "JAX_COMPILATION_CACHE_DIR" not in gpu


def test_builtin_example_sweep_file_is_valid(tmp_path):
    """examples/dln_training_sweep.toml against what models.training writes (a short run):
    20 checkpoints × 3 ε × 2 γ = 120 tasks, the training log read along the checkpoints."""
    import shutil
    from pathlib import Path

    from models.training import main as train_main
    from slt_ppl.sweep.spec import label

    example = Path(__file__).resolve().parents[1] / "examples" / "dln_training_sweep.toml"
    shutil.copy(example, tmp_path / "sweep.toml")
    assert train_main(["--out", str(tmp_path / "dln_training"), "--steps", "1000"]) == 0
    spec = load_spec(tmp_path / "sweep.toml")
    assert len(spec.checkpoints) == 20 and len(expand(spec)) == 120
    assert list(spec.grid) == ["step_size", "gamma"] and spec.estimators == ("llc", "wbic")
    ds = to_dataset(spec, expand(spec), [str(i) for i in range(120)], {})
    assert ds["training_step"].values.tolist() == list(range(50, 1001, 50))
    assert label("temperatures", [1, 2.0]) == "1,2"


def test_program_groups_order_the_first_submissions(tmp_path):
    """A local sweep submits one task per program group first (runner.pilot_tasks), the rest of
    a group after it; what is a group is checked against compilation in
    test_task_with_temperatures_records_the_two_temperature_llc."""
    from slt_ppl.sweep.runner import pilot_tasks, program_group, release

    grid = {"num_chains": [2, 3], "step_size": [1e-3, 2e-3], "gamma": [5.0, 7.0], "seed": [0, 1]}
    spec = _spec(tmp_path, grid=grid)
    tasks = [(t, str(i)) for i, t in enumerate(expand(spec))]
    first, held = pilot_tasks(spec, tasks)
    assert [t.point["num_chains"] for t, _ in first] == [2, 3]
    assert sorted(len(rest) for rest in held.values()) == [15, 15]
    task = first[0][0]
    for change in ({"step_size": "auto"}, {"kernel": "sgnht"}, {"restrict_to": ["w"]},
                   {"temperatures": [1.0, 2.0]}):  # fmt: skip
        assert program_group(spec, task) != program_group(spec, Task(task.checkpoint, {
            **task.point, **change})), change  # fmt: skip
    group = program_group(spec, task)
    rest = list(held[group])
    assert release(held, group, ok=False) == rest[:1]  # a failed first task: the next one alone
    assert release(held, group, ok=True) == rest[1:] and group not in held
    assert release(held, group, ok=True) == []  # released before
    restricted = _spec(tmp_path, grid=grid, localize={"restrict_to": ["w"]})
    a, b = (t for t in expand(restricted) if t.point == task.point)
    assert program_group(restricted, a) != program_group(restricted, b)  # per checkpoint


def test_union_seconds_counts_nested_spans_once():
    from slt_ppl.sweep.profile import union_seconds

    assert union_seconds([(0.0, 4.0), (1.0, 2.0), (3.0, 6.0), (8.0, 9.0)]) == 7.0
    assert union_seconds([]) == 0.0


def test_environment_is_restored(monkeypatch):
    import os

    from slt_ppl.sweep.runner import environment

    monkeypatch.setenv("SLT_PPL_TEST_A", "a")
    monkeypatch.delenv("SLT_PPL_TEST_B", raising=False)
    with environment({"SLT_PPL_TEST_A": "x", "SLT_PPL_TEST_B": "y"}):
        assert os.environ["SLT_PPL_TEST_A"] == "x" and os.environ["SLT_PPL_TEST_B"] == "y"
    assert os.environ["SLT_PPL_TEST_A"] == "a" and "SLT_PPL_TEST_B" not in os.environ
