"""The torch backend runs on the same driver as JAX: checkpoint + SIGKILL + resume is bit-identical,
divergence retries, ``stream_to``, and chain i's draws are independent of the number of chains and
of the segmenting. Each on a Pyro model and on an ``nn.Module`` (``_torch_models``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyro")

import xarray as xr  # noqa: E402
from _torch_models import torch_posterior  # noqa: E402

import slt_ppl  # noqa: E402
from slt_ppl.errors import SettingError  # noqa: E402
from slt_ppl.sampling.checkpoint import read_checkpoint  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
KINDS = ("pyro", "module")
STATS = ("loss", "loss_center", "acceptance", "grad_norm", "distance", "diverged_at")


@pytest.fixture(scope="module", params=KINDS)
def posterior(request):
    return torch_posterior(request.param)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def _assert_identical(a: xr.DataTree, b: xr.DataTree, groups=("sample_stats", "posterior")):
    for group in groups:
        for name, var in a[group].data_vars.items():
            assert _same(var.values, b[group][name].values), (group, name)


@pytest.mark.parametrize("shared_batches", [True, False])
def test_chain_draws_do_not_depend_on_chain_count_or_segments(posterior, shared_batches):
    kw = dict(
        kernel="sgld", step_size=2e-3, batch_size=20, num_draws=12, num_burnin=4, thin=2,
        seed=5, init_jitter=0.05, progress=False, keep_draws=True, shared_batches=shared_batches,
    )  # fmt: skip
    three = slt_ppl.sample(posterior, num_chains=3, num_segments=3, **kw)
    # segmenting changes nothing, bit for bit
    _assert_identical(three, slt_ppl.sample(posterior, num_chains=3, num_segments=1, **kw))
    # chain 0 alone draws the same noise and minibatches; torch's batched matmuls may round a
    # (1, ...) batch differently from a (3, ...) one (measured: 1 ulp in float32), so the
    # trajectories agree to float32 rounding, not bit for bit
    one = slt_ppl.sample(posterior, num_chains=1, num_segments=7, **kw)
    for group in ("sample_stats", "warmup_sample_stats", "posterior"):
        for name, var in one[group].data_vars.items():
            np.testing.assert_allclose(
                var.values, three[group][name].values[:1], rtol=1e-5, atol=1e-6,
                err_msg=f"{group}/{name}",
            )  # fmt: skip
    loss = three["sample_stats"]["loss"].values
    assert not np.allclose(loss[0], loss[1]), "different chains are different streams"


def test_chain_noise_rows_are_keyed_by_chain_and_counter():
    from slt_ppl.kernels_torch.base import ChainNoise

    like = torch.zeros(3, 5)
    full = ChainNoise([11, 12, 13]).at(7).normal(like)
    assert torch.equal(ChainNoise([12]).at(7).normal(like[:1]), full[1:2])
    assert not torch.equal(ChainNoise([11, 12, 13]).at(8).normal(like), full)
    assert torch.equal(ChainNoise([11, 12, 13]).at(7).normal(like), full)


SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {root!r}]
import torch
torch.set_num_threads(1)
import slt_ppl
from _torch_models import torch_posterior
post = torch_posterior({kind!r})
slt_ppl.sample(post, checkpoint=sys.argv[1], **{settings!r})
"""


