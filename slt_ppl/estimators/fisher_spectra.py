"""Eigenvalue spectra of Fisher information matrices, from score matrices or dense matrices.

A Fisher estimated from k per-sample scores J (k × d) is F = JᵀJ/k. Its non-zero eigenvalues are
those of the k × k Gram matrix JJᵀ/k, so every spectrum here costs O(k³ + k²d) and no d × d matrix
is formed (reference §5, last item). Per layer (a set of columns of J) two spectra are kept:

* ``block``: the diagonal block F_ll = J_lᵀJ_l/k, eigenvalues from J_lJ_lᵀ/k;
* ``conditional``: the Schur complement S_l = F_ll − F_{l,<l} F_{<l,<l}⁺ F_{<l,l}, the Fisher
  information of layer l once the earlier layers are accounted for (chain rule of Fisher
  information). In score space S_l = J_lᵀ(I − P_{<l})J_l/k with P_{<l} the orthogonal projector of
  ℝᵏ onto the span of the earlier layers' columns, so its non-zero eigenvalues are those of (I −
  P_{<l}) J_lJ_lᵀ (I − P_{<l})/k.

The conditional spectra feed the layerwise lower 2sED (see ``effective_dimension.py``): by Weyl's
majorant theorem Σ_l log det(I + a S_l^{1/2}) ≤ log det(I + a F^{1/2}) for every a ≥ 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from slt_ppl.errors import DataError, SettingError

_RANK_RTOL = 1e-10


def _eigvalsh_psd(
    matrix: np.ndarray, scale: float | None = None, rtol: float | None = None
) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix, descending; round-off ones set to 0.

    Eigenvalues below size·ε_machine·λ_max (the numerical-rank cut of ``numpy.linalg.matrix_rank``)
    are zeroed: otherwise a rank-deficient Fisher would get spurious ~1e-16 eigenvalues, which the
    2sED amplifies at small ε. ``scale`` replaces λ_max (a Schur complement is cut relative to its
    block, not to itself, with the looser ``rtol`` since it is a difference of large terms).
    """
    if matrix.shape[0] == 0:
        return np.zeros(0)
    sym = 0.5 * (matrix + matrix.T)
    vals = np.linalg.eigvalsh(sym)[::-1]
    top = max(vals[0], 0.0) if scale is None else scale
    cut = top * (matrix.shape[0] * np.finfo(np.float64).eps * 10 if rtol is None else rtol)
    return np.where(vals > cut, vals, 0.0)


