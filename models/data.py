"""Backend-neutral data and true parameters for the model zoo (NumPy only, generated from a seed).

Each ``make_*`` returns a :class:`Problem`: the data dict (leading axis n), the center w* (the true
parameter, as NumPy arrays keyed by site name), the theoretical λ where theory gives one, and the
settings. ``models.numpyro_zoo`` and ``models.pyro_zoo`` wrap the same problems in each PPL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from models import theory


@dataclass(frozen=True)
class Problem:
    name: str
    data: dict[str, np.ndarray]
    center: dict[str, np.ndarray]
    theory_lambda: Fraction | None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(sum(np.size(v) for v in self.center.values()))


def dln_weights(widths: list[int], rank: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random weights W_1..W_M (W_l of shape (H_l, H_{l−1})) whose product has rank ``rank``.

    Entries are N(0, 1/H_{l−1}); the first layer is then projected to rank ``rank`` through a random
    r-dimensional subspace (so the product has exactly that rank, with probability one, when every
    width is ≥ rank).
    """
    weights = [
        rng.normal(0.0, 1.0 / np.sqrt(widths[i]), size=(widths[i + 1], widths[i]))
        for i in range(len(widths) - 1)
    ]
    if rank < min(widths):
        q, _ = np.linalg.qr(rng.normal(size=(widths[1], max(rank, 1))))
        proj = q[:, :rank] @ q[:, :rank].T if rank > 0 else np.zeros((widths[1], widths[1]))
        weights[0] = proj @ weights[0]
    return weights


def make_dln(
    widths: list[int] = (5, 5, 5),
    rank: int | None = None,
    n: int = 10_000,
    seed: int = 0,
    input_range: float = 10.0,
    noise: float = 1.0,
    center: str = "random",
) -> Problem:
    """Deep linear network y = W_M⋯W_1·x + N(0, noise²), x ~ U[−input_range, input_range]^{H_0}
    (Furman & Lau 2024, App. E.1), centered at the true weights; λ from Aoyagi's formula.

    ``center="random"``: the random factors that generated the data (:func:`dln_weights`; at rank
    r < min(widths) only the first layer is projected, so the other layers keep full rank);
    ``center="minimal"``: the same product factored through r dimensions with every other hidden
    unit zero (:func:`minimal_factors`; A = B = 0 at r = 0). Aoyagi's λ is the global coefficient,
    the minimum of the local λ over the true set; it is attained at the minimal factorization, while
    the random one can sit higher (reference section 4: RRR 2-2-2, r = 0 has 3/2 at A = B = 0 but 2
    at (A, B) = (I, 0))."""
    if center not in ("random", "minimal"):
        raise ValueError(f"center must be 'random' or 'minimal', got {center!r}")
    widths = list(widths)
    rank = min(widths) if rank is None else rank
    rng = np.random.default_rng(seed)
    weights = dln_weights(widths, rank, rng)
    x = rng.uniform(-input_range, input_range, size=(n, widths[0]))
    f = x
    for w in weights:
        f = f @ w.T
    y = f + noise * rng.normal(size=f.shape)
    lam, _ = theory.deep_linear_network(widths, rank)
    if center == "minimal":
        product = weights[0]
        for w in weights[1:]:
            product = w @ product
        weights = minimal_factors(product, widths, rank)
    return Problem(
        name=f"dln_{'x'.join(map(str, widths))}_r{rank}" + ("_min" if center == "minimal" else ""),
        data={"x": x.astype(np.float32), "y": y.astype(np.float32)},
        center={f"w{i}": w.astype(np.float32) for i, w in enumerate(weights)},
        theory_lambda=lam,
        settings={
            "widths": widths,
            "rank": rank,
            "noise": noise,
            "n": n,
            "seed": seed,
            "center": center,
        },
    )


