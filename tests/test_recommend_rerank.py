"""The hybrid's priors for customers with little history and its learned re-ranker, on tiny data:
early repeat orders per segment, the held-out days the ranker learns from, what it learns, and a
save/load round trip with it on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from automation.errors import ValidationError
from automation.recommend import Interactions, Recommender
from automation.recommend import rerank as rerank_module
from automation.recommend.context import NO_SEGMENT
from automation.recommend.hybrid import COMPONENTS, TREND_HALF_LIVES, HybridRecommender
from automation.recommend.priors import early_orders, order_rank, repeat_rates, rows_for
from automation.recommend.rerank import before, feature_names

START = pd.Timestamp("2024-01-01", tz="UTC")


def orders(rows: list[tuple[str, list[str], float]], segments: dict[str, str]) -> Interactions:
    """Interactions from (user, items of one order, day) triples, as of day 60."""
    events = [
        (u, i, "purchase", START + pd.Timedelta(days=day), f"{u}-{day}")
        for u, items, day in rows
        for i in items
    ]
    frame = pd.DataFrame(events, columns=["user_id", "item_id", "type", "timestamp", "order_id"])
    return Interactions.from_frame(frame, segments=segments, as_of=START + pd.Timedelta(days=60))


def test_early_orders_count_second_orders_per_segment() -> None:
    rows = [
        ("a", ["x"], 0),
        ("a", ["y"], 5),
        ("a", ["z"], 9),
        ("b", ["x"], 1),
        ("b", ["z"], 3),
        ("c", ["w"], 2),
    ]
    inter = orders(rows, {"a": "s1", "b": "s2", "c": "s2"})
    pos = inter.catalogue.index()
    rank = order_rank(inter)
    by_item = {inter.catalogue.item_ids[i]: r for i, r in zip(inter.item, rank, strict=True)}
    assert rank[inter.user == inter.user_ids.tolist().index("a")].tolist() == [1, 2, 3]
    assert by_item["w"] == 1
    codes = np.array([0, 1, 1])  # a: s1, b: s2, c: s2 (positions in the sorted ids)
    prior = early_orders(inter, codes, 2, half_life=None, max_rank=2, smooth=0.0)
    assert prior.shape == (3, inter.n_items)
    everyone, s1, s2 = prior
    assert everyone[pos["y"]] == everyone[pos["z"]] == 0.5  # a's 2nd order y, b's 2nd order z
    assert everyone[pos["x"]] == everyone[pos["w"]] == 0.0  # first orders never count
    assert s1[pos["y"]] == 1.0 and s1[pos["z"]] == 0.0
    assert s2[pos["z"]] == 1.0
    smoothed = early_orders(inter, codes, 2, half_life=None, max_rank=2, smooth=1.0)
    assert 0.0 < smoothed[1, pos["z"]] < 0.5  # shrunk towards everyone's share
    got = rows_for(prior, np.array([NO_SEGMENT, 1]))
    np.testing.assert_allclose(got, [everyone / 0.5, s2])


def test_before_keeps_the_older_events_as_of_then() -> None:
    inter = orders([("a", ["x"], 10), ("a", ["y"], 50), ("b", ["x"], 45)], {})
    past = before(inter, 12.0)  # as of day 48: drops day 50
    assert past.as_of == START + pd.Timedelta(days=48)
    assert sorted(past.catalogue.item_ids[past.item].tolist()) == ["x", "x"]
    np.testing.assert_allclose(sorted(past.age_days.tolist()), [3.0, 38.0])
    assert past.n_users == inter.n_users and past.n_items == inter.n_items


def trending_shop() -> Interactions:
    """Forty customers buy from ten items for 40 days; a new item ``hot`` is bought by five of
    them on days 36-40, and by every customer in the last 20 days."""
    rng = np.random.default_rng(0)
    rows: list[tuple[str, list[str], float]] = []
    for u in range(40):
        for day in (2 + u % 5, 15 + u % 7, 28 + u % 3):
            rows.append((f"u{u}", [f"i{v}" for v in rng.choice(10, 3, replace=False)], day))
        if u < 5:
            rows.append((f"u{u}", ["hot"], 36 + u))
        rows.append((f"u{u}", ["hot", f"i{rng.integers(10)}"], 45 + u % 10))
    return orders(rows, {f"u{u}": f"s{u % 2}" for u in range(40)})


def test_ranker_learns_the_trend_from_the_held_out_days(tmp_path: Path) -> None:
    inter = trending_shop()
    params = {"w_als": 0.0, "w_trend": 0.1, "w_cf": 1.0, "ranker_days": 20.0}
    model = HybridRecommender(rerank="new", **params).fit(inter)
    names = feature_names(COMPONENTS)
    for mode in ("new", "all"):
        coef = model.ranker_[f"{mode}_coef"]
        assert coef.shape == (len(names),)
        assert coef[names.index("trend")] > 0  # `hot` was bought by everyone it was shown to
    users = [f"u{u}" for u in range(40)]
    seen: dict[str, set[str]] = {u: set() for u in users}
    frame = inter.to_frame()
    for u, i in zip(frame["user_id"], frame["item_id"], strict=True):
        seen[u].add(i)
    for user, recs in zip(users, model.recommend(users, n=5), strict=True):
        assert recs and not {r.item_id for r in recs} & seen[user]  # filter_seen still holds
    path = tmp_path / "ranked.npz"
    model.save(path)
    again = Recommender.load(path)
    assert isinstance(again, HybridRecommender)
    assert again.ranker_.keys() == model.ranker_.keys()
    assert model.recommend(users, n=5) == again.recommend(users, n=5)
    model.params["rerank"] = "none"
    off = model.recommend(users, n=5)
    model.params["rerank"] = "new"
    assert off != model.recommend(users, n=5)  # the ranker changes the lists


def test_ranker_pools_the_examples_of_earlier_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ranker_windows=2``: the window of ``ranker_days`` before the last one adds its customers'
    candidates to the same regression (each window from a copy fitted on the events before it)."""
    sizes: dict[int, dict[str, int]] = {}
    learn = rerank_module._learn

    def counting(name: str, X: np.ndarray, y: np.ndarray, c: float) -> dict[str, np.ndarray]:
        sizes.setdefault(windows, {})[name] = len(y)
        return learn(name, X, y, c)

    monkeypatch.setattr(rerank_module, "_learn", counting)
    params = {"w_als": 0.0, "w_trend": 0.1, "w_cf": 1.0, "ranker_days": 20.0}
    for windows in (1, 2):
        model = HybridRecommender(ranker_windows=windows, **params).fit(trending_shop())
        assert {"new_coef", "all_coef"} <= model.ranker_.keys()
    for mode in ("new", "all"):
        assert sizes[2][mode] > sizes[1][mode] > 0
    with pytest.raises(ValidationError, match="ranker_windows"):
        HybridRecommender(ranker_windows=0)


