"""Small NumPyro MLP classifiers on scikit-learn's bundled digits data (no download)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax


def load_digits_data(num: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Digits (1797 × 64, 10 classes) scaled to [0, 1]; the first ``num`` rows if given."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    return (x, y) if num is None else (x[:num], y[:num])


def layer_sizes(widths: Sequence[int], d_in: int = 64, d_out: int = 10) -> list[tuple[int, int]]:
    dims = [d_in, *widths, d_out]
    return list(itertools.pairwise(dims))


def forward(params: dict, x: jax.Array, num_layers: int) -> jax.Array:
    h = x
    for i in range(num_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < num_layers - 1:
            h = jnp.tanh(h)
    return h


def make_mlp(widths: Sequence[int], d_in: int = 64, d_out: int = 10) -> Callable:
    """NumPyro model: Gaussian priors (std 1/√fan_in on weights), categorical likelihood."""
    sizes = layer_sizes(widths, d_in, d_out)

    def model(x, y=None):
        params = {}
        for i, (fan_in, fan_out) in enumerate(sizes):
            scale = 1.0 / np.sqrt(fan_in)
            params[f"w{i}"] = numpyro.sample(
                f"w{i}", dist.Normal(0.0, scale).expand([fan_in, fan_out]).to_event(2)
            )
            params[f"b{i}"] = numpyro.sample(
                f"b{i}", dist.Normal(0.0, 1.0).expand([fan_out]).to_event(1)
            )
        logits = forward(params, x, len(sizes))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


def mlp_layers(widths: Sequence[int]) -> dict[str, list[str]]:
    """Layer name -> latent sites (weights and bias of each dense layer)."""
    return {f"layer{i}": [f"w{i}", f"b{i}"] for i in range(len(widths) + 1)}


def train(
    widths: Sequence[int], x: np.ndarray, y: np.ndarray, steps: int, seed: int = 0
) -> tuple[dict, float]:
    """Brief full-batch Adam on the mean negative log-likelihood; returns (params, train error)."""
    sizes = layer_sizes(widths, x.shape[1])
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes))
    params = {}
    for i, ((fan_in, fan_out), key) in enumerate(zip(sizes, keys, strict=True)):
        params[f"w{i}"] = jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in)
        params[f"b{i}"] = jnp.zeros(fan_out)
    xs, ys = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        logits = forward(p, xs, len(sizes))
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(ys)), ys])

    opt = optax.adam(1e-2)

    @jax.jit
    def run(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
        return p

    params = run(params)
    pred = jnp.argmax(forward(params, xs, len(sizes)), axis=-1)
    return params, float(jnp.mean(pred != ys))
