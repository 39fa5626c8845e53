"""Per-user features as of an event time, from the running aggregates (O(users), not O(events)).

``as_of`` defaults to the newest event in the store (not the wall clock: historical data stays
meaningful). An earlier ``as_of`` recomputes the aggregates from the events up to that time with
the very statements the ingest path uses.

Features (raw, before scaling; missing values handled as stated):

``recency_days``        days since the last purchase; never purchased: days since first seen
``inactive_days``       days since the last event of any kind (a user gone quiet)
``frequency``           orders (distinct order ids among purchases)
``monetary``            purchase revenue net of refunds (may be negative)
``avg_order_value``     gross purchase revenue per order; 0 without orders
``tenure_days``         days since the first event
``interpurchase_days``  mean days between orders; fewer than 2 orders: the tenure (a lower bound)
``distinct_items``      distinct items purchased
``refund_rate``         refunded value / purchased value, clipped to [0, 1]
``activity_trend``      (orders in the last 90 days - orders in the 90 before) / their sum, in
                        [-1, 1]; 0 without orders in either window
``n_views``, ``n_carts``, ``view_to_cart``, ``cart_to_purchase``   only where such events exist
``units_per_line``      units per purchased line (net of refunds); 0 without purchases; only where
                        carts are recorded and quantities vary (bulk baskets against single
                        pieces). Not on purchase-only data: on Online Retail, where it is the
                        wholesale scale, the monthly updates then merged the new one-time buyers
                        away (3 segments at the end, one of 81%)
``price_index``         mean over purchased lines of log(item price / median price of the item's
                        category); 0 without purchases; only where items have categories and prices
                        (what a user pays, apart from how many: cheap against dear items)
``rating_mean``         only where ratings exist
``aff_<category>``      share of the user's interactions (views 1, carts 2, purchases 4) in each of
                        the top categories, plus ``aff_other``; where items have no category,
                        ``taste_1..k``: a truncated SVD of the user x item purchase matrix
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from automation.errors import EmptyStoreError
from automation.features.affinity import AffinityModel, apply_affinity, fit_affinity
from automation.features.aggregates import (
    categories_select,
    items_select,
    orders_select,
    stats_select,
)
from automation.store.bulk import SQLITE_TS, create_temp_like, read_frame, write_frame

TREND_WINDOW = timedelta(days=90)
DAY = np.timedelta64(1, "D")


@dataclass
class FeatureTable:
    """Raw features (index ``user_key``), the users' external ids and the time they hold at."""

    frame: pd.DataFrame
    external_ids: pd.Series
    as_of: pd.Timestamp
    affinity: str  # "category", "taste" or "none"
    affinity_model: AffinityModel = field(default_factory=AffinityModel)


def ts_param(conn: Connection, ts: pd.Timestamp) -> object:
    """A timestamp bind value both dialects compare correctly with stored times."""
    utc = (
        pd.Timestamp(ts).tz_convert("UTC")
        if pd.Timestamp(ts).tzinfo
        else pd.Timestamp(ts, tz="UTC")
    )
    if conn.dialect.name == "sqlite":
        return utc.tz_localize(None).strftime(SQLITE_TS + ".%f")
    return utc.to_pydatetime()


def as_utc(value: object) -> pd.Timestamp:
    """A timestamp in UTC: naive values (as SQLite returns them) are taken as UTC."""
    ts = pd.Timestamp(value)  # type: ignore[arg-type]
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _utc(col: pd.Series) -> pd.Series:
    return pd.to_datetime(col, utc=True, format="ISO8601")


def restrict_users(conn: Connection, user_keys: list[int] | None) -> str:
    """A ``AND user_key IN (...)`` clause for ``user_keys`` (a temporary table when many)."""
    if not user_keys:
        return ""
    if len(user_keys) <= 2000:
        return f" AND user_key IN ({', '.join(str(int(k)) for k in user_keys)})"
    sql = "user_key bigint" if conn.dialect.name == "postgresql" else "user_key INTEGER"
    create_temp_like(conn, "_only_users", sql)
    write_frame(conn, "_only_users", {"user_key": pd.Series(user_keys, dtype="int64")})
    return " AND user_key IN (SELECT user_key FROM _only_users)"


