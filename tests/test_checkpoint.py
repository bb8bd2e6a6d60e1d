"""Checkpoint and resume: a run killed with SIGKILL resumes to the uninterrupted result, bit for
bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _reliability_models import regression_problem

import slt_ppl
from slt_ppl.errors import SettingError
from slt_ppl.sampling.checkpoint import (
    checkpoint_path,
    read_checkpoint,
    resume_run,
    resume_settings,
)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(
    kernel="sgld", thin=1, num_chains=3, num_draws=1500, num_burnin=300, step_size=2e-3, seed=11,
    init_jitter=0.05,
    num_segments=30, progress=False, keep_draws=True,
)  # fmt: skip

SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {root!r}]
import slt_ppl
from _reliability_models import regression_problem
model, data, center = regression_problem()
post = slt_ppl.localize(model, data, center)
slt_ppl.sample(post, checkpoint=sys.argv[1], checkpoint_every=1, **{settings!r})
"""


@pytest.fixture(scope="module")
def posterior():
    model, data, center = regression_problem()
    return slt_ppl.localize(model, data, center)


def _assert_identical(a, b):
    for group in ("sample_stats", "warmup_sample_stats", "posterior"):
        for name, var in a[group].data_vars.items():
            x, y = var.values, b[group][name].values
            assert x.dtype == y.dtype and x.shape == y.shape, (group, name)
            assert np.array_equal(x, y, equal_nan=True), (group, name)
    for key in ("step_size", "step_size_tuning", "seed", "num_chains", "kernel"):
        assert a.attrs[key] == b.attrs[key], key


def test_sigkill_then_resume_is_bit_identical(tmp_path, posterior):
    ckpt = tmp_path / "run.nc"
    script = tmp_path / "run_sampler.py"
    script.write_text(
        textwrap.dedent(SCRIPT).format(tests=str(ROOT / "tests"), root=str(ROOT), settings=SETTINGS)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckpt)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        if proc.poll() is not None:
            pytest.fail(f"sampler exited early: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    partial = read_checkpoint(ckpt)
    assert 0 < partial.next_draw < partial.total_draws, "the kill must land mid-run"

    resumed = slt_ppl.sample(posterior, checkpoint=ckpt, resume=True, **SETTINGS)
    assert resumed.attrs["resumed_from_draw"] >= partial.next_draw
    assert not list(tmp_path.glob("run.nc.tmp*")), "stray temporary files are cleaned up"
    fresh = slt_ppl.sample(posterior, **SETTINGS)
    _assert_identical(fresh, resumed)
    assert read_checkpoint(ckpt).complete

    # resuming a finished run returns the same result without sampling again
    again = slt_ppl.sample(posterior, checkpoint=ckpt, resume=True, **SETTINGS)
    assert again.attrs["resumed_from_draw"] == partial.total_draws
    _assert_identical(fresh, again)

    # front ends (the CLI's --resume) read the settings back from the file
    stored = resume_settings(ckpt)
    for key in ("num_chains", "num_draws", "seed", "step_size", "num_segments"):
        assert stored[key] == (repr(SETTINGS[key]) if key == "step_size" else SETTINGS[key])
    _assert_identical(fresh, resume_run(posterior, ckpt, progress=False))


def test_resume_refuses_other_settings_and_starts_fresh_without_file(tmp_path, posterior):
    small = {**SETTINGS, "num_draws": 40, "num_burnin": 0, "num_segments": 2}
    path = tmp_path / "ckpts"  # a directory: the file is <dir>/checkpoint.nc
    first = slt_ppl.sample(posterior, checkpoint=path, resume=True, **small)
    assert first.attrs["resumed_from_draw"] == -1
    assert checkpoint_path(path) == path / "checkpoint.nc" and (path / "checkpoint.nc").exists()
    with pytest.raises(SettingError, match="seed: checkpoint 11 vs now 12"):
        slt_ppl.sample(posterior, checkpoint=path, resume=True, **{**small, "seed": 12})
    with pytest.raises(SettingError, match="resume=True needs checkpoint"):
        slt_ppl.sample(posterior, resume=True, **small)
    (path / "checkpoint.nc").write_bytes(b"not a checkpoint")
    with pytest.raises(SettingError, match="cannot read the checkpoint"):
        slt_ppl.sample(posterior, checkpoint=path, resume=True, **small)


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, writes: int):
    """Make the checkpoint writer raise after ``writes`` successful writes (an in-process crash)."""
    from slt_ppl.sampling import recovery
    from slt_ppl.sampling.checkpoint import write_checkpoint

    done = []

    def flaky(path, ckpt):
        if len(done) >= writes:
            raise _Crash
        write_checkpoint(path, ckpt)
        done.append(ckpt.next_draw)

    monkeypatch.setattr(recovery, "write_checkpoint", flaky)
    return done


def test_momentum_kernel_resumes_mid_run(tmp_path, posterior, monkeypatch):
    kwargs = dict(
        kernel="sghmc", num_chains=2, num_draws=30, step_size=1e-3, seed=2, num_segments=6,
        progress=False,
    )  # fmt: skip
    ckpt = tmp_path / "sghmc.nc"
    done = _crash_after(monkeypatch, 3)
    with pytest.raises(_Crash):
        slt_ppl.sample(posterior, checkpoint=ckpt, **kwargs)
    monkeypatch.undo()
    assert read_checkpoint(ckpt).next_draw == done[-1] < read_checkpoint(ckpt).total_draws
    resumed = slt_ppl.sample(posterior, checkpoint=ckpt, resume=True, **kwargs)
    assert resumed.attrs["resumed_from_draw"] == done[-1]
    fresh = slt_ppl.sample(posterior, **kwargs)
    for name, var in fresh["sample_stats"].data_vars.items():
        assert np.array_equal(var.values, resumed["sample_stats"][name].values, equal_nan=True)


def test_resume_inside_a_divergence_retry(tmp_path, monkeypatch):
    import warnings

    from _reliability_models import TRAP_JITTER, TRAP_SEED, trap_problem

    from slt_ppl.errors import DivergenceWarning

    model, data, center = trap_problem()
    post = slt_ppl.localize(model, data, center)
    kwargs = dict(
        kernel="sgld", thin=1, num_chains=4, num_draws=20, step_size=1e-3, seed=TRAP_SEED,
        init_jitter=TRAP_JITTER,
        num_segments=4, progress=False, retry_on_divergence=1,
    )  # fmt: skip
    ckpt = tmp_path / "retry.nc"
    _crash_after(monkeypatch, 6)  # 4 writes for attempt 0, then 2 into the retry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        with pytest.raises(_Crash):
            slt_ppl.sample(post, checkpoint=ckpt, **kwargs)
        monkeypatch.undo()
        partial = read_checkpoint(ckpt)
        assert partial.attempt == 1 and partial.step_size == 5e-4
        assert partial.retries == [{"step_size": 1e-3, "chains_diverged": 1}]
        resumed = slt_ppl.sample(post, checkpoint=ckpt, resume=True, **kwargs)
        fresh = slt_ppl.sample(post, **kwargs)
    for key in ("step_size", "divergence_retries", "retry_history"):
        assert resumed.attrs[key] == fresh.attrs[key], key
    for name, var in fresh["sample_stats"].data_vars.items():
        assert np.array_equal(var.values, resumed["sample_stats"][name].values, equal_nan=True)
