"""The spectral CLI body: reads weights, prints a table, writes NetCDF and PNG figures."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import xarray as xr

from slt_ppl.estimators.spectral.cli import main_spectral


def test_cli_npz_table_netcdf_and_plots(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "model.npz"
    np.savez(path, fc=rng.standard_normal((80, 40)), bias=np.zeros(40))
    out = tmp_path / "out"
    assert main_spectral([str(path), "--out", str(out), "--convention", "weightwatcher"]) == 0
    text = capsys.readouterr().out
    assert "fc" in text and "skipped: bias" in text
    ds = xr.open_dataset(out / "spectral.nc", engine="h5netcdf")
    assert ds.attrs["convention"] == "weightwatcher"
    ds.close()
    assert {p.name for p in out.glob("*.png")} == {"alpha.png", "esd_fc.png", "ks_fc.png"}


def test_cli_state_dict_no_plots(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.pt"
    torch.save(torch.nn.Linear(30, 20).state_dict(), path)
    assert main_spectral([str(path), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    assert not list((tmp_path / "o").glob("*.png"))


def test_cli_errors(tmp_path, capsys, monkeypatch) -> None:
    assert main_spectral([str(tmp_path / "missing.npz")]) == 1
    assert "no such file" in capsys.readouterr().err
    st = tmp_path / "m.safetensors"
    st.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    assert main_spectral([str(st)]) == 1
    assert "safetensors" in capsys.readouterr().err
    np.savez(tmp_path / "b.npz", b=np.zeros(3))
    assert main_spectral([str(tmp_path / "b.npz"), "--out", str(tmp_path / "x")]) == 1
