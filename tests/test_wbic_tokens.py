"""WBIC of a per-token loss (``nn.Module`` with ``loss_fn`` returning (b, T)): n = rows, L_n = the
mean per-token NLL, nβ = T·n/log n, WBIC = E_β[n·T·L_n] (estimators/wbic.py).

The model is a linear-Gaussian regression whose T tokens per row are i.i.d. rows in disguise:
ℓ_{i,t}(w) = ½(y_{i,t} − x_{i,t}ᵀw)². Its posterior exp(−nβ·L_n − γ/2‖w − w*‖²) is Gaussian,
N(μ, Σ) with Σ = (β·XᵀX + γI)⁻¹, μ = Σ(β·Xᵀy + γw*), β = nβ/(n·T) = 1/log n, so

    WBIC = E[½ Σ_{i,t} (y_{i,t} − x_{i,t}ᵀw)²] = ½‖y − Xμ‖² + ½ tr(XᵀX Σ)      (exact).

The same data laid out as n·T rows of one token, sampled at the same nβ, is the same posterior:
its WBIC-as-rows E[n'·L_n'] (n' = n·T) is the same number. (Its own WBIC temperature
1/log(n·T) is another one; the two free-energy estimates differ by ≈ λ·log T, within the O(1)
Watanabe's expansion leaves open: the counting of n is the documented convention.)"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import slt_ppl

N, T, D, GAMMA = 60, 8, 3, 10.0


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, T, D))
    y = x @ np.array([1.0, -0.5, 0.3]) + rng.normal(size=(N, T))
    center = np.linalg.lstsq(x.reshape(-1, D), y.reshape(-1), rcond=None)[0]
    return x, y, center


def _localize(center, data, **kw):
    """A Linen ``Dense(1)`` (it acts on the last axis: rows (b, D) or tokens (b, T, D))."""
    from flax import linen

    variables = {"params": {"kernel": jnp.asarray(center, jnp.float32)[:, None]}}
    arrays = {k: v.astype(np.float32) for k, v in data.items()}
    module = linen.Dense(1, use_bias=False)
    return slt_ppl.localize(
        module, arrays, loss_fn=_squared, variables=variables, gamma=GAMMA, **kw
    )


def _squared(out, batch):  # (b, T) per token, or (b,) per row: the same expression
    return 0.5 * (batch["y"] - out[..., 0]) ** 2


def test_wbic_of_per_token_losses_matches_the_closed_form_and_the_row_layout():
    x, y, center = _data()
    token_post = _localize(center, {"x": x, "y": y})
    assert token_post.nbeta == pytest.approx(T * N / math.log(N))
    rows = {"x": x.reshape(-1, D), "y": y.reshape(-1)}
    row_post = _localize(center, rows, nbeta=token_post.nbeta)
    # MALA at a fixed ε (acceptance ≈ 0.75 here; the tuner would cost more than the runs)
    kw = dict(kernel="mala", step_size=0.01, num_chains=4, num_draws=400, num_burnin=100,
              thin=1, seed=1, progress=False)  # fmt: skip
    token_run = slt_ppl.sample(token_post, **kw)
    row_run = slt_ppl.sample(row_post, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("error", slt_ppl.errors.SLTWarning)  # at the WBIC temperature
        wbic = slt_ppl.wbic(token_run, warn=True)
    assert wbic.attrs["tokens_per_row"] == T and wbic.attrs["at_wbic_temperature"] == 1

    xf, yf = rows["x"], rows["y"]
    beta = 1 / math.log(N)
    sigma = np.linalg.inv(beta * xf.T @ xf + GAMMA * np.eye(D))
    mu = sigma @ (beta * xf.T @ yf + GAMMA * center)
    exact = 0.5 * np.sum((yf - xf @ mu) ** 2) + 0.5 * np.trace(xf.T @ xf @ sigma)
    # MALA has no step-size bias; 4 se leaves a 1-in-15 000 chance of a false alarm. The old
    # row-counted value (n·L_n instead of n·T·L_n) is off by a factor T = 8: ≫ 4 se.
    z = (float(wbic["wbic"]) - exact) / float(wbic["wbic_se"])
    assert abs(z) < 4, (float(wbic["wbic"]), exact, float(wbic["wbic_se"]))
    assert float(wbic["n_loss_center"]) == pytest.approx(
        N * T * token_post.info["loss_center_full"]
    )
    llc = slt_ppl.llc(token_run, warn=False)
    assert float(wbic["llc_from_wbic"]) == pytest.approx(float(llc["llc"]), rel=1e-6)

    # the same posterior as rows, the same seeds: the same chains up to float32 summation order
    # (a contracting Gaussian posterior keeps them together; an accept/reject flip would show as
    # a difference of order the se), so the same E[n·T·L_n]
    as_rows = slt_ppl.wbic(row_run, warn=False)
    assert as_rows.attrs["tokens_per_row"] == 1
    assert float(as_rows["wbic"]) == pytest.approx(float(wbic["wbic"]), rel=1e-5)
