"""Tests of the seeded shop simulator (automation.simulate)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from automation.errors import InputError, ValidationError
from automation.simulate import (
    EVENT_COLUMNS,
    EVENT_TYPES,
    SCENARIOS,
    Simulation,
    read_simulation,
    simulate,
    write_simulation,
)

START = pd.Timestamp("2024-01-01", tz="UTC")


def _day(events: pd.DataFrame) -> pd.Series:
    return (events["timestamp"] - START).dt.days


def _first_persona(sim: Simulation) -> pd.Series:
    """Persona of each user's first truth row, indexed by user id (str)."""
    first = sim.truth.groupby("user_id", observed=True)["persona"].first()
    return pd.Series(first.astype("str").to_numpy(), index=first.index.astype("str"))


def _with_persona(sim: Simulation) -> pd.DataFrame:
    ev = sim.events
    persona = _first_persona(sim)
    return ev.assign(day=_day(ev), persona=ev["user_id"].astype("str").map(persona).to_numpy())


@pytest.fixture(scope="module")
def small() -> Simulation:
    return simulate(n_users=2_000, days=30, seed=11)


@pytest.fixture(scope="module")
def shifted() -> Simulation:
    return simulate(n_users=10_000, days=60, seed=5, scenarios=list(SCENARIOS))


# --- determinism and schema ------------------------------------------------------------------


def test_same_arguments_give_identical_events() -> None:
    a = simulate(n_users=2_000, days=30, seed=3, scenarios=["promo", "split"])
    b = simulate(n_users=2_000, days=30, seed=3, scenarios=["promo", "split"])
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert a.events.to_csv(index=False) == b.events.to_csv(index=False)
    assert a.scenarios == b.scenarios


def test_other_seed_gives_other_events(small: Simulation) -> None:
    other = simulate(n_users=2_000, days=30, seed=12)
    assert not small.events["timestamp"].equals(other.events["timestamp"])
    assert other.events["event_id"].iloc[0] == "sim-12-0"


