"""Stream draws to disk segment by segment, so a long run does not hold them all in memory.

``sample(..., stream_to="draws.nc")`` opens a :class:`DrawStream`; after each compiled segment the
sampler appends that segment's records (parameter draws and the per-draw statistics) and keeps only
the statistics in memory. The file is NetCDF4 (HDF5, written with h5netcdf) with an unlimited
``draw`` dimension and reads back with ``xarray.open_dataset(path, engine="h5netcdf")``:

    position (chain, draw, param)  flat unconstrained parameters w_t (``LocalPosterior.unravel``
                                   maps one row back to the sites)
    loss, loss_center, acceptance, grad_norm, distance (chain, draw)

Draws with index < attrs["num_burnin_draws"] are burn-in. The root attrs repeat n, nβ, γ, dim and
the sites' shapes, and for a weight-restricted posterior (``localize(..., restrict_to=...)``) the
restriction as the in-memory result records it: ``restricted_to`` (JSON), ``sampled_dim`` (= dim,
the length of a ``position`` row) and ``full_dim``; ``LocalPosterior.unravel`` of a row then gives
every site, the coordinates not sampled held at w*.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from slt_ppl.sampling.result import STAT_FIELDS as STATS

RESTRICTION_ATTRS = ("restricted_to", "sampled_dim", "full_dim")  # set by slt_ppl.restrict


class DrawStream:
    """An append-only NetCDF4 file of draws; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike,
        posterior: Any,
        num_chains: int,
        num_burnin_draws: int,
        chunk_draws: int = 64,
    ) -> None:
        import h5netcdf

        self.path = os.fspath(path)
        self.count = 0
        d = posterior.dim
        f = h5netcdf.File(self.path, "w")
        f.dimensions = {"chain": num_chains, "draw": None, "param": d}
        f.create_variable("chain", ("chain",), data=np.arange(num_chains))
        dtype = np.dtype(str(posterior.center.dtype).removeprefix("torch."))  # JAX or torch
        f.create_variable("position", ("chain", "draw", "param"), dtype, chunks=(1, chunk_draws, d))
        for name in STATS:
            f.create_variable(name, ("chain", "draw"), dtype, chunks=(num_chains, chunk_draws))
        f.attrs.update(
            {
                "n": int(posterior.n),
                "nbeta": float(posterior.nbeta),
                "gamma": float(posterior.gamma),
                "dim": int(d),
                "sites": json.dumps({k: list(v) for k, v in posterior.sites.items()}),
                "num_burnin_draws": int(num_burnin_draws),
                **{k: posterior.info[k] for k in RESTRICTION_ATTRS if k in posterior.info},
            }
        )
        self.file = f

    def append(self, record: Any) -> None:
        """Append one segment's ``DrawRecord`` (arrays with leading dims chain, draw)."""
        position = np.asarray(record.position)
        length = position.shape[1]
        start, stop = self.count, self.count + length
        self.file.resize_dimension("draw", stop)
        self.file.variables["position"][:, start:stop, :] = position
        for name in STATS:
            self.file.variables[name][:, start:stop] = np.asarray(getattr(record, name))
        self.file.flush()
        self.count = stop

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> DrawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
