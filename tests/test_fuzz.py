"""Fuzzing the public entry points: every input either gives a healthy-or-flagged result or raises a
documented ``SLTError`` subclass, never an exception from deep inside NumPy, JAX or NumPyro.

Cases are cheap by design (compiling a sampler costs seconds): most generated inputs are invalid in
exactly one field and must be refused before anything compiles; a minority are valid and run end to
end on tiny shapes. The total number of generated cases is printed at the end of the module (>=
500).
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from _reliability_models import regression_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import slt_ppl
from slt_ppl.backends.common import validate_data
from slt_ppl.errors import SLTError, SLTWarning
from slt_ppl.posterior import LocalPosterior

COUNTS: dict[str, int] = {}
MIN_TOTAL = 500


def fuzz_settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module", autouse=True)
def report_case_count(pytestconfig):
    yield
    total = sum(COUNTS.values())
    detail = ", ".join(f"{k} {v}" for k, v in COUNTS.items())
    line = f"test_fuzz: {total} generated cases ({detail})"
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")
    if len(COUNTS) == 4:  # the whole module ran
        assert total >= MIN_TOTAL, line


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


def _outcome(fn):
    """Run ``fn``; return its value, or the SLTError it raised. Anything else propagates (a bug)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SLTWarning)
        try:
            return fn()
        except SLTError as err:
            assert str(err), "errors must say what is wrong"
            return err


# ----------------------------------------------------------------------------- validate_data

DTYPES = [
    np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint64,
    np.bool_, np.complex64,
]  # fmt: skip

any_array = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
odd_value = st.one_of(
    st.none(), st.text(max_size=3), st.floats(), st.integers(), st.just([[1, 2], [3]]),
    st.lists(st.floats(allow_nan=True), max_size=4), st.just({"nested": 1}),
    st.just(np.array(["a", "b"])), st.just(np.array([object(), 1], dtype=object)),
)  # fmt: skip
data_dicts = st.one_of(
    st.dictionaries(st.text(min_size=1, max_size=3), any_array, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=2), st.integers()), st.one_of(any_array, odd_value),
                    max_size=3),
    st.lists(any_array, max_size=2),
    odd_value,
)  # fmt: skip


@fuzz_settings(250)
@given(data=data_dicts)
def test_fuzz_validate_data(data):
    _count("validate_data")
    out = _outcome(lambda: validate_data(data))
    if not isinstance(out, SLTError):
        arrays, n = out
        assert n >= 2 and all(a.shape[0] == n for a in arrays.values())
        assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


# ----------------------------------------------------------------------------- localize


def fz_regression(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    numpyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def fz_scale(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


def fz_logistic(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=x @ w), obs=y)


def fz_discrete_latent(x, y=None):
    k = numpyro.sample("w", dist.Bernoulli(0.5))
    numpyro.sample("y", dist.Normal(k * x.sum(-1), 1.0), obs=y)


def fz_prior_only(x, y=None):
    numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))


def fz_loss(params, batch):
    return jnp.mean((batch["y"] - batch["x"] @ params["w"]) ** 2)


MODELS = {
    "regression": fz_regression, "scale": fz_scale, "logistic": fz_logistic,
    "discrete_latent": fz_discrete_latent, "prior_only": fz_prior_only, "loss": fz_loss,
}  # fmt: skip
CORRUPTIONS = [
    "missing_key", "extra_key", "center_shape", "center_nan", "center_support", "center_type",
    "center_int", "data_nan", "data_length", "data_scalar", "data_key", "data_dtype", "y_labels",
    "nbeta", "gamma", "backend", "n_small", "x_rank",
]  # fmt: skip