def minimal_factors(product: np.ndarray, widths: list[int], rank: int) -> list[np.ndarray]:
    """W_1..W_M with W_M⋯W_1 = ``product`` (rank r) that pass only through the first r units of
    every hidden layer: with product = U·S·Vᵀ (top r singular triplets), W_1 = E_1·S^{1/M}·V_rᵀ,
    W_l = E_l·S^{1/M}·E_{l−1}ᵀ, W_M = U_r·S^{1/M}·E_{M−1}ᵀ, E_l the first r columns of I_{H_l}.
    Every other weight is zero (all zero at r = 0)."""
    depth = len(widths) - 1
    u, s, vt = np.linalg.svd(product)
    root = np.diag(s[:rank] ** (1.0 / depth))
    weights = []
    for i in range(depth):
        w = np.zeros((widths[i + 1], widths[i]))
        left = u[:, :rank] if i == depth - 1 else np.eye(widths[i + 1])[:, :rank]
        right = vt[:rank] if i == 0 else np.eye(widths[i])[:rank]
        w[:, :] = left @ root @ right
        weights.append(w)
    return weights


def make_rrr(m: int = 3, h: int = 2, n_out: int = 3, rank: int = 1, **kwargs: Any) -> Problem:
    """Reduced-rank regression y = B·A·x: a DLN of widths (M, H, N); λ of Aoyagi & Watanabe 2005."""
    problem = make_dln([m, h, n_out], rank, **kwargs)
    lam = theory.reduced_rank_regression(m, h, n_out, rank)
    assert lam == problem.theory_lambda  # the two formulas agree on three widths (reference §4)
    return Problem(
        f"rrr_{m}_{h}_{n_out}_r{rank}", problem.data, problem.center, lam, problem.settings
    )


def make_linear_regression(
    d: int = 10, n: int = 5_000, seed: int = 0, noise: float = 1.0, center: str = "mle"
) -> Problem:
    """Regular linear regression y = x·w + N(0, noise²), x ~ N(0, I_d): λ = d/2.

    ``center="mle"`` (default) centers at the least-squares fit ŵ of the float32 data the model
    sees, where the LLC estimand is the regular value (``theory.linear_gaussian_llc``:
    ½·tr(nβH(nβH + γI)⁻¹) → d/2). ``center="true"`` centers at the true w₀ instead, whose
    estimand is lower, ≈ d/2 − χ²_d/(2 log n) at β = 1/log n (w₀ is not the minimum of L_n), which
    hides a sampler that runs hot by that much. The true w₀ is in ``settings["true_w"]``.
    """
    if center not in ("mle", "true"):
        raise ValueError(f"center must be 'mle' or 'true', got {center!r}")
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    y = x @ w + noise * rng.normal(size=n)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    if center == "mle":
        w_center = np.linalg.lstsq(x32.astype(np.float64), y32.astype(np.float64), rcond=None)[0]
    else:
        w_center = w
    return Problem(
        name=f"linear_regression_d{d}",
        data={"x": x32, "y": y32},
        center={"w": w_center.astype(np.float32)},
        theory_lambda=theory.regular(d),
        settings={
            "d": d,
            "n": n,
            "seed": seed,
            "noise": noise,
            "center": center,
            "true_w": [float(v) for v in w],
        },
    )


def make_normal_crossing(
    powers: tuple[int, ...] = (1, 2),
    n: int = 5_000,
    seed: int = 0,
    noise: float = 1.0,
    x_std: float = 1.0,
) -> Problem:
    """y = x·Π w_i^{p_i} + N(0, noise²), x ~ N(0, x_std²), with true w = 0: K ∝ Π w_i^{2p_i},
    λ = 1/(2·max p_i) (a power 0 leaves w_i free: it adds nothing to λ).

    devinterp's test data (its sampler accuracy test): n = 1000, noise = 0.25, x_std = 2."""
    rng = np.random.default_rng(seed)
    x = x_std * rng.normal(size=n)
    y = noise * rng.normal(size=n)
    return Problem(
        name="normal_crossing_" + "_".join(map(str, powers)),
        data={"x": x.astype(np.float32), "y": y.astype(np.float32)},
        center={"w": np.zeros(len(powers), np.float32)},
        theory_lambda=theory.normal_crossing(powers),
        settings={"powers": list(powers), "n": n, "seed": seed, "noise": noise, "x_std": x_std},
    )


