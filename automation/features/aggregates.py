"""Running per-user aggregates, maintained set-wise at ingest and recomputable as of any time.

The same ``SELECT ... GROUP BY`` statements serve both paths: at ingest they read the batch's
new events and are wrapped in ``INSERT ... ON CONFLICT DO UPDATE`` (additive counters, min/max
times); for ``--as-of`` a past time they read ``events`` filtered by time and are returned as
frames. Both SQLite (3.24+) and PostgreSQL run them unchanged; on PostgreSQL the ingest runs them
as data-modifying CTEs over the ``INSERT ... RETURNING`` of the new events, in one statement.

``user_stats``: one row per user. ``user_orders``: one row per (user, order). ``user_items``:
purchase and refund lines per (user, item). ``user_categories``: views, carts and purchases per
(user, category). ``batch_users``: which users each ingest batch touched.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

STATS_COLUMNS = (
    "n_events",
    "n_views",
    "n_carts",
    "n_removes",
    "n_purchases",
    "n_refunds",
    "n_ratings",
    "rating_sum",
    "purchase_revenue",
    "refund_revenue",
)


def _count(kind: str) -> str:
    return f"SUM(CASE WHEN type = '{kind}' THEN 1 ELSE 0 END)"


def _money(kind: str) -> str:
    return f"SUM(CASE WHEN type = '{kind}' THEN COALESCE(revenue, 0) ELSE 0 END)"


def stats_select(source: str) -> str:
    """One row per user of ``source`` (a table or a parenthesised subquery with an alias)."""
    return f"""
        SELECT user_key,
               MIN(ts) AS first_ts, MAX(ts) AS last_ts,
               MIN(CASE WHEN type = 'purchase' THEN ts END) AS first_purchase_ts,
               MAX(CASE WHEN type = 'purchase' THEN ts END) AS last_purchase_ts,
               COUNT(*) AS n_events,
               {_count("view")} AS n_views, {_count("cart")} AS n_carts,
               {_count("remove")} AS n_removes, {_count("purchase")} AS n_purchases,
               {_count("refund")} AS n_refunds, {_count("rating")} AS n_ratings,
               SUM(CASE WHEN type = 'rating' THEN COALESCE(rating, 0) ELSE 0 END) AS rating_sum,
               {_money("purchase")} AS purchase_revenue, {_money("refund")} AS refund_revenue
        FROM {source} WHERE TRUE GROUP BY user_key"""


def orders_select(source: str) -> str:
    return f"""
        SELECT user_key, order_id, MIN(ts) AS ts, SUM(COALESCE(revenue, 0)) AS revenue,
               COUNT(*) AS n_lines
        FROM {source} WHERE type = 'purchase' GROUP BY user_key, order_id"""


def items_select(source: str) -> str:
    """Purchase and refund lines per (user, item): distinct items, taste, recommendations."""
    return f"""
        SELECT user_key, item_key,
               {_count("purchase")} AS n_purchases, {_count("refund")} AS n_refunds,
               SUM(CASE WHEN type = 'purchase' THEN COALESCE(quantity, 0)
                        WHEN type = 'refund' THEN -COALESCE(quantity, 0) ELSE 0 END) AS quantity,
               {_money("purchase")} - {_money("refund")} AS revenue,
               MAX(ts) AS last_ts
        FROM {source} WHERE item_key IS NOT NULL AND type IN ('purchase', 'refund')
        GROUP BY user_key, item_key"""


def categories_select(source: str) -> str:
    """Views, carts and purchases per (user, category): the category affinity."""
    return f"""
        SELECT user_key, category,
               {_count("view")} AS n_views, {_count("cart")} AS n_carts,
               {_count("purchase")} AS n_purchases
        FROM {source} WHERE category IS NOT NULL GROUP BY user_key, category"""


def _least(table: str, col: str) -> str:
    return (
        f"{col} = CASE WHEN {table}.{col} IS NULL OR excluded.{col} < {table}.{col} "
        f"THEN excluded.{col} ELSE {table}.{col} END"
    )


def _greatest(table: str, col: str) -> str:
    return (
        f"{col} = CASE WHEN {table}.{col} IS NULL OR excluded.{col} > {table}.{col} "
        f"THEN excluded.{col} ELSE {table}.{col} END"
    )


def _add(table: str, cols: tuple[str, ...]) -> list[str]:
    return [f"{c} = {table}.{c} + excluded.{c}" for c in cols]


def _sorted(select: str, keys: str) -> str:
    """Rows in key order: upserts then walk the aggregate's index in order, not at random."""
    return f"SELECT * FROM ({select}) AS agg WHERE TRUE ORDER BY {keys}"


def aggregate_upserts(source: str) -> list[str]:
    """The upserts that fold the events of ``source`` (new events only) into the aggregates."""
    stats_sets = [
        _least("user_stats", "first_ts"),
        _greatest("user_stats", "last_ts"),
        _least("user_stats", "first_purchase_ts"),
        _greatest("user_stats", "last_purchase_ts"),
        *_add("user_stats", STATS_COLUMNS),
    ]
    order_sets = [_least("user_orders", "ts"), *_add("user_orders", ("revenue", "n_lines"))]
    item_cols = ("n_purchases", "n_refunds", "quantity", "revenue")
    item_sets = [*_add("user_items", item_cols), _greatest("user_items", "last_ts")]
    cat_cols = ("n_views", "n_carts", "n_purchases")
    return [
        f"""INSERT INTO user_stats (user_key, first_ts, last_ts, first_purchase_ts,
                last_purchase_ts, {", ".join(STATS_COLUMNS)})
            {_sorted(stats_select(source), "user_key")}
            ON CONFLICT (user_key) DO UPDATE SET {", ".join(stats_sets)}""",
        f"""INSERT INTO user_orders (user_key, order_id, ts, revenue, n_lines)
            {_sorted(orders_select(source), "user_key, order_id")}
            ON CONFLICT (user_key, order_id) DO UPDATE SET {", ".join(order_sets)}""",
        f"""INSERT INTO user_items (user_key, item_key, {", ".join(item_cols)}, last_ts)
            {_sorted(items_select(source), "user_key, item_key")}
            ON CONFLICT (user_key, item_key) DO UPDATE SET {", ".join(item_sets)}""",
        f"""INSERT INTO user_categories (user_key, category, {", ".join(cat_cols)})
            {_sorted(categories_select(source), "user_key, category")}
            ON CONFLICT (user_key, category) DO UPDATE SET
            {", ".join(_add("user_categories", cat_cols))}""",
        f"""INSERT INTO batch_users (batch_id, user_key, n_events)
            SELECT batch_id, user_key, COUNT(*) FROM {source} WHERE TRUE
            GROUP BY batch_id, user_key ORDER BY batch_id, user_key
            ON CONFLICT (batch_id, user_key) DO UPDATE SET
            n_events = batch_users.n_events + excluded.n_events""",
    ]


def fold_into_aggregates(conn: Connection, source: str) -> None:
    """Fold the events of ``source`` (new events only) into the running aggregates."""
    for statement in aggregate_upserts(source):
        conn.execute(text(statement))