def test_columns_and_dtypes(small: Simulation) -> None:
    ev = small.events
    assert tuple(ev.columns) == EVENT_COLUMNS
    assert str(ev["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert ev["quantity"].dtype == np.int64
    for col in ("price", "revenue", "rating"):
        assert ev[col].dtype == np.float64
    assert pd.api.types.is_string_dtype(ev["event_id"])
    for col in ("user_id", "type", "item_id", "category", "session_id", "order_id"):
        assert isinstance(ev[col].dtype, pd.CategoricalDtype)
        assert pd.api.types.is_string_dtype(ev[col].cat.categories)
    assert ev["event_id"].is_unique
    assert ev["event_id"].iloc[0] == "sim-11-0"
    assert ev["user_id"].astype("str").str.fullmatch(r"u\d{7}").all()
    assert ev["timestamp"].is_monotonic_increasing
    assert ev[["user_id", "type", "item_id", "category", "session_id"]].notna().all().all()
    assert list(small.items.columns) == ["item_id", "name", "category", "price"]
    assert list(small.truth.columns) == ["user_id", "day", "persona"]


def test_every_type_present_and_times_in_horizon(small: Simulation) -> None:
    ev = small.events
    assert set(ev["type"].astype("str")) == set(EVENT_TYPES)
    day = _day(ev)
    assert day.min() >= 0
    assert day.max() <= 29


def test_about_ten_events_per_user_per_ninety_days() -> None:
    sim = simulate(n_users=5_000, days=90, seed=2)
    assert 40_000 < len(sim.events) < 60_000
    tuned = simulate(n_users=5_000, days=90, seed=2, target_events=20_000)
    assert 16_000 < len(tuned.events) < 24_000


def test_quantity_price_revenue_rating(small: Simulation) -> None:
    ev = small.events
    assert (ev["quantity"] >= 1).all()
    assert (ev["price"] > 0).all()
    money = ev["type"].isin(["purchase", "refund"])
    assert np.array_equal(
        ev.loc[money, "revenue"], ev.loc[money, "quantity"] * ev.loc[money, "price"]
    )
    assert (ev.loc[~money, "revenue"] == 0).all()
    rated = ev["type"] == "rating"
    assert ev.loc[rated, "rating"].between(1, 5).all()
    assert (ev.loc[rated, "rating"] % 1 == 0).all()
    assert ev.loc[~rated, "rating"].isna().all()
    prices = small.items.set_index("item_id")["price"]
    assert np.allclose(ev["price"], ev["item_id"].astype("str").map(prices))


def test_orders_and_refunds(small: Simulation) -> None:
    ev = small.events
    has_order = ev["type"].isin(["purchase", "refund"])
    assert ev.loc[has_order, "order_id"].notna().all()
    assert ev.loc[~has_order, "order_id"].isna().all()
    buys = ev[ev["type"] == "purchase"]
    per_session = buys.groupby("session_id", observed=True)["order_id"].nunique()
    assert (per_session == 1).all()
    per_order = buys.groupby("order_id", observed=True)[["session_id", "user_id"]].nunique()
    assert (per_order == 1).all().all()
    refunds = ev[ev["type"] == "refund"].astype({"order_id": "str", "user_id": "str"})
    assert len(refunds) > 0
    lines = buys.astype({"order_id": "str", "user_id": "str"})[
        ["order_id", "user_id", "item_id", "timestamp"]
    ]
    matched = refunds.merge(lines, on=["order_id", "user_id", "item_id"], suffixes=("", "_buy"))
    assert set(matched["event_id"]) == set(refunds["event_id"])
    assert (matched["timestamp_buy"] < matched["timestamp"]).all()


def test_funnel_order_within_sessions(small: Simulation) -> None:
    ev = small.events
    browse = ev[ev["type"].isin(["view", "cart", "remove", "purchase"])]
    first_type = browse.groupby("session_id", observed=True)["type"].first()
    assert (first_type.astype("str") == "view").all()
    span = browse.groupby("session_id", observed=True)["timestamp"].agg(["min", "max"])
    assert ((span["max"] - span["min"]) < pd.Timedelta(hours=12)).all()
    counts = ev["type"].value_counts()
    assert counts["view"] > counts["cart"] > counts["purchase"] > counts["refund"]


# --- personas, activity, catalogue -----------------------------------------------------------


def test_truth_covers_every_user(small: Simulation) -> None:
    truth = small.truth
    assert truth["user_id"].nunique() == 2_000
    assert truth["day"].between(0, 29).all()
    names = set(truth["persona"].astype("str"))
    assert {"loyal_high_spender", "bargain_hunter", "browser", "new_customer", "dormant"} <= names
    assert set(small.events["user_id"].astype("str")) <= set(truth["user_id"].astype("str"))


def test_new_customers_appear_late_and_dormant_go_quiet(small: Simulation) -> None:
    ev = _with_persona(small)
    new = ev[ev["persona"] == "new_customer"]
    assert len(new) > 0
    assert new.groupby("user_id", observed=True)["day"].min().min() >= 24
    dormant = ev[ev["persona"] == "dormant"]
    early_per_day = (dormant["day"] < 4).sum() / 4  # every dormant user is active until day 4
    late_per_day = (dormant["day"] >= 16).sum() / 14
    assert late_per_day < 0.1 * early_per_day


def test_personas_behave_as_described(shifted: Simulation) -> None:
    ev = _with_persona(shifted)
    ev = ev[ev["day"] < 20]  # before any shift
    views = ev[ev["type"] == "view"].groupby("persona").size()
    buys = ev[ev["type"] == "purchase"]
    conversion = buys.groupby("persona").size() / views
    assert conversion["loyal_high_spender"] > 2 * conversion["bargain_hunter"]
    assert conversion["bargain_hunter"] > 2 * conversion["browser"]
    price = buys.groupby("persona")["price"].median()
    assert price["loyal_high_spender"] > 3 * price["bargain_hunter"]
    refund_rate = (
        ev[ev["type"] == "refund"].groupby("persona").size() / buys.groupby("persona").size()
    )
    assert refund_rate["refunder"] > 0.2 > 0.05 > refund_rate["loyal_high_spender"]


def test_activity_is_heavy_tailed(shifted: Simulation) -> None:
    per_user = shifted.events["user_id"].value_counts()
    top = per_user.sort_values(ascending=False)
    share_top_5pct = top.iloc[: len(top) // 20].sum() / top.sum()
    assert share_top_5pct > 0.2
    assert top.iloc[0] > 10 * top.median()


def test_catalogue_price_levels_and_popularity(shifted: Simulation) -> None:
    items = shifted.items
    assert 8 <= items["category"].nunique() <= 12
    assert items["item_id"].is_unique
    medians = items.groupby("category")["price"].median()
    assert medians.max() > 10 * medians.min()
    views = shifted.events[shifted.events["type"] == "view"]
    per_item = views.groupby(["category", "item_id"], observed=True).size()
    top_share = per_item.groupby(level=0).max() / per_item.groupby(level=0).sum()
    n_per_cat = items.groupby("category").size()
    assert (top_share > 3 / n_per_cat.reindex(top_share.index.astype("str")).to_numpy()).all()


# --- scenarios -------------------------------------------------------------------------------


def _record(sim: Simulation, name: str) -> dict[str, object]:
    return next(r for r in sim.scenarios if r["name"] == name)


def test_scenarios_are_recorded(shifted: Simulation) -> None:
    assert [r["name"] for r in shifted.scenarios] == [
        "emerging",
        "split",
        "churn",
        "promo",
        "merge",
    ]
    for record in shifted.scenarios:
        assert {"name", "day", "personas", "description"} <= set(record)
    assert _record(shifted, "promo")["day"] == 36
    assert _record(shifted, "churn")["personas"] == ["loyal_high_spender"]


def test_churn_drops_events(shifted: Simulation) -> None:
    day = int(_record(shifted, "churn")["day"])  # type: ignore[call-overload]
    ev = _with_persona(shifted)
    loyal = ev[ev["persona"] == "loyal_high_spender"]
    before = (loyal["day"] < day).sum() / day
    after = (loyal["day"] >= day).sum() / (60 - day)
    assert after < 0.2 * before
    truth = shifted.truth
    churned = truth[truth["persona"] == "churned"]
    assert len(churned) > 0
    assert (churned["day"] == day).all()


def test_promo_raises_purchase_rate() -> None:
    sim = simulate(n_users=10_000, days=60, seed=8, scenarios=["promo"])
    day = int(_record(sim, "promo")["day"])  # type: ignore[call-overload]
    ev = _with_persona(sim)
    buys = ev[(ev["type"] == "purchase") & (ev["persona"] == "bargain_hunter")]
    before = (buys["day"] < day).sum() / day
    after = (buys["day"] >= day).sum() / (60 - day)
    assert after > 2 * before
    others = ev[(ev["type"] == "view") & (ev["persona"] == "browser")]
    ratio = ((others["day"] >= day).sum() / (60 - day)) / ((others["day"] < day).sum() / day)
    assert 0.7 < ratio < 1.4


def test_emerging_customers_arrive_and_buy_gifts(shifted: Simulation) -> None:
    record = _record(shifted, "emerging")
    day = int(record["day"])  # type: ignore[call-overload]
    ev = _with_persona(shifted)
    new = ev[ev["persona"] == "emerging_gift_buyer"]
    assert len(new) > 0
    assert new["day"].min() >= day
    buys = new[new["type"] == "purchase"]
    assert (buys["category"] == "gifts").mean() > 0.5
    others = ev[(ev["persona"] != "emerging_gift_buyer") & (ev["type"] == "purchase")]
    assert (others["category"] == "gifts").mean() < 0.15
    truth = shifted.truth
    rows = truth[truth["persona"] == "emerging_gift_buyer"]
    assert len(rows) == record["n_users"]
    assert (rows["day"] >= day).all()


def test_split_diverges_prices(shifted: Simulation) -> None:
    day = int(_record(shifted, "split")["day"])  # type: ignore[call-overload]
    truth = shifted.truth
    premium = set(truth.loc[truth["persona"] == "bargain_hunter_premium", "user_id"].astype("str"))
    assert len(premium) > 0
    ev = _with_persona(shifted)
    hunters = ev[(ev["persona"] == "bargain_hunter") & ev["type"].isin(["view", "purchase"])]
    is_premium = hunters["user_id"].astype("str").isin(premium)
    after = hunters["day"] >= day
    price = hunters.groupby([is_premium.to_numpy(), after.to_numpy()])["price"].median()
    assert price[(True, True)] > 2 * price[(False, True)]
    assert price[(True, False)] < 1.5 * price[(False, False)]


def test_merge_converges(shifted: Simulation) -> None:
    day = int(_record(shifted, "merge")["day"])  # type: ignore[call-overload]
    ev = _with_persona(shifted)
    rows = ev[ev["persona"].isin(["browser", "refunder"])]

    def cart_per_view(part: pd.DataFrame) -> pd.Series:
        n = part.groupby(["persona", "type"], observed=True).size().unstack(fill_value=0)
        return n["cart"] / n["view"]

    before = cart_per_view(rows[rows["day"] < day - 5])
    after = cart_per_view(rows[rows["day"] >= day])
    assert abs(before["refunder"] - before["browser"]) > 0.1
    assert abs(after["refunder"] - after["browser"]) < 0.05
    merged = shifted.truth[shifted.truth["persona"] == "merged_browser_refunder"]
    assert (merged["day"] == day).all()
    assert shifted.persona_on(day - 1).isin(["browser", "refunder"]).sum() == len(merged)


def test_scenario_day_can_be_chosen() -> None:
    sim = simulate(n_users=500, days=30, seed=1, scenarios=["churn@10"])
    assert sim.scenarios[0]["day"] == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scenarios": ["flood"]}, "promo, churn, emerging, merge, split"),
        ({"scenarios": ["churn", "churn"]}, "more than once"),
        ({"scenarios": ["churn@40"]}, "day should be in 1..29"),
        ({"n_users": 0}, "n_users=0"),
        ({"days": -1}, "days=-1"),
        ({"n_items": 3}, "n_items=3"),
        ({"start": "not a date"}, "start="),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"n_users": 100, "days": 30, **kwargs}
    with pytest.raises(ValidationError, match=match):
        simulate(**args)  # type: ignore[arg-type]


# --- writers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_writers_round_trip(small: Simulation, tmp_path: Path, fmt: str) -> None:
    paths = write_simulation(small, tmp_path / "out", fmt=fmt)
    assert paths["events"] == tmp_path / "out" / f"events.{fmt}"
    assert all(p.is_file() for p in paths.values())
    back = read_simulation(tmp_path / "out", fmt=fmt)
    ev, orig = back.events, small.events
    assert tuple(ev.columns) == EVENT_COLUMNS
    assert len(ev) == len(orig)
    for col in ("event_id", "user_id", "type", "item_id", "category", "session_id", "order_id"):
        assert (
            ev[col]
            .astype("str")
            .where(ev[col].notna())
            .equals(orig[col].astype("str").where(orig[col].notna()))
        ), col
    assert ev["timestamp"].equals(orig["timestamp"])
    assert ev["quantity"].equals(orig["quantity"])
    for col in ("price", "revenue", "rating"):
        assert np.allclose(ev[col], orig[col], equal_nan=True, rtol=1e-9), col
    assert back.truth["day"].equals(small.truth["day"])
    assert back.truth["persona"].astype("str").equals(small.truth["persona"].astype("str"))
    assert back.items["item_id"].equals(small.items["item_id"])
    assert back.scenarios == small.scenarios


def test_writer_rejects_unknown_format(small: Simulation, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        write_simulation(small, tmp_path, fmt="xls")
    assert str(err.value) == "fmt='xls' should be one of csv, parquet, jsonl"
    with pytest.raises(InputError):
        read_simulation(tmp_path / "nothing", fmt="csv")


# --- scale -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_million_users(request: pytest.FixtureRequest) -> None:
    if "slow" not in str(request.config.getoption("markexpr", "")):
        pytest.skip("large run: select it with -m slow")
    began = time.perf_counter()
    sim = simulate(n_users=1_000_000, days=90)
    elapsed = time.perf_counter() - began
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert 8_000_000 < len(sim.events) < 12_000_000
    assert elapsed < 120
    assert peak_gib < 8