@pytest.mark.parametrize("kind, kernel", [("pyro", "rmsprop_sgld"), ("module", "sgnht")])
def test_sigkill_then_resume_is_bit_identical(tmp_path, kind, kernel):
    # 8 segments with a checkpoint after each (a write takes ~0.1-0.8 s): the kill lands right
    # after the first one, well before the end
    settings = dict(
        kernel=kernel, num_chains=3, num_draws=40, num_burnin=20, step_size=2e-3, seed=11, thin=1,
        init_jitter=0.05, num_segments=8, progress=False, keep_draws=True,
    )  # fmt: skip
    ckpt = tmp_path / "run.nc"
    script = tmp_path / "run_sampler.py"
    source = SCRIPT.format(tests=str(ROOT / "tests"), root=str(ROOT), kind=kind, settings=settings)
    script.write_text(textwrap.dedent(source))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckpt)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        if proc.poll() is not None:
            pytest.fail(f"sampler exited early: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    partial = read_checkpoint(ckpt)
    assert 0 < partial.next_draw < partial.total_draws, "the kill must land mid-run"

    post = torch_posterior(kind)
    resumed = slt_ppl.sample(post, checkpoint=ckpt, resume=True, **settings)
    assert resumed.attrs["resumed_from_draw"] >= partial.next_draw
    fresh = slt_ppl.sample(post, **settings)
    _assert_identical(fresh, resumed, ("sample_stats", "warmup_sample_stats", "posterior"))
    assert read_checkpoint(ckpt).complete
    with pytest.raises(SettingError, match="seed: checkpoint 11 vs now 12"):
        slt_ppl.sample(post, checkpoint=ckpt, resume=True, **{**settings, "seed": 12})


def test_retry_on_divergence_halves_the_step(posterior):
    from slt_ppl.sampling.torch_stepsize import top_curvature

    h = top_curvature(posterior, posterior.data)
    eps = 5.0 / h  # |1 − εh/2| = 1.5: the stiffest direction blows up; ε/2 is stable
    # untamed (``tame_drift`` off: tamed chains stay finite here, tests/test_tamed_drift.py)
    kw = dict(kernel="sgld", num_chains=2, num_draws=60, step_size=eps, progress=False,
              num_segments=2, explode=10.0, thin=1, kernel_options={"tame": None})  # fmt: skip
    bad = slt_ppl.sample(posterior, **kw)
    assert (bad["sample_stats"]["diverged_at"].values >= 0).all()
    res = slt_ppl.sample(posterior, retry_on_divergence=1, **kw)
    history = json.loads(res.attrs["retry_history"])
    assert history[0] == {"step_size": eps, "chains_diverged": 2}
    assert history[1] == {"step_size": eps / 2, "chains_diverged": 0}
    assert res.attrs["divergence_retries"] == 1 and res.attrs["step_size"] == eps / 2
    assert (res["sample_stats"]["diverged_at"].values == -1).all()


def test_stream_to_matches_kept_draws(tmp_path, posterior):
    kw = dict(
        kernel="sgld", step_size=1e-3, batch_size=30, num_chains=2, num_draws=15, num_burnin=6,
        thin=2, progress=False, num_segments=4, init_jitter=0.05,
    )  # fmt: skip
    kept = slt_ppl.sample(posterior, keep_draws=True, **kw)
    path = tmp_path / "draws.nc"
    streamed = slt_ppl.sample(posterior, stream_to=path, **kw)
    assert "posterior" not in streamed.children and streamed.attrs["draws_file"] == str(path)
    _assert_identical(kept, streamed, ("sample_stats", "warmup_sample_stats"))
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        burn = int(ds.attrs["num_burnin_draws"])
        assert ds["position"].shape == (2, burn + 15, posterior.dim)
        assert _same(ds["loss"].values[:, burn:], kept["sample_stats"]["loss"].values)
        flat = ds["position"].values[:, burn:]
    w = kept["posterior"].to_dataset()
    site = next(iter(posterior.sites))
    np.testing.assert_array_equal(w[site].values.reshape(2, 15, -1), flat)


def test_devices_option_says_what_it_does(posterior):
    kw = dict(num_chains=2, num_draws=2, step_size=1e-3, progress=False, thin=1)
    one = slt_ppl.sample(posterior, devices=1, **kw)
    assert one.attrs["device"] == "cpu" and one.attrs["num_devices"] == 1
    with pytest.raises(SettingError, match="runs all chains as one batch"):
        slt_ppl.sample(posterior, devices=2, **kw)


@pytest.mark.parametrize("shared_batches", [True, False])
def test_center_table_matches_forward_pass(posterior, shared_batches):
    from slt_ppl.kernels_torch import get_kernel
    from slt_ppl.sampling.torch_backend import TorchBackend
    from slt_ppl.sampling.torch_loop import TorchSegmentRunner

    backend = TorchBackend()
    backend.check_posterior(posterior)
    chain_keys, batch_keys = backend.keys(3, 0, np.arange(2), shared_batches)
    records = {}
    for mode in ("auto", "off"):
        runner = TorchSegmentRunner(
            posterior, get_kernel("sgld"), 20, 1, 5, False, shared_batches, 1e3,
            center_table=mode,
        )  # fmt: skip
        state = runner.init(chain_keys, backend.initial_positions(posterior, chain_keys, 0.05))
        assert (runner._fns["table"] is None) == (mode == "off")
        records[mode] = runner.build(10)(state, chain_keys, batch_keys, 1e-3, 0)[1]
    # a mean of 20 per-datum float32 losses vs one forward pass: equal to float32 rounding
    np.testing.assert_allclose(records["auto"].loss_center, records["off"].loss_center, rtol=1e-5)
    np.testing.assert_array_equal(records["auto"].loss, records["off"].loss)


def test_temperatures_and_heating_statistics_match_theory(posterior):
    """Linear regression: ∇²L_B(w) = X_BᵀX_B/B for every w, so the Hutchinson laplacian at nβ·f
    has mean nβ·f·tr(XᵀX)/n exactly (unbiased over the Rademacher probe and the minibatch). Each
    diagnostic draw is an independent probe and minibatch, so the standard error is the sample
    standard deviation over √(draws); we allow 4 of them."""
    res = slt_ppl.sample(
        posterior, kernel="sgld", num_chains=2, num_draws=150, num_burnin=0, step_size=1e-3,
        progress=False, temperatures=(1.0, 2.0), diag_every=2, batch_size=40, num_segments=2,
        thin=1,
    )  # fmt: skip
    stats = res["sample_stats"]
    assert dict(stats["loss"].sizes) == {"temperature": 2, "chain": 2, "draw": 150}
    x = posterior.data["x"].double()
    exact = posterior.nbeta * float(torch.sum(x**2)) / posterior.n
    for factor in (1.0, 2.0):
        lap = stats["laplacian"].sel(temperature=factor).values
        assert np.isnan(lap[:, 1::2]).all() and np.isfinite(lap[:, ::2]).all()
        sample = lap[:, ::2].ravel()
        se = sample.std(ddof=1) / np.sqrt(sample.size)
        assert abs(sample.mean() - factor * exact) <= 4 * se, (sample.mean(), factor * exact, se)
        noise = stats["grad_noise"].sel(temperature=factor).values[:, ::2]
        assert (noise >= 0).all() and np.isfinite(noise).all()


def test_auto_step_size_uses_the_shared_tuner():
    # one kind only: the tuner's windows (≥ 400 draws) dominate; test_pyro_agreement tunes Pyro.
    # The torch step program records the heating statistics, so ε is adapted along the chains
    # (sampling.stepsize.adapt_along_chains) exactly as for JAX.
    res = slt_ppl.sample(
        torch_posterior("module"), kernel="sgld", batch_size=50, num_chains=2, num_draws=10,
        progress=False, temperatures=(1, 2), thin=1,
    )  # fmt: skip
    tuning = json.loads(res.attrs["step_size_tuning"])
    assert tuning["method"].startswith("along-chain"), tuning["method"]
    assert tuning["chosen"] == res.attrs["step_size"] > 0 and "caps_at_center" in tuning


def test_each_temperature_steps_at_eps_over_factor_torch():
    """Torch twin of test_two_temperature's rule test: the factor-2 chains of a ``temperatures``
    run are the single-temperature chains at nβ·2 and ε/2 (per-chain ε as a (C, 1) tensor in the
    kernels); equal up to float32 rounding of ε/2 (1e-6 relative). (~2 s)"""
    import dataclasses

    post = torch_posterior("module")
    kw = dict(kernel="sgld", num_chains=2, num_draws=40, num_burnin=0, thin=2, batch_size=40,
              progress=False, seed=3, init_jitter=0.1)  # fmt: skip
    both = slt_ppl.sample(post, step_size=1e-4, temperatures=(1.0, 2.0), **kw)
    cold = slt_ppl.sample(dataclasses.replace(post, nbeta=post.nbeta * 2.0), step_size=5e-5, **kw)
    a = both["sample_stats"]["loss"].sel(temperature=2.0).values
    b = cold["sample_stats"]["loss"].values
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))
    assert not np.allclose(a, both["sample_stats"]["loss"].sel(temperature=1.0).values)


