"""SGLD-LLC speed: chain-steps per second and peak memory on deep linear networks (issue 8).

One command::

    python benchmarks/llc_speed.py            # 10k, 100k, 1M parameters x 1, 8, 32 chains
    python benchmarks/llc_speed.py --quick    # 10k parameters only
    python benchmarks/llc_speed.py --sizes 10k,100k --chains 8 --sides ours,minimal

Sides (same model, data, w*, ε, nβ = n/log n, γ, batch 500, shared minibatches per step):

- ``ours``      slt_ppl.sample(kernel="sgld") on the NumPyro DLN, every diagnostic recorded;
- ``ours_torch`` slt_ppl on the Pyro model, if this slt_ppl has a torch backend (skipped if not);
- ``minimal``   a hand-written jitted JAX SGLD loop (lax.scan over steps, vmap over chains, loss
  recorded each step, nothing else): the ceiling;
- ``devinterp`` devinterp 1.3.2's ``estimate_learning_coeff_with_summary`` (PyTorch), run with the
  Python of its own venv (``--devinterp-python``, default $DEVINTERP_PYTHON or
  /tmp/perf_helper/devinterp-venv/bin/python); never a dependency of slt_ppl.

Conventions: devinterp's SGLD is w ← w − (lr/2)(nβ·∇L_B + γ(w − w*)) + √lr·ξ, i.e. our ε = lr, and
its ``nbeta`` is our nβ when passed explicitly (its default would be B/log B); its λ̂ is
nβ·(mean L_B(w_t) − L(w*)) with L(w*) from ``num_chains`` batches. Ours is the paired estimator.
Minimal's λ̂ is nβ·(mean L_B(w_t) − L_n(w*)).

Each measurement runs in its own subprocess (peak RSS = ``ru_maxrss`` of that process, which
includes the interpreter, the framework and the data; ``--baseline`` subtracts nothing). Steps/s
exclude compilation: ours reports compile time separately (``compile_time_s``), minimal is
compiled ahead of time, devinterp gets a short warm-up run first. λ̂ is printed next to each
speed so nobody compares a wrong answer; with the short runs used here it is not equilibrated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# JAX would otherwise take 75 % of a GPU's memory in every process (this driver's too, through
# ``_gamma_for``), leaving the worker processes none, and report it all as in use.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's slt_ppl and models, not an installed copy
    sys.path.insert(0, str(ROOT))
# width of a 5-layer DLN (4 square weight matrices): parameters = 4·width²
SIZES = {"10k": 50, "100k": 158, "1M": 500, "10M": 1581, "100M": 5000}
# The top curvature of L_n at the center is set by E[x xᵀ] and the operator norms of the other
# layers (entries N(0, 1/H): norm ≈ 2 at any width), so a stable ε does not shrink with the width.
STEP_SIZE = {"10k": 1e-6, "100k": 3e-7, "1M": 1e-7, "10M": 1e-7, "100M": 1e-7}
N, BATCH, LAYERS = 10_000, 500, 4
DEFAULT_STEPS = {"10k": 1000, "100k": 200, "1M": 40, "10M": 10, "100M": 4}
# Model FLOPs of one chain-step: forward 2·B·P, backward 4·B·P (gradients with respect to the
# weights and to the activations), P = parameters; the center's minibatch loss of the paired
# estimator (once per step, shared by the chains) and the noise draws are not counted.
FLOPS_PER_PARAM_ROW = 6


def _problem(size: str):
    """The DLN problem of ``size``, cached as a pickle under the temp dir (at 100M parameters
    building it is ≈ 2·10¹² FLOPs of NumPy, and every worker needs it)."""
    import pickle
    import tempfile

    sys.path.insert(0, str(ROOT))
    from models.data import make_dln

    cache = Path(tempfile.gettempdir()) / f"slt_ppl_llc_speed_{size}_{N}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    problem = make_dln([SIZES[size]] * (LAYERS + 1), n=N, seed=0)
    cache.write_bytes(pickle.dumps(problem, protocol=pickle.HIGHEST_PROTOCOL))
    return problem


def _model(size: str, backend: str):
    """(model, problem): the DLN of ``models.numpyro_zoo`` or ``models.pyro_zoo`` on the cached data."""
    from functools import partial

    if backend == "numpyro":
        from models.numpyro_zoo import dln_model
    else:
        from models.pyro_zoo import dln_model
    problem = _problem(size)
    s = problem.settings
    return partial(dln_model, widths=tuple(s["widths"]), noise=s["noise"]), problem


def _device_memory_mb(framework: str) -> float:
    """Peak accelerator memory of this process in MB (nan on CPU): JAX's ``peak_bytes_in_use``
    (never reset, so measure chain counts in increasing order), torch's ``max_memory_allocated``
    (reset by the caller before each measurement)."""
    if framework == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform == "cpu":
            return float("nan")
        return dev.memory_stats().get("peak_bytes_in_use", float("nan")) / 2**20
    import torch

    if not torch.cuda.is_available():
        return float("nan")
    return torch.cuda.max_memory_allocated() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------------- ours


def worker_ours(size: str, chains: list[int], steps: int, gamma: float, repeats: int) -> list[dict]:
    """slt_ppl.sample on the NumPyro DLN; steps are burn-in + draws (thin 1)."""
    import jax

    import slt_ppl

    model, problem = _model(size, "numpyro")
    post = slt_ppl.localize(model, problem.data, problem.center, gamma=gamma)
    out = []
    for c in chains:
        times, compiles, llcs = [], [], []
        for _ in range(repeats):
            res = slt_ppl.sample(
                post, kernel="sgld", step_size=STEP_SIZE[size], batch_size=BATCH, num_chains=c,
                num_draws=steps // 2, num_burnin=steps // 2, thin=1, progress=False, num_segments=4,
            )  # fmt: skip
            times.append(res.attrs["sampling_time_s"])
            compiles.append(res.attrs["compile_time_s"])
            llcs.append(float(slt_ppl.llc(res, warn=False)["llc"]))
        out.append({
            "chains": c, "time_s": times, "compile_s": statistics.median(compiles),
            "llc": llcs[-1], "gamma": post.gamma, "nbeta": post.nbeta,
            "device": str(jax.devices()[0]), "device_peak_mb": _device_memory_mb("jax"),
        })  # fmt: skip
    return out


def worker_ours_torch(
    size: str, chains: list[int], steps: int, gamma: float, repeats: int
) -> list[dict]:
    """slt_ppl on the Pyro model (its device: cuda when torch sees one, else cpu)."""
    import torch

    import slt_ppl

    model, problem = _model(size, "pyro")
    post = slt_ppl.localize(model, problem.data, problem.center, gamma=gamma)
    out = []
    for c in chains:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        times, compiles, llcs = [], [], []
        for _ in range(repeats):
            res = slt_ppl.sample(
                post, kernel="sgld", step_size=STEP_SIZE[size], batch_size=BATCH, num_chains=c,
                num_draws=steps // 2, num_burnin=steps // 2, thin=1, progress=False,
            )  # fmt: skip
            times.append(res.attrs["sampling_time_s"])
            compiles.append(res.attrs.get("compile_time_s", float("nan")))
            llcs.append(float(slt_ppl.llc(res, warn=False)["llc"]))
        out.append({
            "chains": c, "time_s": times, "compile_s": statistics.median(compiles),
            "llc": llcs[-1], "device": str(post.device),
            "device_peak_mb": _device_memory_mb("torch"),
        })  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------ minimal


def minimal_program(size: str, chains: int, steps: int, gamma: float):
    """The hand-written SGLD loop, compiled: returns (run() -> per-step losses (steps, chains),
    compile seconds, L_n(w*), nβ). Also used by ``llc_profile.py``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    problem = _problem(size)
    nbeta = N / np.log(N)
    eps = STEP_SIZE[size]
    x, y = jnp.asarray(problem.data["x"]), jnp.asarray(problem.data["y"])
    center = [jnp.asarray(problem.center[f"w{i}"]) for i in range(LAYERS)]

    def loss(ws, xb, yb):
        f = xb
        for w in ws:
            f = f @ w.T
        nll = 0.5 * jnp.sum((yb - f) ** 2, axis=-1) + 0.5 * yb.shape[-1] * jnp.log(2 * jnp.pi)
        return jnp.mean(nll)

    def run(ws, keys, x, y, center):
        def step(ws, t):
            idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(1), t), (BATCH,), 0, N)
            xb, yb = x[idx], y[idx]

            def one(ws, key):
                def potential(ws):
                    l_b = loss(ws, xb, yb)
                    loc = sum(jnp.sum((a - b) ** 2) for a, b in zip(ws, center, strict=True))
                    return nbeta * l_b + 0.5 * gamma * loc, l_b

                (_, l_b), grads = jax.value_and_grad(potential, has_aux=True)(ws)
                ks = jax.random.split(jax.random.fold_in(key, t), len(ws))
                new = [
                    w - 0.5 * eps * g + jnp.sqrt(eps) * jax.random.normal(k, w.shape, w.dtype)
                    for w, g, k in zip(ws, grads, ks, strict=True)
                ]
                return new, l_b

            return jax.vmap(one)(ws, keys)

        return jax.lax.scan(step, ws, jnp.arange(steps))

    keys = jax.random.split(jax.random.PRNGKey(0), chains)
    ws = [jnp.broadcast_to(w, (chains, *w.shape)) for w in center]
    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(ws, keys, x, y, center).compile()
    compile_s = time.perf_counter() - t0

    def go():
        return np.asarray(jax.block_until_ready(compiled(ws, keys, x, y, center)[1]))

    return go, compile_s, float(jax.jit(loss)(center, x, y)), nbeta


