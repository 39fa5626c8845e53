"""The hybrid's own blend for cold customers (``cold``: parameters for customers with at most
``cold_orders`` orders), and its tuning on the validation window's cold customers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from automation.errors import ValidationError
from automation.recommend import Recommender
from automation.recommend.data import Interactions
from automation.recommend.hybrid import HybridRecommender
from automation.recommend.splits import ProtocolData
from automation.recommend.tuning import _ascend_cold
from tests.test_recommend_rerank import orders


def shop() -> Interactions:
    """Thirty customers with four orders each, thirty with two (the second on day 45), as of
    day 60: items i0..i11."""
    rng = np.random.default_rng(1)
    rows: list[tuple[str, list[str], float]] = []
    for u in range(60):
        days = (3.0, 14.0, 25.0, 50.0) if u < 30 else (10.0 + u % 30, 45.0)
        for day in days:
            rows.append((f"u{u}", [f"i{v}" for v in rng.choice(12, 3, replace=False)], day))
    return orders(rows, {f"u{u}": f"s{u % 3}" for u in range(60)})


BASE = {"w_als": 0.0, "w_content": 0.0, "w_repeat": 0.0, "w_cf": 1.0, "w_trend": 0.25}
COLD = {"w_cf": 0.0, "w_repeat": 1.0, "w_basket": 0.0}


def test_cold_customers_get_their_own_blend_and_the_others_keep_theirs() -> None:
    inter = shop()
    warm_users = [f"u{u}" for u in range(30)]
    cold_users = [f"u{u}" for u in range(30, 60)]
    plain = HybridRecommender(**BASE).fit(inter)
    as_cold = HybridRecommender(**{**BASE, **COLD}).fit(inter)
    both = HybridRecommender(**BASE, cold=COLD).fit(inter)
    assert (np.diff(both.context.profile.indptr)[: len(warm_users)] > 0).all()
    users = warm_users + cold_users
    got = both.recommend(users, n=4, filter_seen=False)
    assert got[:30] == plain.recommend(warm_users, n=4, filter_seen=False)
    assert got[30:] == as_cold.recommend(cold_users, n=4, filter_seen=False)
    assert got[30:] != plain.recommend(cold_users, n=4, filter_seen=False)
    one = both.recommend("u45", n=4, filter_seen=False)  # a single request, reasons and all
    assert one == as_cold.recommend("u45", n=4, filter_seen=False)
    again = "bought before: time to buy again"
    assert again in {r.reason for r in one}  # the reasons come from the cold blend too
    assert again not in {r.reason for r in plain.recommend("u45", n=4, filter_seen=False)}
    for n_orders in (0, 4):  # the threshold moves users between the two blends
        moved = HybridRecommender(**BASE, cold=COLD, cold_orders=n_orders).fit(inter)
        want = as_cold if n_orders == 4 else plain
        assert moved.recommend(users, n=4, filter_seen=False) == want.recommend(
            users, n=4, filter_seen=False
        )


def test_a_component_weighted_only_for_cold_customers_is_fitted_and_saved(
    tmp_path: Path,
) -> None:
    inter = shop()
    model = HybridRecommender(**{**BASE, "w_basket": 0.0}, cold={"w_basket": 1.0}).fit(inter)
    assert model.basket_.nnz > 0
    path = tmp_path / "cold.npz"
    model.save(path)
    again = Recommender.load(path)
    assert isinstance(again, HybridRecommender)
    assert again.params["cold"] == {"w_basket": 1.0}
    users = [f"u{u}" for u in range(60)]
    assert again.recommend(users, n=4) == model.recommend(users, n=4)


def test_cold_parameters_are_checked() -> None:
    with pytest.raises(ValidationError, match="cold"):
        HybridRecommender(cold={"als_factors": 8})
    with pytest.raises(ValidationError, match="w_cf"):
        HybridRecommender(cold={"w_cf": -1.0})
    with pytest.raises(ValidationError, match="cold_orders"):
        HybridRecommender(cold_orders=-1)


def test_the_cold_ascent_changes_only_what_helps_the_cold_customers() -> None:
    inter = shop()
    model = HybridRecommender(**BASE).fit(inter)
    rows = np.arange(inter.n_users, dtype=np.int64)
    cold = model.context.n_orders[rows] <= 2
    assert cold.sum() == 30
    # the cold customers' truth: their own first item (a repeat), which only `repeat` ranks
    truth = model.context.profile[rows].copy()
    truth.data[:] = 1.0
    data = ProtocolData(rows, truth, cold, np.array(["s0"] * len(rows)))
    chosen = {**model.params}
    found, tried = _ascend_cold(model, data, "repeat", 4, chosen)
    assert tried > 1
    assert found is not None and float(found["w_repeat"]) > 0
    assert model.params["cold"] is None  # the model is left as it was
    nobody = ProtocolData(rows, truth, np.zeros(len(rows), dtype=bool), data.segments)
    assert _ascend_cold(model, nobody, "repeat", 4, chosen) == (None, 0)


def test_rankers_learned_on_the_cold_customers_alone(tmp_path: Path) -> None:
    inter = shop()
    model = HybridRecommender(**BASE, ranker_days=20.0, cold={"rerank": "new-cold"}).fit(inter)
    for mode in ("new", "all"):
        assert f"{mode}_coef" in model.ranker_ and f"{mode}-cold_coef" in model.ranker_
        # held out: the cold customers' day-45 orders and the warm ones' day-50 orders
        assert not np.allclose(model.ranker_[f"{mode}-cold_coef"], model.ranker_[f"{mode}_coef"])
    users = [f"u{u}" for u in range(60)]
    plain = model.recommend(users, n=4)
    model.params["cold"] = None
    assert model.recommend(users, n=4) != plain  # the cold ranker changes the cold lists
    assert model.recommend(users[:30], n=4) == plain[:30]
    model.params["cold"] = {"rerank": "new-cold"}
    path = tmp_path / "ranked.npz"
    model.save(path)
    assert Recommender.load(path).recommend(users, n=4) == plain


def test_a_cold_blend_that_does_not_hold_out_is_dropped() -> None:
    inter = shop()
    model = HybridRecommender(**BASE).fit(inter)
    rows = np.arange(inter.n_users, dtype=np.int64)
    cold = model.context.n_orders[rows] <= 2
    # every cold customer's truth is one item drawn at random: nothing to learn
    rng = np.random.default_rng(3)
    truth = sp.csr_matrix(
        (np.ones(len(rows)), (rows, rng.integers(0, inter.n_items, len(rows)))),
        shape=(len(rows), inter.n_items),
    )
    data = ProtocolData(rows, truth, cold, np.array(["s0"] * len(rows)))
    found, tried = _ascend_cold(model, data, "repeat", 4, {**model.params})
    assert tried > 1 and found is None