def test_rmsprop_without_burnin_is_finite_torch():
    """rmsprop_sgld with num_burnin=0 freezes its preconditioner before the first update
    (freeze_after = 0): V̂ must be 0 there (G = 1/δ, as in JAX), not 0/0 — every chain used to
    come back NaN, "diverged at step 0". (~1 s)"""
    res = slt_ppl.sample(torch_posterior("module"), kernel="rmsprop_sgld", step_size=1e-9,
                         num_chains=2, num_draws=5, num_burnin=0, thin=1, batch_size=40,
                         progress=False)  # fmt: skip
    assert np.isfinite(res["sample_stats"]["loss"].values).all()


@pytest.mark.parametrize("per_chain", [False, True])
def test_batched_gradient_equals_per_chain_gradients(posterior, per_chain):
    """The step's gradient (forward vmapped over chains, one autograd pass of the chain sum:
    ``torch_loop.batched_grad``) is exactly ``torch.func.grad`` of each chain's potential on its
    own — bit for bit against ``vmap(grad)``, which batches the same matmuls; the one-chain path
    (no vmap) against the unbatched gradient. Temperatures (per-chain nβ factors) included."""
    from slt_ppl.kernels_torch import get_kernel
    from slt_ppl.sampling.torch_loop import TorchSegmentRunner

    factors = np.array([1.0, 2.0, 0.5], dtype=np.float32)
    runner = TorchSegmentRunner(posterior, get_kernel("sgld"), 20, 1, 20, False, not per_chain,
                                1e3, factors)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    w = posterior.center + 0.1 * torch.randn(3, posterior.dim, generator=gen)
    rows = torch.randint(0, posterior.n, (3, 20) if per_chain else (20,), generator=gen)
    batch = {k: v[rows] for k, v in posterior.data.items()}
    f = torch.as_tensor(factors)

    def potential(wc, b, fc):
        loss = posterior.loss_fn(wc, b)
        return posterior.nbeta * fc * loss + posterior.localization(wc), loss

    one = torch.func.grad_and_value(potential, has_aux=True)
    grad, (u, loss) = torch.func.vmap(one, in_dims=(0, 0 if per_chain else None, 0))(w, batch, f)
    got_u, got_loss, got_grad = runner.value_and_grad(batch, per_chain)(w)
    for got, want in ((got_grad, grad), (got_u, u), (got_loss, loss)):
        assert torch.equal(got, want)
    single = {k: v[:1] for k, v in batch.items()} if per_chain else batch
    runner1 = TorchSegmentRunner(posterior, get_kernel("sgld"), 20, 1, 20, False, not per_chain,
                                 1e3, factors[:1])  # fmt: skip
    u1, _, g1 = runner1.value_and_grad(single, per_chain)(w[:1])
    g_ref, (u_ref, _) = one(w[0], {k: v[0] for k, v in single.items()} if per_chain else batch,
                            f[0])  # fmt: skip
    assert g1.shape == w[:1].shape and torch.equal(g1[0], g_ref) and torch.equal(u1[0], u_ref)