def _range_basis(gram: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of the range of a PSD matrix."""
    if gram.shape[0] == 0:
        return np.zeros((0, 0))
    vals, vecs = np.linalg.eigh(0.5 * (gram + gram.T))
    top = max(float(vals[-1]), 0.0)
    keep = vals > _RANK_RTOL * max(top, np.finfo(float).tiny)
    return vecs[:, keep]


def _pad(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Stack 1-D spectra of unequal length, padding with zeros (a zero eigenvalue adds log1p(0) =
    0)."""
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def spectra_from_scores(
    scores: np.ndarray, layer_columns: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Spectra of F = JᵀJ/k and of its layer blocks from one score matrix J (k × d).

    Returns (full eigenvalues, block eigenvalues per layer, conditional eigenvalues per layer,
    tr F). Only matrices of side min(k, d) (or d_l when a layer is narrower than k) are decomposed.
    """
    scores = np.asarray(scores, dtype=np.float64)
    k, d = scores.shape
    if d <= k:  # the d × d side is the smaller one: same spectra from the dense JᵀJ/k
        return spectra_from_matrix(scores.T @ scores / k, layer_columns)
    total = np.zeros((k, k))
    cumulative = np.zeros((k, k))
    block: dict[str, np.ndarray] = {}
    conditional: dict[str, np.ndarray] = {}
    for name, cols in layer_columns.items():
        j_l = scores[:, cols]
        gram_l = j_l @ j_l.T
        if j_l.shape[1] < k:
            block[name] = _eigvalsh_psd(j_l.T @ j_l) / k
        else:
            block[name] = _eigvalsh_psd(gram_l) / k
        basis = _range_basis(cumulative)
        resid = gram_l - basis @ (basis.T @ gram_l)
        resid = resid - (resid @ basis) @ basis.T
        scale = float(np.trace(gram_l))
        conditional[name] = _eigvalsh_psd(resid, scale, _RANK_RTOL)[: min(k, j_l.shape[1])] / k
        cumulative = cumulative + gram_l
        total = total + gram_l
    full = _eigvalsh_psd(total)[: min(k, scores.shape[1])] / k
    return full, block, conditional, float(np.trace(total) / k)


def spectra_from_matrix(
    matrix: np.ndarray, layer_columns: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Same output as :func:`spectra_from_scores`, from a dense symmetric PSD Fisher matrix
    (small d)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    block: dict[str, np.ndarray] = {}
    conditional: dict[str, np.ndarray] = {}
    earlier = np.zeros(0, dtype=int)
    for name, cols in layer_columns.items():
        f_ll = matrix[np.ix_(cols, cols)]
        block[name] = _eigvalsh_psd(f_ll)
        if earlier.size:
            f_le = matrix[np.ix_(cols, earlier)]
            f_ee = matrix[np.ix_(earlier, earlier)]
            schur = f_ll - f_le @ np.linalg.pinv(f_ee, rcond=1e-12, hermitian=True) @ f_le.T
        else:
            schur = f_ll
        conditional[name] = _eigvalsh_psd(schur, float(np.trace(f_ll)), _RANK_RTOL)
        earlier = np.concatenate([earlier, cols])
    return _eigvalsh_psd(matrix), block, conditional, float(np.trace(matrix))


@dataclass
class FisherResult:
    """Fisher information spectra at ``num_theta`` parameter draws.

    Attributes:
        eigenvalues: (num_theta, r) non-zero eigenvalues of F(θ) (descending, zero-padded).
        block_eigenvalues: layer -> (num_theta, r_l) eigenvalues of the diagonal block F_ll(θ).
        conditional_eigenvalues: layer -> (num_theta, r_l) eigenvalues of the Schur complement of
        F_ll
            given the earlier layers (conditional Fisher information of layer l).
        trace: (num_theta,) tr F(θ).
        d: number of (unconstrained) parameters.
        layers: layer -> flat column indices, in layer order.
        site_names / site_shapes: latent sites in trace order and their (unconstrained) shapes.
        theta: (num_theta, d) flat unconstrained parameter draws, or None.
        scores: (num_theta, k, d) per-sample scores when kept, else None.
        num_samples: k, the number of score rows per θ (0 for a Fisher given as matrices).
        notes: provenance (backend, empirical or model-sampled y, parameter distribution).
    """

    eigenvalues: np.ndarray
    block_eigenvalues: dict[str, np.ndarray]
    conditional_eigenvalues: dict[str, np.ndarray]
    trace: np.ndarray
    d: int
    layers: dict[str, np.ndarray]
    site_names: list[str] = field(default_factory=list)
    site_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    theta: np.ndarray | None = None
    scores: np.ndarray | None = None
    num_samples: int = 0
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def num_theta(self) -> int:
        """Number of parameter draws θ the spectra were computed at."""
        return int(self.eigenvalues.shape[0])

    def matrix(self, index: int = 0) -> np.ndarray:
        """Dense F(θ_index) = JᵀJ/k from kept scores (only for small d)."""
        if self.scores is None:
            raise SettingError("scores were not kept: call fisher(..., keep_scores=True)")
        if self.d > 5000:
            raise SettingError(f"refusing to form a dense {self.d}×{self.d} Fisher (d > 5000)")
        j = np.asarray(self.scores[index], dtype=np.float64)
        return j.T @ j / j.shape[0]

    @classmethod
    def from_scores(
        cls,
        scores: np.ndarray,
        layers: Mapping[str, np.ndarray] | None = None,
        *,
        keep_scores: bool = False,
        **extra: object,
    ) -> FisherResult:
        """Spectra from per-θ score matrices, shape (num_theta, k, d)."""
        scores = np.asarray(scores)
        if scores.ndim != 3:
            raise DataError(f"scores must have shape (num_theta, k, d), got {scores.shape}")
        if not np.all(np.isfinite(scores)):
            raise DataError("non-finite per-sample scores (log-likelihood gradient is inf or NaN)")
        d = scores.shape[2]
        cols = _check_layers(layers, d)
        parts = [spectra_from_scores(s, cols) for s in scores]
        return cls._assemble(
            parts, d, cols, scores=scores if keep_scores else None, k=scores.shape[1], **extra
        )

    @classmethod
    def from_matrices(
        cls, matrices: np.ndarray, layers: Mapping[str, np.ndarray] | None = None, **extra: object
    ) -> FisherResult:
        """Spectra from dense Fisher matrices, shape (num_theta, d, d) (analytic Fishers, small
        d)."""
        matrices = np.asarray(matrices, dtype=np.float64)
        if matrices.ndim == 2:
            matrices = matrices[None]
        if matrices.ndim != 3 or matrices.shape[1] != matrices.shape[2]:
            raise DataError(f"matrices must have shape (num_theta, d, d), got {matrices.shape}")
        if not np.all(np.isfinite(matrices)):
            raise DataError("non-finite entries in the Fisher matrices")
        d = matrices.shape[1]
        cols = _check_layers(layers, d)
        parts = [spectra_from_matrix(m, cols) for m in matrices]
        return cls._assemble(parts, d, cols, scores=None, k=0, **extra)

    @classmethod
    def _assemble(cls, parts, d, cols, *, scores, k, **extra) -> FisherResult:
        names = list(cols)
        return cls(
            eigenvalues=_pad([p[0] for p in parts]),
            block_eigenvalues={n: _pad([p[1][n] for p in parts]) for n in names},
            conditional_eigenvalues={n: _pad([p[2][n] for p in parts]) for n in names},
            trace=np.array([p[3] for p in parts]),
            d=int(d),
            layers=dict(cols),
            scores=scores,
            num_samples=int(k),
            **extra,
        )


def _check_layers(layers: Mapping[str, np.ndarray] | None, d: int) -> dict[str, np.ndarray]:
    """Validate a layer -> column-index mapping: disjoint, covering 0..d-1."""
    if layers is None:
        return {"all": np.arange(d)}
    cols = {str(k): np.asarray(v, dtype=int).ravel() for k, v in layers.items()}
    allcols = np.concatenate(list(cols.values())) if cols else np.zeros(0, dtype=int)
    if allcols.size != d or not np.array_equal(np.sort(allcols), np.arange(d)):
        raise SettingError(
            f"layers must partition the {d} parameter columns exactly once; "
            f"got {allcols.size} columns"
        )
    return cols
