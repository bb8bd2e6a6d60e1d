"""``slt_ppl.compare``: one localized posterior through several kernels, checked against one.

Every kernel samples the same p(w; w*, β, γ) ∝ exp(−nβ·L_n(w) − γ/2‖w − w*‖²) (Lau et al. 2023), so
their LLC estimates λ̂_k = nβ·(E[L_n(w)] − L_n(w*)) estimate the same number. A kernel agrees with
the reference (by default full-batch MALA, which is exact up to Monte Carlo error, Roberts &
Rosenthal 1998) when

    |λ̂_k − λ̂_ref| ≤ z · √(se_k² + se_ref²),   z = 3,

with se the Monte Carlo standard errors (nβ × ArviZ MCSE of the mean loss difference). Furman & Lau
(2024, Section 4.1) use this comparison to validate SGLD against MALA.

``reference="exact"`` checks every kernel against :func:`slt_ppl.reference.exact_llc` instead (NUTS
or quadrature on the same full-batch posterior; se_ref is its MCSE or numerical error).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from slt_ppl.errors import DivergenceError, SettingError
from slt_ppl.estimators.llc import llc
from slt_ppl.kernels import FULL_BATCH_KERNELS, NUMPYRO_KERNELS, Kernel
from slt_ppl.posterior import LocalPosterior
from slt_ppl.sampling.api import sample

AGREEMENT_Z = 3.0


def _kernel_name(kernel: str | Kernel) -> str:
    return kernel if isinstance(kernel, str) else kernel.name


def compare(
    posterior: LocalPosterior,
    kernels: Sequence[str | Kernel] = ("sgld", "sgnht", "mala"),
    reference: str | None = "mala",
    *,
    z: float = AGREEMENT_Z,
    kernel_options: dict[str, dict[str, Any]] | None = None,
    reference_options: dict[str, Any] | None = None,
    **sample_kwargs: Any,
) -> xr.Dataset:
    """Sample ``posterior`` with each kernel and compare the LLC estimates.

    Each kernel's λ̂ = nβ·(E[L_B(w)] − L_B(w*)) (:func:`slt_ppl.llc`; Lau et al. 2023) is checked
    against the reference's: they agree when |λ̂ − λ̂_ref| ≤ z·√(se² + se_ref²) (a z-test on the
    difference of two independent estimates).

    Args:
        posterior: from :func:`slt_ppl.localize`.
        kernels: kernel names or :class:`~slt_ppl.kernels.Kernel` objects (named by
            ``kernel.name``).
        reference: the name of the kernel the others are checked against (must be
            in ``kernels``); ``"exact"``: the exact value of the same posterior
            (:func:`slt_ppl.reference.exact_llc`, called with ``reference_options``); ``None``
            skips the agreement check.
        z: agreement threshold in combined standard errors (default 3).
        kernel_options: per-kernel ``kernel_options`` for :func:`slt_ppl.sample`, keyed by name.
        reference_options: keyword arguments of ``exact_llc`` (``method``, ``num_draws``, ...) for
            ``reference="exact"``.
        **sample_kwargs: passed to every :func:`slt_ppl.sample` call (``num_chains``, ``num_draws``,
            ``seed``, ``step_size``, ...). ``batch_size`` is dropped for full-batch kernels.

    Returns:
        ``xr.Dataset`` with dim ``kernel`` and variables ``llc``, ``llc_se``, ``healthy``,
        ``verdict``, ``rhat``, ``ess``, ``acceptance``, ``step_size``, ``wall_time_s`` (sampling
        plus estimation), ``diverged`` (every chain diverged: the estimate is NaN), ``difference``
        (λ̂ − λ̂_ref), ``combined_se`` (√(se² + se_ref²)) and ``agrees_with_reference``;
        attrs record the posterior (n, nβ, γ, d), the reference and z; with
        ``reference="exact"`` also ``reference_llc``, ``reference_llc_se``, ``reference_method``
        and ``reference_converged``.
    """
    names = [_kernel_name(k) for k in kernels]
    if not names:
        raise SettingError("compare needs at least one kernel")
    if len(set(names)) != len(names):
        raise SettingError(f"kernel names must be unique, got {names}")
    if reference not in (None, "exact") and reference not in names:
        raise SettingError(
            f"reference {reference!r} is neither 'exact' nor among the kernels {names}"
        )
    if reference_options and reference != "exact":
        raise SettingError("reference_options apply only to reference='exact'")
    if "kernel" in sample_kwargs or "kernel_options" in sample_kwargs:
        raise SettingError("pass kernels through the 'kernels' and 'kernel_options' arguments")
    options = kernel_options or {}
    rows: dict[str, list[Any]] = {
        key: []
        for key in (
            "llc", "llc_se", "healthy", "verdict", "rhat", "ess", "acceptance", "step_size",
            "wall_time_s", "diverged",
        )
    }  # fmt: skip
    for kernel, name in zip(kernels, names, strict=True):
        kwargs = dict(sample_kwargs)
        full_batch = name in FULL_BATCH_KERNELS or name in NUMPYRO_KERNELS
        if isinstance(kernel, Kernel):
            full_batch = kernel.full_batch
        if full_batch:
            kwargs.pop("batch_size", None)
        t0 = time.perf_counter()
        result = sample(posterior, kernel=kernel, kernel_options=options.get(name), **kwargs)
        try:
            est = llc(result, warn=False)
            values = {
                "llc": float(est["llc"]),
                "llc_se": float(est["llc_se"]),
                "healthy": bool(est.attrs["healthy"]),
                "verdict": str(est.attrs["verdict"]),
                "rhat": float(est["rhat"]),
                "ess": float(est["ess"]),
                "acceptance": float(est["acceptance"]),
                "diverged": False,
            }
        except DivergenceError as err:
            nan = math.nan
            values = {
                "llc": nan, "llc_se": nan, "healthy": False, "verdict": f"unhealthy - {err}",
                "rhat": nan, "ess": nan, "acceptance": nan, "diverged": True,
            }  # fmt: skip
        values["wall_time_s"] = time.perf_counter() - t0
        values["step_size"] = float(result.attrs.get("step_size", math.nan))
        for key, value in values.items():
            rows[key].append(value)
    ds = xr.Dataset(
        {
            key: ("kernel", np.asarray(value, dtype=str if key == "verdict" else None))
            for key, value in rows.items()
        },
        coords={"kernel": names},
    )
    if reference == "exact":
        from slt_ppl.reference import exact_llc

        exact = exact_llc(posterior, **(reference_options or {}))
        ref = exact[["llc", "llc_se"]]
        ds.attrs.update({"reference_llc": float(exact["llc"]),
                         "reference_llc_se": float(exact["llc_se"]),
                         "reference_method": exact.attrs["method"],
                         "reference_converged": exact.attrs["converged"]})  # fmt: skip
    elif reference is not None:
        ref = ds.sel(kernel=reference)
    if reference is not None:
        ds["difference"] = ds["llc"] - ref["llc"]
        ds["combined_se"] = np.sqrt(ds["llc_se"] ** 2 + ref["llc_se"] ** 2)
        ds["agrees_with_reference"] = np.abs(ds["difference"]) <= z * ds["combined_se"]
    ds.attrs.update(
        {
            "reference": reference if reference is not None else "none",
            "z": float(z),
            "criterion": "|llc - llc_ref| <= z * sqrt(se^2 + se_ref^2)",
            "n": int(posterior.n),
            "nbeta": float(posterior.nbeta),
            "gamma": float(posterior.gamma),
            "dim": int(posterior.dim),
        }
    )
    return ds