def worker_minimal(
    size: str, chains: list[int], steps: int, gamma: float, repeats: int
) -> list[dict]:
    """Hand-written SGLD: lax.scan over steps, vmap over chains, the loss recorded each step."""
    import jax

    out = []
    for c in chains:
        go, compile_s, full, nbeta = minimal_program(size, c, steps, gamma)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            losses = go()
            times.append(time.perf_counter() - t0)
        llc = float(nbeta * (losses[steps // 2 :].mean() - full))
        out.append({
            "chains": c, "time_s": times, "compile_s": compile_s, "llc": llc,
            "device": str(jax.devices()[0]), "device_peak_mb": _device_memory_mb("jax"),
        })  # fmt: skip
    out[0]["precision"] = precision_check(size)
    return out


def precision_check(size: str) -> dict:
    """How much JAX's default matmul precision moves one draw's contribution to λ̂.

    At w = w* + δ (δ ~ N(0, 10⁻⁶) per entry) returns nβ·(L_n(w) − L_n(w*)) in the default and in
    "highest" precision (on a GPU the default may use TF32 tensor cores for float32 products, whose
    10-bit mantissa rounds each product), and their difference: the error a default-precision
    draw adds to λ̂ before averaging.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    problem = _problem(size)
    nbeta = N / np.log(N)
    x, y = jnp.asarray(problem.data["x"]), jnp.asarray(problem.data["y"])
    center = [jnp.asarray(problem.center[f"w{i}"]) for i in range(LAYERS)]
    keys = jax.random.split(jax.random.PRNGKey(3), LAYERS)
    moved = [
        w + 1e-3 * jax.random.normal(k, w.shape, w.dtype) for w, k in zip(center, keys, strict=True)
    ]

    def loss(ws):
        f = x
        for w in ws:
            f = f @ w.T
        return jnp.mean(0.5 * jnp.sum((y - f) ** 2, axis=-1))

    out = {}
    for name in ("default", "highest"):
        with jax.default_matmul_precision(name if name != "default" else None):
            fn = jax.jit(loss)
            out[name] = float(nbeta * (fn(moved) - fn(center)))
    out["difference"] = out["default"] - out["highest"]
    return out


def worker_peak(size: str, chains: list[int], steps: int, gamma: float, repeats: int) -> list[dict]:
    """Matrix-product throughput of both frameworks on this device, float32 at their default
    settings (JAX: its default precision; torch: ``allow_tf32`` as shipped) and at TF32 / highest:
    the ceilings that the model FLOP rates are compared with. ``size`` is the square matrix size."""
    import jax
    import jax.numpy as jnp
    import torch

    m = int(size)
    rows = []

    def timed(fn, reps=10):
        fn()
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return 2 * m**3 * reps / (time.perf_counter() - t0) / 1e12

    a = jax.random.normal(jax.random.PRNGKey(0), (m, m), jnp.float32)
    for prec in (None, "highest"):
        f = jax.jit(lambda u, p=prec: jnp.matmul(u, u, precision=p))
        rows.append({"framework": "jax", "setting": prec or "default",
                     "tflops": timed(lambda f=f: f(a).block_until_ready()),
                     "device": str(jax.devices()[0])})  # fmt: skip
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t = torch.randn(m, m, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    default_tf32 = torch.backends.cuda.matmul.allow_tf32
    for tf32 in (default_tf32, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        rows.append({"framework": "torch", "setting": "tf32" if tf32 else "default (no tf32)",
                     "tflops": timed(lambda: (t @ t, sync())), "device": dev})  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = default_tf32
    return rows


# ---------------------------------------------------------------------------------------- devinterp


def worker_devinterp(size: str, chains: int, steps: int, gamma: float, repeats: int) -> dict:
    """devinterp 1.3.2 ``estimate_learning_coeff_with_summary`` with the same hyperparameters."""
    import numpy as np
    import torch
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(os.cpu_count() or 1)
    problem = _problem(size)
    nbeta = float(N / np.log(N))
    width = SIZES[size]
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(LAYERS)])
    with torch.no_grad():
        for i, layer in enumerate(model):
            layer.weight.copy_(torch.from_numpy(problem.center[f"w{i}"]))
    x = torch.from_numpy(problem.data["x"])
    y = torch.from_numpy(problem.data["y"])
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    log2pi = float(np.log(2 * np.pi))

    def evaluate(model, batch):
        xb, yb = batch
        out = model(xb)
        nll = 0.5 * ((yb - out) ** 2).sum(-1) + 0.5 * yb.shape[-1] * log2pi
        return nll.mean(), {"output": out}

    def run(num_steps: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        res = estimate_learning_coeff_with_summary(
            model, loader, evaluate=evaluate, sampling_method=SGLD,
            optimizer_kwargs={"lr": STEP_SIZE[size], "localization": gamma, "nbeta": nbeta},
            num_chains=chains, num_draws=num_steps // 2, num_burnin_steps=num_steps // 2,
            num_steps_bw_draws=1, cores=1, seed=0, verbose=False, device="cpu",
        )  # fmt: skip
        return time.perf_counter() - t0, float(res["llc/mean"])

    run(max(4, min(20, steps // 10)))  # warm-up
    times, llc = [], float("nan")
    for _ in range(repeats):
        dt, llc = run(steps)
        times.append(dt)
    return {"time_s": times, "compile_s": 0.0, "llc": llc}


WORKERS = {
    "ours": worker_ours,
    "ours_torch": worker_ours_torch,
    "minimal": worker_minimal,
    "devinterp": worker_devinterp,
    "peak": worker_peak,
}


# ------------------------------------------------------------------------------------------- driver


def _gamma_for(size: str) -> float:
    """γ as slt_ppl chooses it by default (unit information), used by every side."""
    import slt_ppl

    model, problem = _model(size, "numpyro")
    return float(slt_ppl.localize(model, problem.data, problem.center).gamma)


def _run_worker(python: str, side: str, size: str, chains: list[int], steps: int, gamma: float,
                repeats: int, timeout: float) -> list[dict]:  # fmt: skip
    """One subprocess per (side, size) measures every chain count (increasing, so that JAX's
    never-reset peak memory is the current count's); returns one dict per chain count."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, size,
           ",".join(map(str, chains)), str(steps), repr(gamma), str(repeats)]  # fmt: skip
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [{"chains": c, "error": f"timed out after {timeout:.0f} s"} for c in chains]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        # the whole end of the traceback: Pyro appends the trace's shapes after the message
        tail = (proc.stderr or proc.stdout).strip()[-1500:] or "no output"
        return [{"chains": c, "error": tail} for c in chains]
    return json.loads(lines[-1][len("RESULT ") :])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k parameters only")
    parser.add_argument("--sizes", default=None, help="comma list of " + ",".join(SIZES))
    parser.add_argument("--chains", default="1,8,32", help="comma list of chain counts")
    parser.add_argument(
        "--chains-for",
        default="",
        help="per-size chain counts, e.g. '10M:1,8;100M:1,4' (others use --chains)",
    )
    parser.add_argument("--sides", default="ours,ours_torch,minimal,devinterp")
    parser.add_argument(
        "--gamma-for",
        default="",
        help="per-size γ, e.g. '1M:3.66' (default: slt_ppl's choice, from a JAX localize here)",
    )
    parser.add_argument(
        "--steps", default=None, help="steps per chain: one number, or per size '1M:1000;10M:200'"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument(
        "--peak",
        type=int,
        default=0,
        help="also time an m×m float32 matrix product in both frameworks (m = this; 0: no): "
        "the ceiling for the 'fraction of matmul peak' column",
    )
    parser.add_argument(
        "--devinterp-steps",
        type=int,
        default=None,
        help="steps per chain for devinterp (default: a tenth of --steps, at least 20; it is slow)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    parser.add_argument(
        "--devinterp-python",
        default=os.environ.get("DEVINTERP_PYTHON", "/tmp/perf_helper/devinterp-venv/bin/python"),
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        side, size, chains, steps, gamma, repeats = args.worker
        chain_list = [int(c) for c in chains.split(",")]
        if side == "devinterp":
            result = [{"chains": c, **worker_devinterp(size, c, int(steps), float(gamma),
                                                      int(repeats))} for c in chain_list]  # fmt: skip
        else:
            result = WORKERS[side](size, chain_list, int(steps), float(gamma), int(repeats))
        for r in result:
            r["peak_rss_mb"] = _peak_rss_mb()
        print("RESULT " + json.dumps(result))
        return 0

    sizes = ["10k"] if args.quick else (args.sizes or "10k,100k,1M").split(",")
    chains_for = dict(
        (k, [int(c) for c in v.split(",")])
        for k, v in (item.split(":") for item in args.chains_for.split(";") if item)
    )
    steps_for = _per_size(args.steps)
    gammas = {k: float(v) for k, v in (it.split(":") for it in args.gamma_for.split(";") if it)}
    sides = args.sides.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    # one line per row as it comes, so that a run cut short keeps what it measured
    live = out / f"llc_speed_{stamp}.jsonl"
    rows, peaks = [], {}
    load0 = os.getloadavg()
    if args.peak:
        for r in _run_worker(sys.executable, "peak", str(args.peak), [0], 0, 0.0, 1, args.timeout):
            print(f"matmul {args.peak}³ float32: {r}", flush=True)
            if "tflops" in r:
                peaks.setdefault(r["framework"], r["tflops"])  # the framework's default setting
            _append(live, {"peak": r})
    for size in sizes:
        gamma = gammas.get(size) or _gamma_for(size)
        steps = steps_for.get(size) or DEFAULT_STEPS[size]
        # increasing: JAX's peak memory is never reset within a worker (``_device_memory_mb``)
        chain_list = sorted(chains_for.get(size) or [int(c) for c in args.chains.split(",")])
        for side in sides:
            python = args.devinterp_python if side == "devinterp" else sys.executable
            side_steps, side_repeats = steps, args.repeats
            if side == "devinterp":
                side_steps = args.devinterp_steps or max(20, steps // 10)
                side_repeats = min(args.repeats, 2)
            if side == "devinterp" and not Path(python).exists():
                results = [{"chains": c, "error": f"no devinterp python at {python}"}
                           for c in chain_list]  # fmt: skip
            else:
                results = _run_worker(python, side, size, chain_list, side_steps, gamma,
                                      side_repeats, args.timeout)  # fmt: skip
            for res in results:
                row = {"size": size, "params": LAYERS * SIZES[size] ** 2, "side": side,
                       "steps": side_steps, "gamma": gamma, **res}  # fmt: skip
                if "time_s" in res:
                    _speed(
                        row, peaks.get("torch" if side in ("ours_torch", "devinterp") else "jax")
                    )
                rows.append(row)
                _append(live, row)
                _print_row(row)
    _ratios(rows)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_before": load0,
        "load_after": os.getloadavg(),
        "n": N,
        "batch": BATCH,
        "step_size": STEP_SIZE,
        "matmul_peak_tflops": peaks,
        "python": sys.version.split()[0],
    }
    path = out / f"llc_speed_{stamp}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    load1 = meta["load_after"][0]
    print(f"\n{meta['cpu']}, {meta['cores']} cores, load {load0[0]:.1f} -> {load1:.1f}")
    print(f"wrote {path}")
    return 0


def _per_size(spec: str | None) -> dict[str, int]:
    """'1M:1000;10M:200' -> {'1M': 1000, '10M': 200}; a bare number applies to every size."""
    if not spec:
        return {}
    if ":" not in spec:
        return dict.fromkeys(SIZES, int(spec))
    return {k: int(v) for k, v in (item.split(":") for item in spec.split(";") if item)}


def _speed(row: dict, peak_tflops: float | None) -> None:
    """Chain-steps/s (median over repeats), model TFLOP/s and its share of the matmul peak."""
    row["chain_steps_per_s"] = row["chains"] * row["steps"] / statistics.median(row["time_s"])
    flops = FLOPS_PER_PARAM_ROW * BATCH * row["params"] * row["chain_steps_per_s"]
    row["model_tflops"] = flops / 1e12
    row["fraction_of_peak"] = flops / 1e12 / peak_tflops if peak_tflops else float("nan")


def _append(path: Path, row: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _print_row(row: dict) -> None:
    if "error" in row:
        lines = row["error"].splitlines()
        print(f"{row['size']:>5} {row['chains']:>3} {row['side']:<11} n/a:", flush=True)
        print("      " + "\n      ".join(lines[-12:]), flush=True)
        return
    print(
        f"{row['size']:>5} {row['chains']:>3} {row['side']:<11} {row['chain_steps_per_s']:>10.0f} "
        f"chain-steps/s  {row['model_tflops']:7.3f} TFLOP/s ({row['fraction_of_peak']:6.1%} of "
        f"peak)  compile {row['compile_s']:6.1f} s  peak RSS {row['peak_rss_mb']:7.0f} MB  device "
        f"{row.get('device_peak_mb', float('nan')):8.0f} MB  llc {row['llc']:12.2f}  "
        f"{row.get('device', '')}",
        flush=True,
    )
    if "precision" in row:
        print(f"      precision of nβ·(L(w) − L(w*)) at default vs highest: {row['precision']}")


def _ratios(rows: list[dict]) -> None:
    by = {(r["size"], r["chains"], r["side"]): r.get("chain_steps_per_s") for r in rows}
    print("\nratios (ours chain-steps/s over the other side's):")
    for (size, chains, side), speed in by.items():
        if side != "ours" or not speed:
            continue
        parts = []
        for other in ("devinterp", "minimal", "ours_torch"):
            o = by.get((size, chains, other))
            if o:
                parts.append(f"vs {other} {speed / o:.2f}x")
        print(f"  {size:>5} x{chains:<3} " + ", ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
