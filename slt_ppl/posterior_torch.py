"""The localized, tempered posterior of a Pyro / PyTorch model, in torch.

Same object as :class:`slt_ppl.posterior.LocalPosterior`, with torch tensors instead of JAX arrays:

    p(w; w*, β, γ) ∝ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²)          (Lau et al. 2023, arXiv 2308.12108)
    U_B(w) = nβ·L_B(w) + (γ/2)·‖w − w*‖²

``loss_fn(w, batch)`` takes a flat torch vector ``w`` (the latent sites in unconstrained space,
concatenated in trace order) and a dict of torch tensors, and is written with plain torch ops so
that
``torch.func.vmap`` / ``torch.func.grad`` can batch it over chains. ``data`` and ``center`` live on
``device``. Built by :func:`slt_ppl.backends.pyro_backend.localize_pyro`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor
Batch = Mapping[str, Tensor]


@dataclass(frozen=True)
class TorchLocalPosterior:
    """A localized tempered posterior over a flat torch parameter vector.

    Attributes mirror :class:`~slt_ppl.posterior.LocalPosterior`:
        loss_fn: ``loss_fn(w, batch) -> L_B(w)``, the mean per-datum negative log-likelihood.
        data: the full data, a dict of tensors on ``device`` sharing the leading axis ``n``.
        n, nbeta, gamma: data size, nβ (default n/log n) and the localization strength γ.
        center: w* as a flat tensor (unconstrained space) on ``device``.
        unravel: flat tensor → dict of unconstrained site tensors.
        sites: site name → constrained shape.
        backend: "pyro".
        constrain: dict of unconstrained site values → constrained values.
        info: free-form description copied into result attrs (incl. ``loss_center_full``).
        device: where data, center and chains live (cuda if available, else cpu, unless chosen).
        per_sample_loss: ``per_sample_loss(w, batch) -> ℓ`` of shape (b,) (per row) or (b, T)
            (per token), plain torch ops (vmapped over chains); ``loss_fn`` is the mean of ℓ over
            all entries. None: ``loss_fn`` on one-row batches, vmapped. Same convention as
            :class:`slt_ppl.posterior.LocalPosterior` (seam 1).
    """

    loss_fn: Callable[[Tensor, Batch], Tensor]
    data: dict[str, Tensor]
    n: int
    nbeta: float
    gamma: float
    center: Tensor
    unravel: Callable[[Tensor], dict[str, Tensor]]
    sites: dict[str, tuple[int, ...]]
    backend: str
    constrain: Callable[[dict[str, Tensor]], dict[str, Tensor]] = field(default=lambda p: p)
    info: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    per_sample_loss: Callable[[Tensor, Batch], Tensor] | None = None

    @property
    def dim(self) -> int:
        """Number of sampled parameters d."""
        return int(self.center.shape[0])

    @property
    def beta(self) -> float:
        """Inverse temperature β = nβ / n."""
        return self.nbeta / self.n

    def localization(self, w: Tensor) -> Tensor:
        """(γ/2)·‖w − w*‖² (over the last axis)."""
        return 0.5 * self.gamma * torch.sum((w - self.center) ** 2, dim=-1)

    def potential(self, w: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """U_B(w) = nβ·L_B(w) + (γ/2)‖w − w*‖², returned with L_B(w) as auxiliary output."""
        loss = self.loss_fn(w, batch)
        return self.nbeta * loss + self.localization(w), loss

    def full_loss(self, w: Tensor) -> Tensor:
        """L_n(w) on the full data."""
        with torch.no_grad():
            return self.loss_fn(w, self.data)

    def replace(self, **changes: Any) -> TorchLocalPosterior:
        """A copy with some fields changed (e.g. ``gamma``); nβ and γ are re-validated."""
        from dataclasses import replace

        from slt_ppl.posterior import _validate_temperature

        new = replace(self, **changes)
        _validate_temperature(new.nbeta, new.gamma)
        return new

    def center_params(self) -> dict[str, Tensor]:
        """w* as a dict of constrained site values."""
        return self.constrain(self.unravel(self.center))

    def constrain_flat(self, flat: np.ndarray, chunk: int = 4096) -> dict[str, np.ndarray]:
        """Rows of flat unconstrained vectors (k, d) → dict of constrained NumPy arrays (k,
        *shape)."""
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.sites}
        rows = torch.as_tensor(np.asarray(flat), dtype=self.center.dtype)
        with torch.no_grad():
            for start in range(0, max(rows.shape[0], 1), chunk):
                piece = rows[start : start + chunk].to(self.device)
                params = torch.func.vmap(lambda w: self.constrain(self.unravel(w)))(piece)
                for name, value in params.items():
                    out[name].append(value.cpu().numpy())
        return {
            name: np.concatenate(parts, axis=0) if parts else np.zeros((0, *self.sites[name]))
            for name, parts in out.items()
        }


def default_device() -> torch.device:
    """cuda if available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
