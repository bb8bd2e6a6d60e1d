"""One sweep task as a plain function: build the model, read the checkpoint, ``localize``,
``sample`` and the estimators through the public API (seams.md 4), return a JSON-able record.

All state lives in the returned record, none in the scheduler. Errors of the input (a corrupt
checkpoint, a setting the library refuses: :class:`~slt_ppl.errors.SLTError`) give a record with
``status = "failed"`` at once, since retrying cannot help; any other exception propagates so Ray
retries the task (``max_retries``) before the driver records it as failed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import warnings
from typing import Any

from slt_ppl.errors import DataError, SettingError, SLTError
from slt_ppl.sweep import profile
from slt_ppl.sweep.checkpoints import read_checkpoint
from slt_ppl.sweep.spec import GRID_KEYS

# scalar variables of slt_ppl.llc / slt_ppl.wbic copied into the record when present
LLC_VARIABLES = (
    "llc", "llc_se", "llc_bias_estimate", "llc_bias_se", "llc_bias_corrected",
    "llc_bias_corrected_se", "llc_two_temperature", "llc_two_temperature_se", "rhat", "ess",
    "acceptance",
)  # fmt: skip
WBIC_VARIABLES = ("wbic", "wbic_se", "llc_from_wbic")


def run_task(payload: dict[str, Any], data: dict[str, Any] | None, content: bytes) -> dict:
    """Run one (checkpoint, grid point). ``payload``: key, checkpoint name and suffix, point,
    model (kind, target, options, source text of a model file), fixed localize/sample keywords,
    estimators, threads. ``data``: the model's keyword arrays (None: a built-in model's own).
    ``content``: the checkpoint file's bytes. The record's ``profile`` says where a cold
    worker's time went (``sweep.profile.task_profile``)."""
    started, t0 = time.time(), time.perf_counter()
    pin_threads(int(payload.get("threads", 1)))
    imports_s = profile.import_libraries(torch=payload["model"]["kind"] == "torch_module")
    base = {"key": payload["key"], "checkpoint": payload["checkpoint"], "pid": os.getpid()}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values, text = estimate(payload, data, content)
    except SLTError as err:
        return {**base, "status": "failed", "error": f"{type(err).__name__}: {err}",
                "values": {"wall_time_s": time.perf_counter() - t0}, "text": {},
                "profile": profile.task_profile(started, imports_s)}  # fmt: skip
    values["wall_time_s"] = time.perf_counter() - t0
    text["warnings"] = " | ".join(sorted({str(w.message) for w in caught}))
    return {**base, "status": "ok", "error": "", "values": values, "text": text,
            "profile": profile.task_profile(started, imports_s)}  # fmt: skip


def warm_worker(threads: int, torch: bool) -> dict[str, Any]:
    """Import what a task needs in this worker process, so that its first task starts with the
    imports done (``runner.run_on_ray`` submits one per idle worker while the first task of a
    program group compiles); returns the pid and seconds."""
    pin_threads(threads)
    return {"pid": os.getpid(), "imports_s": profile.import_libraries(torch=torch)}


def pin_threads(threads: int) -> None:
    """torch's intra-op threads = the task's CPUs, when torch is loaded (it also reads
    OMP_NUM_THREADS, which the runner sets, as do XLA's flags, before the worker starts)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, threads))


def estimate(payload: dict[str, Any], data: dict | None, content: bytes) -> tuple[dict, dict]:
    """(numeric values, text values) of one task."""
    import slt_ppl

    point = payload["point"]
    loc = {**payload["localize"], **{k: v for k, v in point.items() if GRID_KEYS[k] == "localize"}}
    smp = {**payload["sampler"], **{k: v for k, v in point.items() if GRID_KEYS[k] == "sample"}}
    t0 = time.perf_counter()
    posterior = build_posterior(payload, data, content, loc)
    t1 = time.perf_counter()
    result = slt_ppl.sample(posterior, **smp, progress=False, devices=False)
    t2 = time.perf_counter()
    est = slt_ppl.llc(result, warn=False)
    values = {k: float(est[k]) for k in LLC_VARIABLES if k in est}
    values["healthy"] = int(est.attrs["healthy"])
    for check, passed in zip(est["check"].values, est["check_passed"].values, strict=True):
        values[f"check_{check}"] = int(bool(passed))
    if "wbic" in payload["estimators"]:
        w = slt_ppl.wbic(result, warn=False)
        values.update({k: float(w[k]) for k in WBIC_VARIABLES if k in w})
    attrs = result.attrs
    # where a task's time goes (benchmarks/sweep_overhead.py): reading and localizing, the
    # sample() call (compile_time_s and sampling_time_s are parts of it), the estimators
    values.update({
        "step_size_used": float(attrs["step_size"]), "gamma_used": float(posterior.gamma),
        "nbeta_used": float(posterior.nbeta), "sampling_time_s": float(attrs["sampling_time_s"]),
        "compile_time_s": float(attrs.get("compile_time_s", 0.0)),
        "localize_time_s": t1 - t0, "sample_call_time_s": t2 - t1,
        "estimate_time_s": time.perf_counter() - t2,
    })  # fmt: skip
    return values, {"verdict": str(est.attrs["verdict"]), "kernel_used": str(attrs["kernel"])}


def build_posterior(payload: dict, data: dict | None, content: bytes, loc: dict) -> Any:
    """The localized posterior of the payload's model at the checkpoint's weights."""
    import slt_ppl

    model = payload["model"]
    kind, name, suffix = model["kind"], payload["checkpoint"], payload["suffix"]
    if kind == "torch_module":
        import torch

        pin_threads(int(payload.get("threads", 1)))
        module = load_function(model["target"], model["source"])()
        state = read_checkpoint(name, suffix, content, as_torch=True)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise DataError(f"checkpoint {name}{suffix} does not fit the module: {err}") from err
        if payload.get("gpus", 0) > 0 and torch.cuda.is_available():  # the one GPU Ray gave us
            module = module.to("cuda")
        return slt_ppl.localize(module.eval(), data, **model["options"], **loc)
    center = read_checkpoint(name, suffix, content)
    if kind == "builtin":
        from models import numpyro_zoo

        fn, problem = numpyro_zoo.PROBLEMS[model["target"]](**model["options"])
        data = problem.data if data is None else data
    else:
        fn = load_function(model["target"], model["source"])
    return slt_ppl.localize(fn, data, center, **loc)


def load_function(target: str, source: str) -> Any:
    """``name`` from ``file.py:name``, executed from the file's text as shipped by the driver
    (a worker on another machine need not see the file)."""
    path, _, name = target.rpartition(":")
    module_name = f"slt_ppl_sweep_user_{abs(hash(path))}"
    module_spec = importlib.util.spec_from_loader(module_name, loader=None, origin=path)
    module = importlib.util.module_from_spec(module_spec)
    module.__file__ = path
    sys.modules[module_name] = module
    exec(compile(source, path, "exec"), module.__dict__)
    if not hasattr(module, name):
        raise SettingError(f"{path} defines no function {name!r}")
    return getattr(module, name)
