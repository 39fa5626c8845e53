"""The fast paths of ranking and explaining give what the plain definitions give.

``top_n`` picks and sorts the candidates of all rows at once and rounds only them; rows with
ties at the boundary (or fewer finite items than asked for) are ranked exactly on their own.
``anchor_reasons`` reads one small block of the similarity matrix per user instead of
transposing it per call; a hybrid request computes its components once for ranking and reasons.
Each fast path is checked against the straightforward definition, on random
scores full of ties, ``-inf`` and near-equal values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from automation.recommend import Interactions
from automation.recommend import hybrid as hybrid_module
from automation.recommend.hybrid import HybridRecommender
from automation.recommend.knn import anchor_reasons
from automation.recommend.rules import _cap, top_n


def reference_top_n(
    S: np.ndarray, n: int, categories: np.ndarray, cap: int | None, decimals: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Round everything, sort every row by (score desc, index asc), keep finite, cap, cut."""
    R = np.round(S, decimals) if decimals is not None else S
    out_i = np.full((S.shape[0], n), -1, dtype=np.int64)
    out_s = np.zeros((S.shape[0], n))
    for k in range(S.shape[0]):
        idx = np.flatnonzero(np.isfinite(R[k]))
        order = idx[np.lexsort((idx, -R[k, idx]))]
        if cap is not None and (categories != "").any():
            order = _cap(order, categories, cap)  # the cap itself is unchanged
        chosen = order[:n]
        out_i[k, : len(chosen)] = chosen
        out_s[k, : len(chosen)] = R[k, chosen]
    return out_i, out_s


def noisy_scores(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    S = rng.random((rows, width))
    S[rng.random((rows, width)) < 0.2] = -np.inf  # seen, banned
    S[:, :7] = 0.5  # a block of exact ties
    S[1] = 0.25  # a whole row tied
    S[2, :] = -np.inf  # nothing left
    S[3, : width - 3] = -np.inf  # fewer finite items than asked for
    S[4, 10:20] = 0.9 + rng.random(10) * 1e-12  # equal once rounded to 10 decimals
    return S


@pytest.mark.parametrize("decimals", [None, 10])
@pytest.mark.parametrize("n", [1, 5, 12])
def test_top_n_matches_the_plain_definition(decimals: int | None, n: int) -> None:
    rng = np.random.default_rng(n)
    S = noisy_scores(rng, 40, 60)
    cats = np.array([""] * 60)
    got_i, got_s = top_n(S.copy(), n, cats, None, decimals)
    want_i, want_s = reference_top_n(S, n, cats, None, decimals)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)


def test_top_n_with_a_category_cap_matches_the_plain_definition() -> None:
    rng = np.random.default_rng(7)
    S = noisy_scores(rng, 30, 80)
    S[5:] = rng.random((25, 80))  # the cap keeps enough among the 5n candidates
    cats = np.array(["a", "b", "c", ""] * 20)
    got = top_n(S, 6, cats, 2, 10)
    want = reference_top_n(S, 6, cats, 2, 10)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_top_n_on_tiny_and_empty_inputs() -> None:
    cats = np.array(["", ""])
    idx, sc = top_n(np.array([[1.0, 2.0]]), 5, cats, None, 10)
    assert idx.tolist() == [[1, 0, -1, -1, -1]]
    assert sc[0, :2].tolist() == [2.0, 1.0]
    idx, _ = top_n(np.zeros((0, 2)), 3, cats, None)
    assert idx.shape == (0, 3)


def reference_anchor_reasons(
    profile: sp.csr_matrix, S: sp.csr_matrix, items: np.ndarray, names: np.ndarray, template: str
) -> list[list[str]]:
    """The former implementation: transpose ``S``, multiply one column at a time."""
    out: list[list[str]] = []
    St = S.T.tocsr()
    for k in range(items.shape[0]):
        p = profile[k]
        row: list[str] = []
        for i in items[k].tolist():
            if i < 0:
                row.append("")
                continue
            contrib = St[i].multiply(p)
            if contrib.nnz == 0:
                row.append("recommended for you")
                continue
            c = contrib.tocoo()
            j = int(c.col[np.lexsort((c.col, -c.data))[0]])
            row.append(template.format(anchor=str(names[j])))
        out.append(row)
    return out


def test_anchor_reasons_match_the_plain_definition() -> None:
    rng = np.random.default_rng(3)
    width = 50
    S = sp.random(width, width, density=0.15, random_state=4, format="csr")
    S.data = np.round(S.data * 4) / 4 + 0.25  # ties between anchors
    profile = sp.random(30, width, density=0.1, random_state=5, format="csr")
    profile.data = np.ceil(profile.data * 3)
    keep = np.ones(30)
    keep[7] = 0.0  # a user with no history
    profile = sp.csr_matrix(sp.diags(keep) @ profile)
    profile.eliminate_zeros()
    items = rng.integers(0, width, size=(30, 8))
    items[:, -1] = -1  # padding
    names = np.array([f"item {i}" for i in range(width)])
    got = anchor_reasons(profile, S, items, names, "bought with {anchor}")
    assert got == reference_anchor_reasons(profile, S, items, names, "bought with {anchor}")
    assert any("bought with" in r for row in got for r in row)
    assert any(r == "recommended for you" for row in got for r in row)


def small_shop() -> Interactions:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        for o in range(1 + u % 3):
            ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=int(rng.integers(60)))
            for i in rng.choice(30, size=3, replace=False).tolist():
                rows.append((f"u{u}", f"i{i}", "purchase", ts, f"o{u}-{o}"))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "type", "timestamp", "order_id"])
    segments = {f"u{u}": f"seg-{u % 2}" for u in range(40)}
    return Interactions.from_frame(frame, segments=segments)


def test_a_hybrid_request_computes_its_components_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = HybridRecommender(w_als=0.0).fit(small_shop())
    calls: list[int] = []
    original = hybrid_module.row_max_normalise

    def counted(M: np.ndarray) -> Any:
        calls.append(len(M))
        return original(M)

    monkeypatch.setattr(hybrid_module, "row_max_normalise", counted)
    model.recommend("u3", n=5)
    per_computation = len(calls)
    calls.clear()
    with model.memoize():  # the components computed once, then from the memo
        model.components(np.array([3]), np.array([1]))
        assert len(calls) == per_computation
        model.components(np.array([3]), np.array([1]))
        assert len(calls) == per_computation
    calls.clear()
    plain = model.recommend("u3", n=5)
    assert len(calls) == per_computation  # ranking and reasons shared one computation
    assert model._memo is None  # nothing kept after the request
    assert all(r.reason for r in plain)
    with model.memoize():
        model.recommend("u3", n=5)
        assert model._memo  # an outer memo (tuning) is left in place
    assert model._memo is None
