"""``slt-ppl``: the command-line face of slt_ppl.

slt-ppl                        estimate the LLC of a built-in deep linear network (known λ)
slt-ppl llc --model f.py:fn --data d.npz --center c.npz [options]
slt-ppl llc --config run.toml  (model, data, center, kernel and settings in one file)
slt-ppl spectral path/to/weights
slt-ppl validate [--quick | --full]
slt-ppl sweep sweep.toml [--address ADDRESS] [--out DIR]   (Ray; docs/sweeps.md)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from slt_ppl.errors import SettingError, SLTError

BUILTIN = {"model": "dln", "widths": [5, 5, 5], "n": 10000, "seed": 0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slt-ppl llc", description="Estimate a local learning coefficient."
    )
    p.add_argument("--model", help="path/to/file.py:function (a NumPyro model or a JAX loss)")
    p.add_argument("--data", help=".npz whose arrays are the model's keyword arguments")
    p.add_argument("--center", help=".npz of latent site values w*")
    p.add_argument("--config", help="TOML run file naming model, data, center, kernel and settings")
    p.add_argument(
        "--builtin", default=None, help="built-in zoo model (dln, rrr, linear_regression)"
    )
    p.add_argument("--kernel", default=None)
    p.add_argument("--step-size", default=None, help="number or 'auto' (default)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-chains", type=int, default=None)
    p.add_argument("--num-draws", type=int, default=None)
    p.add_argument("--num-burnin", type=int, default=None)
    p.add_argument("--gamma", default=None, help="localization strength or 'auto'")
    p.add_argument("--nbeta", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--temperatures",
        default="1,2",
        help="nβ factors run together for the two-temperature LLC (default 1,2; 'none': one)",
    )
    p.add_argument("--out", default="slt_ppl_out", help="output directory (NetCDF + PNG)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    return p


def _load_function(spec: str):
    if ":" not in spec:
        raise SettingError(f"--model must look like path/to/file.py:function, got {spec!r}")
    path, name = spec.rsplit(":", 1)
    file = Path(path)
    if not file.exists():
        raise SettingError(f"model file {file} does not exist")
    module_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[file.stem] = module
    module_spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise SettingError(f"{file} defines no function {name!r}")
    return getattr(module, name)


def _load_npz(path: str, what: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.exists():
        raise SettingError(f"{what} file {file} does not exist")
    with np.load(file) as npz:
        return {k: npz[k] for k in npz.files}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if args.config:
        cfg_path = Path(args.config)
        if not cfg_path.exists():
            raise SettingError(f"config file {cfg_path} does not exist")
        cfg = tomllib.loads(cfg_path.read_text())
        base = cfg_path.parent
        for section in ("model", "data", "center"):
            entry = cfg.get(section, {})
            if (
                isinstance(entry, dict)
                and "path" in entry
                and not Path(entry["path"]).is_absolute()
            ):
                file_part, _, fn = entry["path"].partition(":")
                entry["path"] = str(base / file_part) + (f":{fn}" if fn else "")
    flat = {
        "model": cfg.get("model", {}).get("path"),
        "builtin": cfg.get("model", {}).get("builtin"),
        "builtin_options": {
            k: v for k, v in cfg.get("model", {}).items() if k not in ("path", "builtin")
        },
        "data": cfg.get("data", {}).get("path"),
        "center": cfg.get("center", {}).get("path"),
        "localize": dict(cfg.get("localize", {})),
        "sampler": dict(cfg.get("sampler", {})),
    }
    for key in ("model", "data", "center", "builtin"):
        if getattr(args, key, None):
            flat[key] = getattr(args, key)
    for key in ("kernel", "batch_size", "num_chains", "num_draws", "num_burnin", "seed"):
        if getattr(args, key) is not None:
            flat["sampler"][key] = getattr(args, key)
    if args.step_size is not None:
        flat["sampler"]["step_size"] = (
            args.step_size if args.step_size == "auto" else float(args.step_size)
        )
    if args.gamma is not None:
        flat["localize"]["gamma"] = args.gamma if args.gamma == "auto" else float(args.gamma)
    if args.nbeta is not None:
        flat["localize"]["nbeta"] = args.nbeta
    return flat


def _problem(s: dict[str, Any]):
    """(model, data, center, theory λ or None, name)."""
    if s["model"]:
        if not (s["data"] and s["center"]):
            raise SettingError("a user model needs --data and --center (.npz files)")
        return (
            _load_function(s["model"]),
            _load_npz(s["data"], "data"),
            _load_npz(s["center"], "center"),
            None,
            s["model"],
        )
    from models import numpyro_zoo

    name = s["builtin"] or BUILTIN["model"]
    if name not in numpyro_zoo.PROBLEMS:
        raise SettingError(
            f"unknown built-in model {name!r}; choose one of {list(numpyro_zoo.PROBLEMS)}"
        )
    options = dict(s["builtin_options"])
    if not s["builtin"] and not options:
        options = {k: v for k, v in BUILTIN.items() if k != "model"}
    model, problem = numpyro_zoo.PROBLEMS[name](**options)
    return model, problem.data, problem.center, problem.theory_lambda, problem.name


def run_llc(argv: list[str]) -> int:
    import slt_ppl
    from slt_ppl.plots import plot_traces

    args = _parser().parse_args(argv)
    s = _settings(args)
    model, data, center, theory, name = _problem(s)
    print(f"slt-ppl: LLC of {name}")
    post = slt_ppl.localize(model, data, center, **s["localize"])
    sampler = {"progress": not args.no_progress, **s["sampler"]}
    sampler.setdefault("temperatures", _temperatures(args.temperatures, sampler.get("kernel")))
    result = slt_ppl.sample(post, **sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = slt_ppl.llc(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.to_netcdf(out / "result.nc")
    est.to_netcdf(out / "llc.nc")
    if not args.no_plots:
        plot_traces(result, out / "traces.png", title=f"{name}: LLC traces")
    rows = [
        ("model", name),
        ("n / d", f"{post.n} / {post.dim}"),
        ("nβ / γ", f"{post.nbeta:.4g} / {post.gamma:.4g}"),
        ("kernel / ε", f"{result.attrs['kernel']} / {result.attrs['step_size']:.3g}"),
        ("chains x draws", f"{result.attrs['num_chains']} x {result.attrs['num_draws']}"),
        ("LLC", f"{float(est['llc']):.4f} ± {float(est['llc_se']):.4f}"),
        *(
            [
                (
                    "LLC, two temp.",
                    f"{float(est['llc_two_temperature']):.4f} ± "
                    f"{float(est['llc_two_temperature_se']):.4f} (nβ×{_factors(result)})",
                )
            ]
            if "llc_two_temperature" in est
            else []
        ),
        ("theory λ", "unknown" if theory is None else f"{float(theory):.4f}"),
        ("R-hat", f"{float(est['rhat']):.3f}"),
        ("ESS", f"{float(est['ess']):.0f}"),
        ("acceptance", f"{float(est['acceptance']):.3f}"),
        ("time", f"{result.attrs['sampling_time_s']:.1f} s"),
        ("verdict", est.attrs["verdict"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    for w in caught:
        print(f"  warning: {w.message}")
    print(
        f"  wrote {out / 'result.nc'}, {out / 'llc.nc'}"
        + ("" if args.no_plots else f", {out / 'traces.png'}")
    )
    print(
        json.dumps(
            {
                "llc": float(est["llc"]),
                "llc_se": float(est["llc_se"]),
                **(
                    {
                        "llc_two_temperature": float(est["llc_two_temperature"]),
                        "llc_two_temperature_se": float(est["llc_two_temperature_se"]),
                    }
                    if "llc_two_temperature" in est
                    else {}
                ),
                "healthy": est.attrs["healthy"],
            }
        )
    )
    return 0


def _temperatures(text: str, kernel: Any) -> list[float] | None:
    """The --temperatures option: "1,2" → [1.0, 2.0]; "none" (or NumPyro's HMC/NUTS) → None."""
    if text.strip().lower() in ("none", "", "1") or kernel in ("hmc", "nuts"):
        return None
    try:
        return [float(t) for t in text.split(",")]
    except ValueError as err:
        raise SettingError(f"--temperatures must look like 1,2 or none, got {text!r}") from err


def _factors(result: Any) -> str:
    return ",".join(f"{f:g}" for f in json.loads(result.attrs["temperatures"]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else "llc"
    rest = argv[1:] if argv and argv[0] == command else argv
    try:
        if command == "llc":
            return run_llc(rest)
        if command == "spectral":
            from slt_ppl.estimators.spectral.cli import main_spectral

            return main_spectral(rest)
        if command == "validate":
            from validation.cli import main_validate

            return main_validate(rest)
        if command == "sweep":
            from slt_ppl.sweep.cli import main_sweep

            return main_sweep(rest)
        print(
            f"slt-ppl: unknown command {command!r} (llc, spectral, validate, sweep)",
            file=sys.stderr,
        )
        return 2
    except SLTError as err:
        print(f"slt-ppl: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