@st.composite
def localize_cases(draw):
    model = draw(st.sampled_from(list(MODELS)))
    # at most one corruption; None (valid input) about one case in seven
    corruption = draw(st.sampled_from([None] * 3 + CORRUPTIONS))
    n = draw(st.sampled_from([2, 3, 8, 17]))
    d = draw(st.sampled_from([1, 2, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.normal(size=(n, d)).astype(draw(st.sampled_from([np.float32, np.float64])))
    y = (x @ np.ones(d) + rng.normal(size=n)).astype(np.float32)
    if model == "logistic":
        y = (y > 0).astype(draw(st.sampled_from([np.int32, np.float32, np.bool_])))
    data = {"x": x, "y": y}
    center = {"w": np.zeros(d, np.float32)}
    if model == "scale":
        center["sigma"] = np.float32(1.0)
    if model == "discrete_latent":
        center = {"w": np.float32(1.0)}
    kwargs = {"nbeta": None, "gamma": draw(st.sampled_from(["auto", 1.0, 0.0]))}
    if corruption == "missing_key":
        center.pop("w")
    elif corruption == "extra_key":
        center["bogus"] = np.zeros(2)
    elif corruption == "center_shape":
        center["w"] = np.zeros(d + draw(st.integers(1, 2)), np.float32)
    elif corruption == "center_nan":
        center["w"] = np.full(d, draw(st.sampled_from([np.nan, np.inf])), np.float32)
    elif corruption == "center_support":
        center["sigma"] = np.float32(draw(st.sampled_from([-1.0, 0.0])))
    elif corruption == "center_type":
        center = draw(st.sampled_from([None, 3.0, [0.0] * d, "w"]))
    elif corruption == "center_int":
        center["w"] = np.zeros(d, np.int32)
    elif corruption == "data_nan":
        data["x"] = data["x"].copy()
        data["x"][0, 0] = np.nan
    elif corruption == "data_length":
        data["y"] = data["y"][:-1]
    elif corruption == "data_scalar":
        data["y"] = np.float32(1.0)
    elif corruption == "data_key":
        data["z"] = data.pop("y")
    elif corruption == "data_dtype":
        data["x"] = data["x"].astype(draw(st.sampled_from([np.complex64, np.str_, object])))
    elif corruption == "y_labels":
        data["y"] = np.arange(n) % 3 + draw(st.sampled_from([0, 1]))
    elif corruption == "nbeta":
        kwargs["nbeta"] = draw(st.sampled_from([-1.0, 0.0, math.nan, math.inf, "big", [1]]))
    elif corruption == "gamma":
        kwargs["gamma"] = draw(st.sampled_from([-1.0, math.nan, math.inf, "strong", [1]]))
    elif corruption == "backend":
        kwargs["backend"] = draw(st.sampled_from(["tensorflow", "", 3]))
    elif corruption == "n_small":
        data = {k: v[:1] for k, v in data.items()}
    elif corruption == "x_rank":
        data["x"] = data["x"][:, 0]
    return model, data, center, kwargs


@fuzz_settings(150)
@given(case=localize_cases())
def test_fuzz_localize(case):
    _count("localize")
    model, data, center, kwargs = case
    fn = MODELS[model]
    if model == "loss" and isinstance(center, dict):
        center = {k: jnp.asarray(v) for k, v in center.items()}
    out = _outcome(lambda: slt_ppl.localize(fn, data, center, **kwargs))
    if isinstance(out, LocalPosterior):
        assert math.isfinite(out.info["loss_center_full"])
        assert out.dim == sum(int(np.size(v)) for v in center.values())
        assert math.isfinite(out.gamma) and out.gamma >= 0 and out.nbeta > 0


# ----------------------------------------------------------------------------- sample


@pytest.fixture(scope="module")
def tiny_posterior():
    model, data, center = regression_problem(n=24, d=2)
    return slt_ppl.localize(model, data, center)


VALID_SAMPLE = {
    "kernel": st.sampled_from(["sgld", "rmsprop_sgld", "sghmc", "sgnht", "mala"]),
    "step_size": st.sampled_from([1e-4, 1e-3]),
    "batch_size": st.sampled_from([None, 4, 24]),
    "num_chains": st.sampled_from([1, 2]),
    "num_draws": st.sampled_from([1, 2, 5]),
    "num_burnin": st.sampled_from([None, 0, 3]),
    "thin": st.sampled_from([1, 2]),
    "seed": st.integers(0, 2**31),
    "diag_every": st.sampled_from([1, 3]),
    "init_jitter": st.sampled_from([0.0, 0.1]),
    "explode": st.sampled_from([1e3, 10.0]),
    "keep_draws": st.booleans(),
    "shared_batches": st.booleans(),
    "num_segments": st.sampled_from([1, 2]),
    "retry_on_divergence": st.sampled_from([0, 1]),
    "max_diverged_fraction": st.sampled_from([0.0, 0.5]),
}
INVALID_SAMPLE = {
    "kernel": st.sampled_from(["bogus", 3, None]),
    "step_size": st.sampled_from([0.0, -1.0, math.nan, math.inf, "fast", [1e-3]]),
    "batch_size": st.sampled_from([0, -1, 25, 2.5, "4"]),
    "num_chains": st.sampled_from([0, -1, 2.5, "2", None]),
    "num_draws": st.sampled_from([0, -3, 1.5, "5"]),
    "num_burnin": st.sampled_from([-1, 1.5, "3"]),
    "thin": st.sampled_from([0, -1, 1.5]),
    "seed": st.sampled_from([-1, 2**40, 1.5, "0", None]),
    "diag_every": st.sampled_from([0, -2, 0.5]),
    "init_jitter": st.sampled_from([-0.1, math.nan, math.inf, "big"]),
    "explode": st.sampled_from([0.0, -1.0, math.nan, "x"]),
    "num_segments": st.sampled_from([0, -1, 1.5, "2"]),
    "retry_on_divergence": st.sampled_from([-1, 1.5, "1"]),
    "max_diverged_fraction": st.sampled_from([-0.1, 1.0, math.nan, "half"]),
    "checkpoint_every": st.sampled_from([0, -1, 1.5]),
    "kernel_options": st.sampled_from([{"bogus": 1}, [1], "x"]),
    "resume": st.just(True),
    "checkpoint": st.sampled_from([3, 1.5]),
}


@st.composite
def sample_cases(draw):
    kwargs = {k: draw(v) for k, v in VALID_SAMPLE.items()}
    # about one case in twelve valid, else exactly one setting invalid
    bad = draw(st.sampled_from([None] * 3 + list(INVALID_SAMPLE) * 2))
    if bad is not None:
        kwargs[bad] = draw(INVALID_SAMPLE[bad])
    return kwargs


@fuzz_settings(100)
@given(kwargs=sample_cases())
def test_fuzz_sample(tiny_posterior, kwargs):
    _count("sample")
    out = _outcome(lambda: slt_ppl.sample(tiny_posterior, progress=False, **kwargs))
    if isinstance(out, xr.DataTree):
        stats = out["sample_stats"]
        assert stats["loss"].shape == (kwargs["num_chains"], kwargs["num_draws"])
        healthy = stats["diverged_at"].values < 0
        assert np.isfinite(stats["loss"].values[healthy]).all()
        est = _outcome(lambda: slt_ppl.llc(out))
        assert isinstance(est, xr.Dataset | SLTError)


# ----------------------------------------------------------------------------- llc on odd results


@st.composite
def results(draw):
    chains = draw(st.integers(1, 4))
    draws = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    loss = rng.normal(1.0, 0.1, size=(chains, draws))
    center = rng.normal(1.0, 0.1, size=(chains, draws))
    if draw(st.booleans()):
        loss[rng.random(loss.shape) < draw(st.sampled_from([0.05, 0.5, 1.0]))] = np.nan
    diverged = np.where(rng.random(chains) < draw(st.sampled_from([0.0, 0.5, 1.0])), 3, -1)
    stats = xr.Dataset(
        {
            "loss": (("chain", "draw"), loss),
            "loss_center": (("chain", "draw"), center),
            "acceptance": (("chain", "draw"), rng.uniform(0.8, 1.0, size=(chains, draws))),
            "grad_norm": (("chain", "draw"), np.ones((chains, draws))),
            "distance": (("chain", "draw"), np.ones((chains, draws))),
            "diverged_at": ("chain", diverged),
        },
        coords={"chain": np.arange(chains), "draw": np.arange(draws)},
    )
    groups = {"sample_stats": stats}
    drop = draw(st.sampled_from([None, None, "diverged_at", "loss_center", "group"]))
    if drop == "group":
        groups = {"posterior": stats}
    elif drop is not None:
        groups["sample_stats"] = stats.drop_vars(drop)
    tree = xr.DataTree.from_dict(groups)
    attrs = {"nbeta": 50.0, "loss_center_full": 1.0, "kernel": "sgld", "n": 100}
    missing = draw(st.sampled_from([None, None, "nbeta", "loss_center_full"]))
    attrs.pop(missing, None)
    tree.attrs.update(attrs)
    method = draw(st.sampled_from(["paired", "paired", "unpaired", "bogus"]))
    return tree, method


@fuzz_settings(120)
@given(case=results())
def test_fuzz_llc(case):
    _count("llc")
    tree, method = case
    out = _outcome(lambda: slt_ppl.llc(tree, method=method))
    if isinstance(out, xr.Dataset):
        assert int(out.attrs["chains_used"]) >= 1
