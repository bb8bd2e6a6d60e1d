"""Flax NNX / Linen and Equinox models through slt_ppl.localize: the same network written as a
plain JAX loss gives the same posterior (loss and gradient to float32 rounding, the same LLC run),
and misuse gets clear errors."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_ppl
from slt_ppl.backends.flax_backend import module_sites
from slt_ppl.restrict import restrict

nnx = pytest.importorskip("flax.nnx")
linen = pytest.importorskip("flax.linen")
eqx = pytest.importorskip("equinox")

# the centers are not minima (untrained weights): these tests compare two writings of one posterior
pytestmark = pytest.mark.filterwarnings("ignore::slt_ppl.SuspiciousCenterWarning")

RUN = dict(kernel="sgld", step_size=2e-4, num_chains=2, num_draws=50, num_burnin=20, thin=1)


def data(n: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (np.tanh(x @ [[1.0], [-0.5]]) + 0.3 * rng.normal(size=(n, 1))).astype(np.float32)
    return {"x": x, "y": y}


def gaussian_nll(output: jax.Array, batch: dict) -> jax.Array:
    """Per-row ½‖f(x) − y‖² (unit noise, constant dropped)."""
    return 0.5 * jnp.sum((output - batch["y"]) ** 2, axis=-1)


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(2, 4, rngs=rngs)
        self.out = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(1, name="out")(jnp.tanh(linen.Dense(4, name="hidden")(x)))


def plain_loss(params: dict, batch: dict) -> jax.Array:
    """The same MLP by hand on the flat dict of kernel-layout weights."""
    h = jnp.tanh(batch["x"] @ params["hidden.kernel"] + params["hidden.bias"])
    return jnp.mean(gaussian_nll(h @ params["out.kernel"] + params["out.bias"], batch))


@pytest.fixture(scope="module")
def weights():
    model = NNXMLP(nnx.Rngs(0))
    return {
        "hidden.kernel": np.asarray(model.hidden.kernel[...]),
        "hidden.bias": np.asarray(model.hidden.bias[...]) + 0.1,
        "out.kernel": np.asarray(model.out.kernel[...]),
        "out.bias": np.asarray(model.out.bias[...]) - 0.2,
    }


def nnx_model(weights):
    model = NNXMLP(nnx.Rngs(1))
    for layer in ("hidden", "out"):
        getattr(model, layer).kernel[...] = weights[f"{layer}.kernel"]
        getattr(model, layer).bias[...] = weights[f"{layer}.bias"]
    return model


def linen_variables(weights):
    return {
        "params": {
            layer: {"kernel": weights[f"{layer}.kernel"], "bias": weights[f"{layer}.bias"]}
            for layer in ("hidden", "out")
        }
    }


class EqxMLP(eqx.Module):
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, weights):
        key = jax.random.PRNGKey(0)
        self.hidden = eqx.nn.Linear(2, 4, key=key)
        self.out = eqx.nn.Linear(4, 1, key=key)
        for layer in ("hidden", "out"):  # equinox stores weight = kernelᵀ (out, in)
            self.__dict__[layer] = eqx.tree_at(
                lambda m: (m.weight, m.bias),
                getattr(self, layer),
                (jnp.asarray(weights[f"{layer}.kernel"].T), jnp.asarray(weights[f"{layer}.bias"])),
            )

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def llc_of(posterior) -> tuple[float, float]:
    result = slt_ppl.sample(posterior, progress=False, **RUN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = slt_ppl.llc(result)
    return float(est["llc"]), float(est["llc_se"])


@pytest.fixture(scope="module")
def plain(weights):
    return slt_ppl.localize(plain_loss, data(), weights, gamma=10.0)


@pytest.fixture(scope="module")
def nnx_posterior(weights):
    return slt_ppl.localize(nnx_model(weights), data(), loss_fn=gaussian_nll, gamma=10.0)


@pytest.fixture(scope="module")
def plain_llc(plain):
    return llc_of(plain)


@pytest.mark.parametrize("framework", ["nnx", "linen", "equinox"])
def test_module_posterior_equals_the_plain_loss(
    framework, weights, plain, plain_llc, nnx_posterior
):
    if framework == "nnx":
        post = nnx_posterior
    elif framework == "linen":
        variables = linen_variables(weights)
        post = slt_ppl.localize(LinenMLP(), data(), variables, loss_fn=gaussian_nll, gamma=10.0)
    else:
        post = slt_ppl.localize(EqxMLP(weights), data(), loss_fn=gaussian_nll, gamma=10.0)
    kernel = "weight" if framework == "equinox" else "kernel"
    assert post.sites == {
        f"hidden.{kernel}": (4, 2) if framework == "equinox" else (2, 4),
        "hidden.bias": (4,),
        f"out.{kernel}": (1, 4) if framework == "equinox" else (4, 1),
        "out.bias": (1,),
    }
    assert post.backend == "jax" and post.dim == plain.dim == 17
    assert post.info["loss_center_full"] == pytest.approx(plain.info["loss_center_full"], 1e-6)
    if framework != "equinox":  # same flat layout: same function of w
        w = plain.center + 0.1 * jax.random.normal(jax.random.PRNGKey(2), plain.center.shape)
        np.testing.assert_allclose(post.full_loss(w), plain.full_loss(w), rtol=1e-5)
        g = jax.grad(post.full_loss)(w)
        np.testing.assert_allclose(g, jax.grad(plain.full_loss)(w), rtol=1e-4, atol=1e-6)
    llc, se = llc_of(post)
    reference, reference_se = plain_llc
    if framework == "equinox":  # transposed kernels: other noise per weight, agree within se
        assert abs(llc - reference) <= 3 * np.hypot(se, reference_se), (llc, reference)
    else:  # the same chain up to float32 rounding of differently fused programs
        assert llc == pytest.approx(reference, rel=1e-3), (llc, reference)


def test_restrict_a_flax_layer_by_name_and_mask(weights, nnx_posterior):
    post = slt_ppl.localize(
        nnx_model(weights), data(), loss_fn=gaussian_nll, gamma=10.0, restrict_to=r"out\..*"
    )
    assert post.dim == 5 and post.info["full_dim"] == 17
    sites = module_sites(nnx_model(weights))
    assert sites["hidden.kernel"] == (2, 4) and sites == nnx_posterior.sites
    assert restrict(nnx_posterior, {"hidden.kernel": np.eye(2, 4, dtype=bool)}).dim == 2


def test_module_errors_are_clear(weights):
    with pytest.raises(slt_ppl.SettingError, match="needs loss_fn="):
        slt_ppl.localize(nnx_model(weights), data())
    with pytest.raises(slt_ppl.SettingError, match="variables= is for Linen"):
        slt_ppl.localize(nnx_model(weights), data(), {"params": {}}, loss_fn=gaussian_nll)
    with pytest.raises(slt_ppl.CenterError, match="needs its variables"):
        slt_ppl.localize(LinenMLP(), data(), loss_fn=gaussian_nll)
    with pytest.raises(slt_ppl.SettingError, match=r"input_key \['inputs'\]"):
        slt_ppl.localize(nnx_model(weights), data(), loss_fn=gaussian_nll, input_key="inputs")
    with pytest.raises(slt_ppl.ModelError, match=r"shape \(2,\) or \(2, T\)"):
        slt_ppl.localize(
            nnx_model(weights), data(), loss_fn=lambda out, batch: jnp.sum(out), gamma=1.0
        )


@pytest.mark.skipif(
    "per_sample_loss" not in slt_ppl.LocalPosterior.__dataclass_fields__,
    reason="seam 1 (per_sample_loss) lands with the observables branch",
)
def test_per_sample_loss_is_set_and_follows_the_restriction(nnx_posterior):
    post = nnx_posterior
    part = restrict(post, ["out.kernel"])
    batch = {k: jnp.asarray(v[:7]) for k, v in data().items()}
    for p in (post, part):
        w = p.center + 0.1
        rows = p.per_sample_loss(w, batch)
        assert rows.shape == (7,)
        np.testing.assert_allclose(jnp.mean(rows), p.loss_fn(w, batch), rtol=1e-6)


def test_per_token_losses_count_rows_and_scale_nbeta(weights, nnx_posterior):
    """(b, T) losses: n = rows, L_n = mean over rows and tokens, default nβ = T·n/log n."""
    rng = np.random.default_rng(1)
    tokens = {"x": rng.normal(size=(50, 3, 2)).astype(np.float32)}
    tokens["y"] = rng.normal(size=(50, 3, 1)).astype(np.float32)
    post = slt_ppl.localize(nnx_model(weights), tokens, loss_fn=gaussian_nll, gamma=1.0)
    assert post.n == 50 and post.info["tokens_per_row"] == 3
    assert post.nbeta == pytest.approx(3 * 50 / np.log(50))
    h = np.tanh(tokens["x"] @ weights["hidden.kernel"] + weights["hidden.bias"])
    out = h @ weights["out.kernel"] + weights["out.bias"]
    expected = np.mean(0.5 * np.sum((out - tokens["y"]) ** 2, axis=-1))
    assert post.info["loss_center_full"] == pytest.approx(expected, rel=1e-5)
    rows = nnx_posterior
    assert rows.info["tokens_per_row"] == 0 and rows.nbeta == pytest.approx(200 / np.log(200))