def relu_weights(widths: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random teacher weights of a ReLU MLP: ``w{l}`` of shape (H_{l+1}, H_l) with N(0, 2/H_l)
    entries (He initialization) and biases ``b{l}`` with N(0, 0.1²) entries."""
    out: dict[str, np.ndarray] = {}
    for i in range(len(widths) - 1):
        out[f"w{i}"] = rng.normal(0.0, np.sqrt(2.0 / widths[i]), size=(widths[i + 1], widths[i]))
        out[f"b{i}"] = rng.normal(0.0, 0.1, size=widths[i + 1])
    return out


def relu_forward(params: dict[str, Any], x: Any, depth: int, xp: Any = np) -> Any:
    """f(x) = W_M·relu(⋯relu(W_1·x + b_1)⋯) + b_M (``xp`` is numpy or jax.numpy)."""
    f = x
    for i in range(depth):
        f = f @ params[f"w{i}"].T + params[f"b{i}"]
        if i < depth - 1:
            f = xp.maximum(f, 0.0)
    return f


def make_relu_regression(
    widths: tuple[int, ...] = (10, 20, 20, 10),
    n: int = 10_000,
    seed: int = 0,
    noise: float = 1.0,
) -> Problem:
    """Realizable regression with a ReLU network (Furman & Lau 2024, Section 4.1): x ~ N(0, I),
    y = f(x; w₀) + N(0, noise²) with w₀ a random teacher of the same architecture; centered at w₀.
    No closed-form λ is known (theory_lambda None); SGLD is checked against MALA instead."""
    widths = list(widths)
    rng = np.random.default_rng(seed)
    params = relu_weights(widths, rng)
    x = rng.normal(size=(n, widths[0]))
    y = relu_forward(params, x, len(widths) - 1) + noise * rng.normal(size=(n, widths[-1]))
    return Problem(
        name=f"relu_{'x'.join(map(str, widths))}",
        data={"x": x.astype(np.float32), "y": y.astype(np.float32)},
        center={k: v.astype(np.float32) for k, v in params.items()},
        theory_lambda=None,
        settings={"widths": widths, "n": n, "seed": seed, "noise": noise},
    )


def make_tanh_zero(
    hidden: int = 3, n: int = 5_000, seed: int = 0, noise: float = 1.0, x_std: float = 1.0
) -> Problem:
    """One-hidden-layer tanh network y = Σ_k a_k·tanh(b_k·x) + N(0, noise²) (one input, one output,
    no biases) with true function 0 (y is pure noise), centered at a = b = 0 (d = 2·hidden).

    λ at 0: for hidden = 1, K(a, b) = a²·E[tanh(bx)²]/(2σ²) = a²·b²·E[x²]·(1 + O(b²))/(2σ²) is
    locally the normal crossing a²b², so λ = 1/2 (m = 2). For hidden ≥ 2 a closed form is due to
    Aoyagi (three-layer perceptrons, Vandermonde-type singularities); we could not check its
    statement here, so theory_lambda is None (NaN in tables) and the exact reference is the test."""
    rng = np.random.default_rng(seed)
    x = x_std * rng.normal(size=(n, 1))
    y = noise * rng.normal(size=(n, 1))
    return Problem(
        name=f"tanh_h{hidden}_zero",
        data={"x": x.astype(np.float32), "y": y.astype(np.float32)},
        center={"a": np.zeros(hidden, np.float32), "b": np.zeros(hidden, np.float32)},
        theory_lambda=Fraction(1, 2) if hidden == 1 else None,
        settings={"hidden": hidden, "n": n, "seed": seed, "noise": noise, "x_std": x_std},
    )
