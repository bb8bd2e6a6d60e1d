"""The localized, tempered posterior every sampler in slt_ppl targets.

    p(w; w*, β, γ) ∝ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²)          (Lau et al. 2023, arXiv 2308.12108)

with L_n the mean per-datum negative log-likelihood. Samplers see the minibatch potential

    U_B(w) = nβ·L_B(w) + (γ/2)·‖w − w*‖²,

where L_B is the mean over a minibatch B. Parameters live in one flat vector ``w`` (the model's latent
sites, in unconstrained space, concatenated in trace order); :attr:`LocalPosterior.unravel` maps it back to
the dict of sites. A backend (``slt_ppl.backends``) builds this object; kernels and estimators never look
behind it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Batch = Mapping[str, Array]


@dataclass(frozen=True)
class LocalPosterior:
    """A localized tempered posterior over a flat parameter vector.

    Attributes:
        loss_fn: ``loss_fn(w, batch) -> L_B(w)``, the mean per-datum negative log-likelihood on ``batch``.
        data: the full data, a dict of arrays sharing the leading axis ``n``.
        n: number of data points.
        nbeta: the inverse temperature times n (default n/log n, Watanabe 2013).
        gamma: localization strength γ.
        center: w* as a flat vector (unconstrained space).
        unravel: maps a flat vector to the dict of latent sites (unconstrained values).
        sites: site name -> shape (constrained shape as the model declares it).
        backend: "numpyro", "jax" (a plain loss function) or "pyro".
        constrain: maps the dict of unconstrained site values to constrained ones (identity for "jax").
        info: free-form description (model name, how γ was chosen, ...), copied into result attrs.
        per_sample_loss: ``per_sample_loss(w, batch) -> ℓ``, the per-row negative log-likelihoods
            ℓ_i(w) = −log p(row i | w), shape (b,), or per token, shape (b, T): ℓ_it =
            −log p(token t of row i | its context, w). The convention (seam 1): ``loss_fn`` is the
            mean of ℓ over every entry (rows, and tokens), so for per-token losses L_n is the mean
            per-token NLL and n counts rows (sequences; see docs/observables.md for nβ). None
            (default): per-row losses are ``loss_fn`` on one-row batches, vmapped
            (``sampling.observe.row_loss_fn``). Used by ``sample(..., observe=...)``.
    """

    loss_fn: Callable[[Array, Batch], Array]
    data: dict[str, Array]
    n: int
    nbeta: float
    gamma: float
    center: Array
    unravel: Callable[[Array], dict[str, Array]]
    sites: dict[str, tuple[int, ...]]
    backend: str
    constrain: Callable[[dict[str, Array]], dict[str, Array]] = field(default=lambda p: p)
    info: dict[str, Any] = field(default_factory=dict)
    per_sample_loss: Callable[[Array, Batch], Array] | None = None

    @property
    def dim(self) -> int:
        """Number of sampled parameters d."""
        return int(self.center.shape[0])

    @property
    def beta(self) -> float:
        """Inverse temperature β = nβ / n."""
        return self.nbeta / self.n

    def localization(self, w: Array) -> Array:
        """(γ/2)·‖w − w*‖²."""
        return 0.5 * self.gamma * jnp.sum((w - self.center) ** 2)

    def potential(self, w: Array, batch: Batch) -> tuple[Array, Array]:
        """U_B(w) = nβ·L_B(w) + (γ/2)‖w − w*‖², returned with L_B(w) as auxiliary output."""
        loss = self.loss_fn(w, batch)
        return self.nbeta * loss + self.localization(w), loss

    def full_loss(self, w: Array) -> Array:
        """L_n(w) on the full data."""
        return self.loss_fn(w, self.data)

    def replace(self, **changes: Any) -> LocalPosterior:
        """A copy with some fields changed (e.g. ``gamma``); nβ and γ are re-validated."""
        from dataclasses import replace

        new = replace(self, **changes)
        _validate_temperature(new.nbeta, new.gamma)
        return new

    def center_params(self) -> dict[str, Array]:
        """w* as a dict of constrained site values."""
        return self.constrain(self.unravel(self.center))


def default_nbeta(n: int) -> float:
    """nβ = n / log n, i.e. β* = 1/log n (Watanabe 2013, JMLR 14:867, the WBIC temperature)."""
    if n < 2:
        raise ValueError("need at least 2 data points for the default nβ = n/log n")
    return n / math.log(n)


def _validate_temperature(nbeta: float, gamma: float) -> None:
    from slt_ppl.errors import SettingError

    if not (math.isfinite(nbeta) and nbeta > 0):
        raise SettingError(f"nbeta must be a positive finite number, got {nbeta!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise SettingError(f"gamma must be a non-negative finite number, got {gamma!r}")