def latest_event_time(conn: Connection) -> pd.Timestamp:
    value = conn.execute(text("SELECT MAX(last_ts) FROM user_stats")).scalar()
    if value is None:
        raise EmptyStoreError("the store has no events yet: run `shoal ingest FILE` first")
    return pd.Timestamp(_utc(pd.Series([value])).iloc[0])


def build_features(
    conn: Connection,
    as_of: datetime | pd.Timestamp | None = None,
    random_state: int = 0,
    user_keys: list[int] | None = None,
    from_events: bool = False,
    affinity_model: AffinityModel | None = None,
) -> FeatureTable:
    """Compute every user's features as of ``as_of`` (default: the newest event).

    With ``user_keys``, only those users' features are computed (a support lookup); the
    taste coordinates, which need every user, are then left out. ``from_events`` recomputes from
    the events even at the newest time (a consistency check of the running aggregates).
    ``affinity_model`` computes the affinity columns with a stored model (an incremental update)
    instead of fitting one.
    """
    latest = latest_event_time(conn)
    at = latest if as_of is None else pd.Timestamp(as_of)
    if at.tzinfo is None:
        at = at.tz_localize("UTC")
    params = {"as_of": ts_param(conn, at)}
    if at >= latest and not from_events:
        stats_src, orders_src, items_src = "user_stats", "user_orders", "user_items"
        cats_src = "user_categories"
    else:
        past = "(SELECT * FROM events WHERE ts <= :as_of) e"
        stats_src = f"({stats_select(past)})"
        orders_src = f"({orders_select(past)})"
        items_src = f"({items_select(past)})"
        cats_src = f"({categories_select(past)})"
    only = restrict_users(conn, user_keys)
    stats = read_frame(
        conn,
        f"SELECT s.*, u.external_id FROM {stats_src} s JOIN users u ON u.id = s.user_key"
        f" WHERE TRUE{only}",
        params if stats_src != "user_stats" else None,
    )
    if stats.empty:
        raise EmptyStoreError(f"no events at or before {at.isoformat()}")
    w1 = ts_param(conn, at - TREND_WINDOW)
    w2 = ts_param(conn, at - 2 * TREND_WINDOW)
    orders = read_frame(
        conn,
        f"""SELECT user_key, COUNT(*) AS orders, MIN(ts) AS first_order, MAX(ts) AS last_order,
                   SUM(revenue) AS order_revenue,
                   SUM(CASE WHEN ts > :w1 THEN 1 ELSE 0 END) AS recent_orders,
                   SUM(CASE WHEN ts > :w2 AND ts <= :w1 THEN 1 ELSE 0 END) AS prior_orders
            FROM {orders_src} o WHERE TRUE{only} GROUP BY user_key""",
        {**(params if orders_src != "user_orders" else {}), "w1": w1, "w2": w2},
    )
    item_params = params if items_src != "user_items" else None
    items = read_frame(
        conn,
        f"""SELECT user_key, SUM(CASE WHEN n_purchases > 0 THEN 1 ELSE 0 END) AS distinct_items,
                   SUM(quantity) AS units, SUM(n_purchases - n_refunds) AS kept_lines
            FROM {items_src} i WHERE TRUE{only} GROUP BY user_key""",
        item_params,
    )
    frame = _compose(stats, orders, items, at)
    index = price_index(conn, items_src, item_params, only, frame.index)
    if index is not None:
        frame["price_index"] = index
    if affinity_model is not None:
        model = affinity_model
        affinity = apply_affinity(conn, model, frame.index, only)
    elif user_keys:
        model, affinity = AffinityModel(), None  # a lookup: no population-wide model
    else:
        affinity, model = fit_affinity(
            conn, items_src, item_params, frame.index, random_state, cats_src
        )
    if affinity is not None:
        frame = frame.join(affinity).fillna({c: 0.0 for c in affinity.columns})
    ext = stats.set_index("user_key")["external_id"].astype("str").reindex(frame.index)
    return FeatureTable(
        frame=frame, external_ids=ext, as_of=at, affinity=model.kind, affinity_model=model
    )


