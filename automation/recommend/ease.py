"""EASE (Steck, 2019): a closed-form item-item model, ``B = I - P / diag(P)`` with
``P = (X'X + lambda I)^-1`` over the binary users x items purchase matrix and a zero diagonal.

Each column of ``B`` says how every other item predicts that one, negative weights included
(items that make another *less* likely). The dense ``items x items`` solution is pruned to the
``k`` weights of largest magnitude per row, so that it is stored and applied as a sparse matrix. :class:`EASERecommender` is the model on
its own (a reference row in the evaluation); the hybrid uses the weights as one component.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from automation.errors import ValidationError
from automation.recommend.data import Interactions
from automation.recommend.knn import NeighbourRecommender


def ease_weights(bought: sp.spmatrix, lam: float = 300.0, k: int | None = 500) -> sp.csr_matrix:
    """Items x items EASE weights (row ``i``: how item ``i`` scores the others), top-``k`` by
    magnitude per row."""
    if lam <= 0:
        raise ValidationError(f"ease_lambda={lam} should be > 0")
    X = sp.csr_matrix(bought, dtype=np.float64, copy=True)
    X.data = np.ones_like(X.data)
    n = X.shape[1]
    if n == 0:
        return sp.csr_matrix((0, 0))
    G = (X.T @ X).toarray()
    G[np.diag_indices(n)] += lam
    P = np.linalg.inv(G)
    B = P / (-np.diag(P))[None, :]
    B[np.diag_indices(n)] = 0.0
    if k is not None and 0 < k < n:
        cut = -np.partition(-np.abs(B), k - 1, axis=1)[:, k - 1 : k]
        B[np.abs(B) < cut] = 0.0
    out = sp.csr_matrix(B)
    out.eliminate_zeros()
    return out


class EASERecommender(NeighbourRecommender):
    """EASE on the binary purchase matrix: scores are the user's items times the weights.

    Parameters
    ----------
    lam : float
        The ridge penalty (larger: smoother, more popular items).
    k : int
        Weights kept per item (by magnitude).
    """

    name = "ease"
    reason = "goes with {anchor}"
    defaults = {"lam": 300.0, "k": 200}

    def _check_params(self) -> None:
        super()._check_params()
        if float(self.params["lam"]) <= 0:
            raise ValidationError(f"lam={self.params['lam']} should be > 0")
        if int(self.params["k"]) < 1:
            raise ValidationError(f"k={self.params['k']} should be >= 1")

    def _fit(self, interactions: Interactions) -> None:
        p = self.params
        self.sim_ = ease_weights(interactions.purchases(), float(p["lam"]), int(p["k"]))
