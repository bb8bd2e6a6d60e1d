"""spectral(): layer extraction, ESD conventions, MP spikes, posterior draws and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import slt_ppl
from slt_ppl.errors import DataError, ResultError, SettingError, SLTWarning
from slt_ppl.estimators.spectral import spectral


def _pooled_slices(w: np.ndarray) -> np.ndarray:
    """Reference ESD of an (out, in, kh, kw) kernel: eigenvalues of every W[:, :, i, j] slice."""
    evs = []
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            s = np.linalg.svd(w[:, :, i, j], compute_uv=False)
            evs.append(s**2 / max(w.shape[:2]))
    return np.sort(np.concatenate(evs))


def test_torch_module_layers_and_skips() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(40, 24),
        torch.nn.Conv2d(6, 10, 3),
        torch.nn.Embedding(50, 16),
        torch.nn.LayerNorm(16),
    )
    ds = slt_ppl.spectral(model)
    assert list(ds["layer"].values) == ["0.weight", "1.weight", "2.weight"]
    assert list(ds["layer_type"].values) == ["Linear", "Conv2d", "Embedding"]
    assert list(ds["layer_shape"].values) == ["24x40", "10x6x3x3", "50x16"]
    assert list(ds["num_matrices"].values) == [1, 9, 1]
    skipped = dict(zip(ds["skipped_layer"].values, ds["skipped_reason"].values, strict=True))
    assert set(skipped) == {"0.bias", "1.bias", "3.weight", "3.bias"}
    assert all("1-D" in r for r in skipped.values())
    assert "3.weight [LayerNorm 16]" in ds.attrs["skipped"]
    conv = model[1].weight.detach().numpy().astype(np.float64)
    got = ds["evals"].sel(layer="1.weight").values
    np.testing.assert_allclose(got[np.isfinite(got)], _pooled_slices(conv), rtol=1e-6, atol=1e-12)
    # a state dict gives the same numbers
    ds2 = spectral(model.state_dict())
    np.testing.assert_allclose(ds2["alpha"].values, ds["alpha"].values)


def test_flax_style_nested_dict_channels_last() -> None:
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    conv_hwio = rng.standard_normal((3, 3, 8, 16))
    params = {
        "params": {
            "Dense_0": {
                "kernel": jnp.asarray(rng.standard_normal((32, 64))),
                "bias": jnp.zeros(64),
            },
            "Conv_0": {"kernel": jnp.asarray(conv_hwio), "bias": jnp.zeros(16)},
        }
    }
    ds = spectral(params)
    assert list(ds["layer"].values) == ["params.Dense_0.kernel", "params.Conv_0.kernel"]
    conv = ds.sel(layer="params.Conv_0.kernel")
    assert (int(conv["num_matrices"]), int(conv["N"]), int(conv["M"])) == (9, 16, 8)
    oihw = np.transpose(conv_hwio, (3, 2, 0, 1))
    got = conv["evals"].values
    np.testing.assert_allclose(got[np.isfinite(got)], _pooled_slices(oihw), rtol=2e-4)
    assert "params.Dense_0.bias" in ds["skipped_layer"].values


def test_backends_agree() -> None:
    torch = pytest.importorskip("torch")
    w = np.random.default_rng(1).standard_normal((120, 60))
    ref = spectral({"w": w}, backend="numpy")
    for weights, backend in [({"w": torch.as_tensor(w)}, None), ({"w": w}, "jax")]:
        ds = spectral(weights, backend=backend)
        np.testing.assert_allclose(ds["evals"].values, ref["evals"].values, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(ds["alpha"].values, ref["alpha"].values, rtol=1e-3)
    svd = spectral({"w": w}, method="svd")
    np.testing.assert_allclose(svd["evals"].values, ref["evals"].values, rtol=1e-9)


def test_weightwatcher_convention_scales() -> None:
    rng = np.random.default_rng(2)
    weights = {"dense": rng.standard_normal((90, 30)), "conv": rng.standard_normal((12, 20, 2, 2))}
    ours = spectral(weights)
    ww = spectral(weights, convention="weightwatcher")
    n = ours["N"].values[:, None]
    factor = np.where(ours["layer_type"].values == "conv2d", 0.5, 1.0)[:, None]
    np.testing.assert_allclose(ww["evals"].values, ours["evals"].values * n * factor, rtol=1e-10)
    np.testing.assert_allclose(ww["stable_rank"].values, ours["stable_rank"].values, rtol=1e-10)
    assert ww.attrs["convention"] == "weightwatcher"


def test_gaussian_is_random_like_and_spike_is_found() -> None:
    rng = np.random.default_rng(3)
    n, m = 600, 300
    noise = rng.standard_normal((n, m))
    u = rng.standard_normal(n)
    v = rng.standard_normal(m)
    spike = 3.0 * np.sqrt(n) * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    ds = spectral({"gauss": noise, "spiked": noise + spike})
    gauss, spiked = ds.sel(layer="gauss"), ds.sel(layer="spiked")
    assert int(gauss["num_spikes"]) == 0
    assert "random-like" in str(gauss["warning"].values)
    assert float(gauss["mp_sigma2"]) == pytest.approx(1.0, rel=0.05)
    assert int(spiked["num_spikes"]) == 1
    assert "random-like" not in str(spiked["warning"].values)


def test_model_average_excludes_large_alpha() -> None:
    rng = np.random.default_rng(4)
    ds = spectral({f"w{i}": rng.standard_normal((300, 150)) for i in range(3)})
    alpha = ds["alpha"].values
    keep = alpha < 8
    assert float(ds["model_alpha"]) == pytest.approx(
        alpha[keep].mean() if keep.any() else np.nan, nan_ok=True
    )
    assert set(ds.attrs["alpha_excluded_layers"].split(", ")) - {""} == set(
        ds["layer"].values[~keep]
    )
    all_in = spectral(
        {f"w{i}": rng.standard_normal((300, 150)) for i in range(3)}, exclude_alpha_ge=None
    )
    assert not all_in["alpha_excluded"].values.any()


def test_posterior_draws_give_chain_draw_layer() -> None:
    rng = np.random.default_rng(5)
    post = xr.Dataset(
        {
            "w1": (("chain", "draw", "a", "b"), rng.standard_normal((2, 4, 40, 20))),
            "w2": (("chain", "draw", "c", "d"), rng.standard_normal((2, 4, 30, 30))),
            "bias": (("chain", "draw", "b"), rng.standard_normal((2, 4, 20))),
        },
        coords={"chain": [0, 1], "draw": np.arange(4)},
    )
    tree = xr.DataTree.from_dict({"posterior": post})
    ds = spectral(tree)
    assert ds["alpha"].dims == ("chain", "draw", "layer")
    assert ds["model_alpha"].dims == ("chain", "draw")
    assert "alpha_summary" in ds and "layer" in ds["alpha_summary"].dims
    summary = ds["alpha_summary"]
    np.testing.assert_allclose(
        summary.sel(summary="mean").values, ds["alpha"].mean(("chain", "draw")).values
    )
    # each draw is the same analysis as its single matrix
    one = spectral({"w1": post["w1"].values[1, 2]})
    assert float(ds["alpha"].sel(chain=1, draw=2, layer="w1")) == pytest.approx(
        float(one["alpha"][0])
    )
    assert "bias" in ds["skipped_layer"].values
    with pytest.raises(ResultError, match="posterior"):
        spectral(xr.DataTree.from_dict({"sample_stats": post[["bias"]]}))


def test_netcdf_roundtrip(tmp_path) -> None:
    rng = np.random.default_rng(6)
    ds = spectral({"w": rng.standard_normal((50, 20)), "b": np.zeros(20)})
    path = tmp_path / "s.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    back = xr.open_dataset(path, engine="h5netcdf")
    np.testing.assert_allclose(back["alpha"].values, ds["alpha"].values)
    assert back.attrs["skipped"] == ds.attrs["skipped"]
    back.close()


def test_clear_errors() -> None:
    with pytest.raises(SettingError, match="convention"):
        spectral({"w": np.eye(10)}, convention="ww")
    with pytest.raises(DataError, match="1-D tensor"):
        spectral({"b": np.ones(30), "s": np.float64(2.0)})
    with pytest.raises(DataError, match="too few eigenvalues"):
        spectral({"w": np.ones((5, 4))})
    bad = np.ones((20, 10))
    bad[3, 4] = np.nan
    with pytest.warns(SLTWarning, match="non-finite"), pytest.raises(DataError, match="non-finite"):
        spectral({"w": bad})
    with pytest.raises(DataError, match="no tensors"):
        spectral({})
    with pytest.raises(SettingError, match="min_evals"):
        spectral({"w": np.eye(10)}, min_evals=1)
    with pytest.raises(SettingError, match="backend"):
        spectral({"w": np.eye(10)}, backend="cupy")


def test_nonfinite_layer_skipped_others_kept() -> None:
    rng = np.random.default_rng(7)
    bad = rng.standard_normal((30, 20))
    bad[0, 0] = np.inf
    with pytest.warns(SLTWarning):
        ds = spectral({"good": rng.standard_normal((30, 20)), "bad": bad})
    assert list(ds["layer"].values) == ["good"]
    assert "non-finite" in str(ds["skipped_reason"].sel(skipped_layer="bad").values)


def test_registered_pytree_module_equinox_style() -> None:
    """Objects that are JAX pytrees (equinox modules, registered dataclasses) use key paths."""
    jax = pytest.importorskip("jax")
    from dataclasses import dataclass

    @jax.tree_util.register_dataclass
    @dataclass
    class Linear:
        weight: jax.Array
        bias: jax.Array

    @jax.tree_util.register_dataclass
    @dataclass
    class MLP:
        layers: list

    key1, key2 = jax.random.split(jax.random.key(0))
    model = MLP(
        [
            Linear(jax.random.normal(key1, (30, 20)), jax.numpy.zeros(30)),
            Linear(jax.random.normal(key2, (10, 30)), jax.numpy.zeros(10)),
        ]
    )
    ds = spectral(model)
    assert list(ds["layer"].values) == ["layers.0.weight", "layers.1.weight"]
    assert list(ds["skipped_layer"].values) == ["layers.0.bias", "layers.1.bias"]
    assert list(ds["M"].values) == [20, 10]


def test_batches_split_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from slt_ppl.estimators.spectral import esd

    rng = np.random.default_rng(8)
    weights = {f"w{i}": rng.standard_normal((40, 30)) for i in range(5)}
    whole = spectral(weights)
    calls = []
    real = esd._eigs_numpy
    monkeypatch.setattr(esd, "_eigs_numpy", lambda w, m: calls.append(w.shape[0]) or real(w, m))
    monkeypatch.setattr(esd, "MAX_BATCH_ENTRIES", 2 * 40 * 30)  # two layers per call
    split = spectral(weights)
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(split["evals"].values, whole["evals"].values, rtol=1e-12)


def test_conv1d_slices_and_layout_setting() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    conv = torch.nn.Conv1d(12, 20, 5)
    ds = spectral(conv)
    row = ds.sel(layer="weight")
    assert (str(row["layer_type"].values), int(row["num_matrices"])) == ("Conv1d", 5)
    w = conv.weight.detach().numpy().astype(np.float64)
    ref = np.sort(
        np.concatenate([np.linalg.svd(w[:, :, i], compute_uv=False) ** 2 / 20 for i in range(5)])
    )
    np.testing.assert_allclose(row["evals"].values, ref, rtol=1e-6)
    # the same kernel stored channels-last, (k, in, out), read with conv_layout="channels_last"
    last = spectral({"k": np.transpose(w, (2, 1, 0))}, conv_layout="channels_last")
    np.testing.assert_allclose(last["evals"].values[0], ref, rtol=1e-6)
    with pytest.raises(SettingError, match="conv_layout"):
        spectral({"k": w}, conv_layout="nhwc")


@pytest.mark.parametrize(("n", "m"), [(100, 20), (128, 64)])
def test_small_gaussian_layers_are_random_like(n: int, m: int) -> None:
    rng = np.random.default_rng(10)
    ds = spectral({f"g{i}": rng.standard_normal((n, m)) for i in range(8)})
    flagged = ["random-like" in w for w in ds["warning"].values]
    assert sum(flagged) >= 7
    heavy = spectral({"t": rng.standard_t(1.5, (n, m))})
    assert "random-like" not in str(heavy["warning"].values[0])
