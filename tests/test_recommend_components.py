"""The hybrid's newer components on tiny data: EASE weights against the closed form,
order-to-order transitions, recency-weighted anchors, and a save/load round trip with them on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from automation.recommend import Interactions, Recommender
from automation.recommend.ease import ease_weights
from automation.recommend.hybrid import HybridRecommender
from automation.recommend.sequence import recent_profile, transition_similarity


def orders(rows: list[tuple[str, list[str], int]]) -> Interactions:
    """Interactions from (user, items of one order, day) triples."""
    start = pd.Timestamp("2024-01-01", tz="UTC")
    events = [
        (u, i, "purchase", start + pd.Timedelta(days=day), f"{u}-{day}")
        for u, items, day in rows
        for i in items
    ]
    frame = pd.DataFrame(events, columns=["user_id", "item_id", "type", "timestamp", "order_id"])
    return Interactions.from_frame(frame, segments={u: "seg-a" for u, _, _ in rows})


def test_ease_weights_are_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    X = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(float))
    G = (X.T @ X).toarray() + 5.0 * np.eye(12)
    P = np.linalg.inv(G)
    want = -P / np.diag(P)[None, :]
    np.fill_diagonal(want, 0.0)
    got = ease_weights(X, 5.0, None).toarray()
    np.testing.assert_allclose(got, want, atol=1e-12)
    pruned = ease_weights(X, 5.0, 3)
    assert (np.diff(pruned.indptr) <= 3).all()
    for r in range(12):  # the kept weights are the row's largest in magnitude
        kept = np.abs(pruned[r].toarray().ravel())
        assert kept.max() == np.abs(want[r]).max()


def test_transitions_point_forward_in_time() -> None:
    inter = orders(
        [("u1", ["a"], 0), ("u1", ["b"], 5), ("u2", ["a"], 1), ("u2", ["b"], 9), ("u3", ["c"], 2)]
    )
    S = transition_similarity(inter, k=10, gap=1, shrink=0.0)
    pos = inter.catalogue.index()
    assert S[pos["a"], pos["b"]] > 0
    assert S[pos["b"], pos["a"]] == 0
    assert S[pos["c"]].nnz == 0


def test_recent_profile_weighs_the_last_basket_most() -> None:
    ages = sp.csr_matrix(np.array([[1.0, 11.0, 0.0], [0.0, 0.0, 4.0]]))
    got = recent_profile(ages, 10.0).toarray()
    np.testing.assert_allclose(got, [[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    flat = recent_profile(ages, None).toarray()
    np.testing.assert_allclose(flat, [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_hybrid_with_ease_and_next_round_trips(tmp_path: Path) -> None:
    rows = [
        (f"u{u}", [f"i{(u + d) % 9}", f"i{(2 * u + d) % 9}"], d * 7)
        for u in range(12)
        for d in range(3)
    ]
    inter = orders(rows)
    model = HybridRecommender(w_ease=1.0, w_next=1.0, w_als=0.0).fit(inter)
    assert model.ease_.nnz and model.next_.nnz
    path = tmp_path / "hybrid.npz"
    model.save(path)
    again = Recommender.load(path)
    users = [f"u{u}" for u in range(12)]
    assert model.recommend(users, n=4) == again.recommend(users, n=4)
    reasons = {r.reason for recs in model.recommend(users, n=4) for r in recs}
    assert reasons