def test_rerank_and_history_parameters_are_checked() -> None:
    with pytest.raises(ValidationError, match="rerank"):
        HybridRecommender(rerank="maybe")
    with pytest.raises(ValidationError, match="history"):
        HybridRecommender(history="days")
    with pytest.raises(ValidationError, match="early_rank"):
        HybridRecommender(early_rank=1)


def test_repeat_rates_per_segment_and_the_segment_repeat_component() -> None:
    rows = [
        ("a", ["x", "y"], 0),
        ("a", ["x"], 10),  # a buys x again, y once
        ("b", ["x", "y"], 1),
        ("b", ["y"], 12),  # b buys y again, x once
        ("c", ["x", "y"], 2),
        ("c", ["x"], 20),  # c (like a) buys x again
    ]
    inter = orders(rows, {"a": "s1", "b": "s2", "c": "s1"})
    pos = inter.catalogue.index()
    codes = np.array([0, 1, 0])  # a: s1, b: s2, c: s1
    rates = repeat_rates(inter, codes, 2, smooth=0.0)
    assert rates.shape == (3, inter.n_items)
    everyone, s1, s2 = rates
    assert everyone[pos["x"]] == pytest.approx(2 / 3) and everyone[pos["y"]] == pytest.approx(1 / 3)
    assert s1[pos["x"]] == 1.0 and s1[pos["y"]] == 0.0
    assert s2[pos["x"]] == 0.0 and s2[pos["y"]] == 1.0
    smoothed = repeat_rates(inter, codes, 2, smooth=3.0)
    assert s2[pos["y"]] > smoothed[2, pos["y"]] > everyone[pos["y"]]  # shrunk towards everyone
    assert smoothed[0, pos["y"]] == pytest.approx((1 + 3 * 0.5) / (3 + 3))  # overall 3 of 6
    # the component: a customer's own items, ordered by how often their segment buys them again
    model = HybridRecommender(
        w_segrepeat=1.0, repeat_smooth=0.0, w_repeat=0.0, w_als=0.0, w_cf=0.0, w_basket=0.0,
        w_content=0.0, w_next=0.0, w_segment=0.0, w_trend=0.0,
    ).fit(inter)  # fmt: skip
    for user, segment in (("a", "s1"), ("b", "s2")):
        rows_ = model.context.rows_of([user])
        seg = model.context.segments_for(rows_)
        got = model.components(rows_, seg)["segrepeat"][0]
        assert (got[pos["x"]] > got[pos["y"]]) == (segment == "s1")
        ids = [r.item_id for r in model.recommend(user, n=2, filter_seen=False)]
        assert ids[0] == ("x" if segment == "s1" else "y")


def test_trend_half_life_chosen_among_the_fitted_ones_and_saved(tmp_path: Path) -> None:
    inter = trending_shop()
    model = HybridRecommender(w_trend=1.0, w_als=0.0, trend_half_life=5.0).fit(inter)
    assert sorted(model.trends_) == sorted({*TREND_HALF_LIVES, 5.0})
    short = model.trend_.copy()
    model.params["trend_half_life"] = 14.0
    assert not np.allclose(short, model.trend_)  # another half-life, another trend
    pos = inter.catalogue.index()
    assert model.trend_[pos["hot"]] == model.trend_.max()  # bought by everyone lately
    path = tmp_path / "trends.npz"
    model.save(path)
    again = Recommender.load(path)
    assert isinstance(again, HybridRecommender)
    for hl in model.trends_:
        again.params["trend_half_life"] = hl
        model.params["trend_half_life"] = hl
        np.testing.assert_allclose(again.trend_, model.trend_)
    with pytest.raises(ValidationError, match="segtrend_half_life"):
        HybridRecommender(segtrend_half_life=0.0)


def test_a_request_reads_its_profile_rows_once(monkeypatch: pytest.MonkeyPatch) -> None:
    inter = trending_shop()
    model = HybridRecommender(rerank="new", ranker_days=20.0, w_next=0.5, w_ease=0.5).fit(inter)
    calls: list[int] = []
    original = type(model.context).profile_rows

    def counted(ctx: object, rows: np.ndarray) -> object:
        calls.append(len(rows))
        return original(ctx, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(type(model.context), "profile_rows", counted)
    first = model.recommend("u3", n=5)
    assert calls == [1]  # components, history, re-ranker and reasons share it
    assert model.recommend("u3", n=5) == first and calls == [1, 1]  # nothing kept after
    assert all(r.reason for r in first)
