"""The structural program cache (``compile_cache.shared_program``, ``sampling.program_key``):
a second run of the same model shape traces nothing and gives exactly the draws of an uncached
run; programs that differ (a closure constant, a data shape, kernel options, a restriction mask,
a custom differentiation rule) never share a key. Exact equality is the right test: the cached
and the uncached run execute the same XLA program on the same arguments, so any difference, even
in the last bit, means a wrong program was reused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_ppl
from slt_ppl import compile_cache
from slt_ppl.kernels import get_kernel
from slt_ppl.restrict import restrict
from slt_ppl.sampling.loop import SegmentRunner
from slt_ppl.sampling.program_key import loss_digest

N = 96
RNG = np.random.default_rng(0)
DATA = {"x": RNG.normal(size=(N, 2)).astype(np.float32)}
DATA["y"] = (DATA["x"] @ np.array([0.5, -0.3], np.float32) + 0.1 * RNG.normal(size=N)).astype(
    np.float32
)
RUN = dict(kernel="sgld", step_size=1e-3, batch_size=32, num_chains=2, num_draws=40, thin=1)


def make_loss(scale: float):
    """A linear-regression NLL whose noise scale is a closure constant."""

    def loss(params, batch):
        resid = batch["y"] - batch["x"] @ params["w"]
        return jnp.mean(0.5 * (resid / scale) ** 2)

    return loss


def _localize(scale: float = 1.0, center=(0.5, -0.3), data=DATA, **kw):
    center = {"w": jnp.asarray(center, jnp.float32)}
    return slt_ppl.localize(make_loss(scale), data, center, **{"gamma": 10.0, **kw})


def _draws(post, **kw):
    res = slt_ppl.sample(post, **{**RUN, **kw}, keep_draws=True, progress=False)
    return res["sample_stats"]["loss"].values, res["posterior"]["w"].values


def _uncached(post, **kw):
    with compile_cache.programs_disabled():
        return _draws(post, **kw)


def test_second_run_traces_nothing_and_matches_an_uncached_run() -> None:
    _draws(_localize(), seed=0)
    lowerings = compile_cache.STATS["program_lowerings"]
    hits = compile_cache.STATS["program_hits"]
    # another checkpoint, seed, γ and nβ: all arguments of the same programs
    other = _localize(center=(0.45, -0.25), gamma=30.0, nbeta=50.0)
    cached = _draws(other, seed=1)
    # not one program of localize's center evaluation or of the sampling loop traced or lowered
    # (preflight's center-gradient check and the step-size check's curvature still lower theirs)
    assert compile_cache.STATS["program_lowerings"] == lowerings
    assert compile_cache.STATS["program_hits"] > hits
    compile_cache.clear()  # and not even XLA's executables: everything built from scratch
    fresh = _uncached(other, seed=1)
    for a, b in zip(cached, fresh, strict=True):
        np.testing.assert_array_equal(a, b)


def test_temperatures_are_arguments_and_match_an_uncached_run() -> None:
    post = _localize()
    cached = _draws(post, seed=2, temperatures=(1.0, 2.0))
    again = _draws(post, seed=2, temperatures=(1.0, 3.0))
    fresh = _uncached(post, seed=2, temperatures=(1.0, 3.0))
    for a, b in zip(again, fresh, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(cached[0], again[0])  # the second temperature did change


SETTINGS = {"scale": 1.0}


def global_loss(params, batch):
    """Reads its noise scale from a mutable global when it is traced."""
    resid = batch["y"] - batch["x"] @ params["w"]
    return jnp.mean(0.5 * (resid / SETTINGS["scale"]) ** 2)


def test_a_changed_constant_makes_another_program() -> None:
    """The same posterior sampled again after a global its loss reads has changed: the loss
    traces to another program (a constant of the jaxpr), which must not be served the first one
    (nor a digest remembered from the first call)."""
    post = slt_ppl.localize(global_loss, DATA, {"w": jnp.asarray([0.5, -0.3])}, gamma=10.0)
    first = _draws(post, seed=3)
    misses = compile_cache.STATS["program_misses"]
    SETTINGS["scale"] = 2.0
    try:
        cached = _draws(post, seed=3)
        assert compile_cache.STATS["program_misses"] > misses
        fresh = _uncached(post, seed=3)
    finally:
        SETTINGS["scale"] = 1.0
    for a, b in zip(cached, fresh, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], cached[0])


def _key(post, kernel="sgld", batch=32, **options):
    runner = SegmentRunner(post, get_kernel(kernel, **options), batch, 1, 4, False, True, 1e3)
    object.__setattr__(runner, "kernel_key", ("named", kernel, tuple(sorted(options.items()))))
    return runner.program_key


def test_keys_tell_apart_what_changes_the_program() -> None:
    base = _localize()
    key = _key(base)
    assert key is not None
    assert _key(_localize(center=(0.1, 0.2), gamma=3.0)) == key  # arguments only
    assert _key(_localize(scale=1.5)) != key  # a closure constant
    half = {k: v[: N // 2] for k, v in DATA.items()}
    assert _key(_localize(data=half)) != key  # the data shape
    as16 = {k: v.astype(np.float16) for k, v in DATA.items()}
    assert _key(_localize(data=as16)) != key  # the data dtype
    assert _key(base, batch=16) != key  # the minibatch
    assert _key(base, kernel="sghmc") != _key(base, kernel="sghmc", friction=0.5)  # options
    # two restrictions of the same size: the mask is a constant of the loss
    first = restrict(base, {"['w']": np.array([True, False])})
    second = restrict(base, {"['w']": np.array([False, True])})
    assert _key(first) is not None and _key(first) != _key(second)


def _with_rule(slope: float):
    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        return jnp.sin(x), slope * jnp.cos(x) * dx

    def loss(w, batch):
        return jnp.mean(f(batch["x"] @ w))

    return loss


def test_custom_differentiation_rules_are_part_of_the_key() -> None:
    """Equal forward programs, different derivative rules: different programs."""
    w, data = jnp.zeros(2), {"x": jnp.ones((4, 2))}
    assert loss_digest(_with_rule(1.0), w, data, {4}) == loss_digest(_with_rule(1.0), w, data, {4})
    assert loss_digest(_with_rule(1.0), w, data, {4}) != loss_digest(_with_rule(2.0), w, data, {4})


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_center_loss_is_each_models_own(scale: float) -> None:
    """localize evaluates L_n(w*) through the structural cache: each closure constant its own."""
    post = _localize(scale=scale)
    direct = float(make_loss(scale)({"w": post.center}, DATA))
    assert post.info["loss_center_full"] == pytest.approx(direct, rel=1e-6)