def price_index(
    conn: Connection,
    items_src: str,
    params: dict[str, object] | None,
    only: str,
    users: pd.Index,
) -> pd.Series | None:
    """Per user, the mean over purchased lines of log(item price / its category's median price).

    The simulator's personas (and shoppers) differ in *which* items they pick within a category,
    cheap or dear, apart from how many units they take: ``avg_order_value`` mixes both. ``None``
    (no column) when items have no categories or prices."""
    cat = read_frame(
        conn,
        "SELECT id AS item_key, category, price FROM items"
        " WHERE category IS NOT NULL AND price > 0",
    )
    if cat.empty:
        return None
    log_price = pd.Series(np.log(cat["price"].to_numpy(dtype="float64")), index=cat.index)
    rel = pd.Series(
        (log_price - log_price.groupby(cat["category"]).transform("median")).to_numpy(),
        index=cat["item_key"].astype("int64"),
    )
    lines = read_frame(
        conn,
        f"SELECT user_key, item_key, n_purchases FROM {items_src} i WHERE n_purchases > 0{only}",
        params,
    )
    r = rel.reindex(lines["item_key"].astype("int64")).to_numpy()
    n = np.where(np.isnan(r), 0.0, lines["n_purchases"].to_numpy(dtype="float64"))
    by_user = pd.DataFrame({"w": n * np.nan_to_num(r), "n": n}, index=lines["user_key"])
    sums = by_user.groupby(level=0).sum().reindex(users)
    return (sums["w"] / sums["n"].where(sums["n"] > 0)).fillna(0.0)


def _days(delta: pd.Series) -> pd.Series:
    return delta.dt.total_seconds() / 86_400.0


def _compose(
    stats: pd.DataFrame, orders: pd.DataFrame, items: pd.DataFrame, at: pd.Timestamp
) -> pd.DataFrame:
    s = stats.set_index("user_key").sort_index()
    o = orders.set_index("user_key").reindex(s.index)
    it = items.set_index("user_key").reindex(s.index)
    first_ts = _utc(s["first_ts"])
    last_purchase = _utc(s["last_purchase_ts"])
    n_orders = o["orders"].fillna(0).astype("float64")
    tenure = _days(at - first_ts).clip(lower=0)
    recency = _days(at - last_purchase).clip(lower=0).fillna(tenure)
    gross = s["purchase_revenue"].astype("float64")
    refunds = s["refund_revenue"].astype("float64")
    span = _days(_utc(o["last_order"]) - _utc(o["first_order"]))
    inter = (span / (n_orders - 1)).where(n_orders >= 2).fillna(tenure)
    recent = o["recent_orders"].fillna(0).astype("float64")
    prior = o["prior_orders"].fillna(0).astype("float64")
    both = recent + prior
    f = pd.DataFrame(index=s.index)
    f["recency_days"] = recency
    f["inactive_days"] = _days(at - _utc(s["last_ts"])).clip(lower=0).fillna(tenure)
    f["frequency"] = n_orders
    f["monetary"] = gross - refunds
    f["avg_order_value"] = (o["order_revenue"].fillna(0) / n_orders.where(n_orders > 0)).fillna(0.0)
    f["tenure_days"] = tenure
    f["interpurchase_days"] = inter
    f["distinct_items"] = it["distinct_items"].fillna(0).astype("float64")
    f["refund_rate"] = np.where(
        gross > 0, (refunds / gross.where(gross > 0)).clip(0, 1), np.where(refunds > 0, 1.0, 0.0)
    )
    f["activity_trend"] = ((recent - prior) / both.where(both > 0)).fillna(0.0)
    views = s["n_views"].astype("float64")
    carts = s["n_carts"].astype("float64")
    if views.sum() > 0:
        f["n_views"] = views
        f["view_to_cart"] = (carts / views.where(views > 0)).clip(0, 1).fillna(0.0)
    if carts.sum() > 0:
        f["n_carts"] = carts
        f["cart_to_purchase"] = (
            (s["n_purchases"].astype("float64") / carts.where(carts > 0)).clip(0, 1).fillna(0.0)
        )
    units = it["units"].fillna(0).astype("float64")
    kept = it["kept_lines"].fillna(0).astype("float64")
    per_line = (units / kept.where(kept > 0)).clip(lower=0)
    if carts.sum() > 0 and per_line.notna().any() and per_line.max() > per_line.min():
        f["units_per_line"] = per_line.fillna(0.0)
    if s["n_ratings"].sum() > 0:
        n_r = s["n_ratings"].astype("float64")
        f["rating_mean"] = (s["rating_sum"] / n_r.where(n_r > 0)).fillna(0.0)
    return f.astype("float64")
