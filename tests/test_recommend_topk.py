"""The ALS batch fast path (float32 blocks, in-place masks, candidates rescored in float64) gives
what the plain path (float64 scores, rules, ``top_n``) gives: same items, same scores, same
cold-start rows, under every rule, for unknown users and with contiguous or scattered rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from automation.recommend import Interactions, Rules
from automation.recommend.als import ALSRecommender
from automation.recommend.base import DECIMALS, Recommender
from automation.recommend.topk import FactorTopN, Mask, factor_top_n


def shop(users: int = 120, items: int = 60, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, str, pd.Timestamp, str | None]] = []
    start = pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(users):
        for o in range(1 + u % 4):
            ts = start + pd.Timedelta(days=int(rng.integers(90)))
            kind = "refund" if (u + o) % 11 == 0 else "purchase"
            for i in rng.choice(items, size=1 + int(rng.integers(5)), replace=False).tolist():
                rows.append((f"u{u}", f"i{i}", kind, ts, f"o{u}-{o}"))
        if u % 7 == 0:
            rows.append((f"u{u}", f"i{u % items}", "view", start, None))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "type", "timestamp", "order_id"])
    return Interactions.from_frame(frame, segments={f"u{u}": f"seg-{u % 3}" for u in range(users)})


def plain(model: ALSRecommender, rows: np.ndarray, n: int, filter_seen: bool) -> tuple:
    return Recommender._rank(model, rows, n, filter_seen, None, None)


@pytest.mark.parametrize("filter_seen", [True, False])
@pytest.mark.parametrize("recent_days", [0.0, 30.0])
@pytest.mark.parametrize("n", [1, 10, 70])
@pytest.mark.parametrize("items", [60, 400])  # all items candidates; a threshold picks them
def test_als_fast_path_matches_the_plain_path(
    filter_seen: bool, recent_days: float, n: int, items: int
) -> None:
    inter = shop(items=items)
    model = ALSRecommender(Rules(recent_days=recent_days), factors=8, iterations=3).fit(inter)
    rows = np.array([5, -1, *range(model.context.n_users), 3, 3, -1], dtype=np.int64)
    got = model._rank(rows, n, filter_seen, None, None)
    want = plain(model, rows, n, filter_seen)
    fast = model._fast_model()
    ban = model._global_ban(None)
    _, _, todo = factor_top_n(fast, np.arange(model.context.n_users), n, ban, [], DECIMALS)
    assert todo.mean() < 0.5  # most rows are answered by the fast path
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_fast_path_hands_back_rows_it_cannot_prove() -> None:
    """Exact ties in float32 (identical items) and all-negative (cold) rows go the plain way."""
    V = np.full((200, 2), 0.1, dtype=np.float32)
    V[:10] = 1.0  # ten identical items: more ties than candidates (n + 4)
    U = np.array([[1.0, 1.0], [-1.0, -1.0], [0.5, 2.0]], dtype=np.float32)
    fast = FactorTopN.build(U, V, np.zeros(200))
    banned = np.zeros(200, dtype=bool)
    idx, _, todo = factor_top_n(fast, np.arange(3), 2, banned, [], DECIMALS)
    assert todo.tolist() == [True, True, True]  # ties at the boundary; cold; ties again
    fast = FactorTopN.build(U, V, np.linspace(1e-3, 0, 200))  # a bias separates them
    idx, _, todo = factor_top_n(fast, np.arange(3), 2, banned, [], DECIMALS)
    assert todo.tolist() == [False, True, False]
    assert idx[0].tolist() == [0, 1]


def test_masks_from_scattered_and_contiguous_rows_agree() -> None:
    rng = np.random.default_rng(1)
    U = rng.standard_normal((50, 4)).astype(np.float32)
    V = rng.standard_normal((40, 4)).astype(np.float32)
    seen = sp.random(50, 40, density=0.2, random_state=2, format="csr")
    fast = FactorTopN.build(U, V, np.zeros(40))
    banned = np.zeros(40, dtype=bool)
    banned[[0, 7]] = True
    rows = np.arange(50)
    a = factor_top_n(fast, rows, 5, banned, [Mask(seen)], DECIMALS, block=16)
    perm = rng.permutation(50)
    b = factor_top_n(fast, perm, 5, banned, [Mask(seen)], DECIMALS, block=16)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[perm], y)
    chosen = a[0][~a[2]]
    assert not np.isin(chosen, [0, 7]).any()
    for k in np.flatnonzero(~a[2]).tolist():
        assert not set(a[0][k].tolist()) & set(seen[k].indices.tolist())
