"""Running per-user aggregates, maintained set-wise at ingest and recomputable as of any time.

The same ``SELECT ... GROUP BY`` statements serve both paths: at ingest they read the batch's
new events and are wrapped in ``INSERT ... ON CONFLICT DO UPDATE`` (additive counters, min/max
times); for ``--as-of`` a past time they read ``events`` filtered by time and are returned as
frames. Both SQLite (3.24+) and PostgreSQL run them unchanged; on PostgreSQL the ingest runs them
as data-modifying CTEs over the ``INSERT ... RETURNING`` of the new events, in one statement.

``user_stats``: one row per user. ``user_orders``: one row per (user, order). ``user_items``:
purchase and refund lines per (user, item). ``user_categories``: views, carts and purchases per
(user, category). ``batch_users``: which users each ingest batch touched (the bulk path writes a
transaction's users once, under its last batch: see :class:`automation.features.partials.Window`).
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


ITEM_COLUMNS = ("n_purchases", "n_refunds", "quantity", "revenue")
CATEGORY_COLUMNS = ("n_views", "n_carts", "n_purchases")
# The rows each upsert takes, in order: what a select (or a pre-aggregated table) must give.
UPSERT_COLUMNS = {
    "user_stats": (
        "user_key",
        "first_ts",
        "last_ts",
        "first_purchase_ts",
        "last_purchase_ts",
        *STATS_COLUMNS,
    ),
    "user_orders": ("user_key", "order_id", "ts", "revenue", "n_lines"),
    "user_items": ("user_key", "item_key", *ITEM_COLUMNS, "last_ts"),
    "user_categories": ("user_key", "category", *CATEGORY_COLUMNS),
    "batch_users": ("batch_id", "user_key", "n_events"),
}
_KEYS = {
    "user_stats": "user_key",
    "user_orders": "user_key, order_id",
    "user_items": "user_key, item_key",
    "user_categories": "user_key, category",
    "batch_users": "batch_id, user_key",
}


def _conflict_sets(table: str) -> list[str]:
    if table == "user_stats":
        return [
            _least(table, "first_ts"),
            _greatest(table, "last_ts"),
            _least(table, "first_purchase_ts"),
            _greatest(table, "last_purchase_ts"),
            *_add(table, STATS_COLUMNS),
        ]
    if table == "user_orders":
        return [_least(table, "ts"), *_add(table, ("revenue", "n_lines"))]
    if table == "user_items":
        return [*_add(table, ITEM_COLUMNS), _greatest(table, "last_ts")]
    if table == "user_categories":
        return _add(table, CATEGORY_COLUMNS)
    return _add(table, ("n_events",))


def upsert(table: str, select: str) -> str:
    """``INSERT INTO table ... select ... ON CONFLICT DO UPDATE``: fold rows into an aggregate."""
    return (
        f"INSERT INTO {table} ({', '.join(UPSERT_COLUMNS[table])}) {select} "
        f"ON CONFLICT ({_KEYS[table]}) DO UPDATE SET {', '.join(_conflict_sets(table))}"
    )


def aggregate_upserts(source: str) -> list[str]:
    """The upserts that fold the events of ``source`` (new events only) into the aggregates."""
    batch_select = f"""SELECT batch_id, user_key, COUNT(*) FROM {source} WHERE TRUE
            GROUP BY batch_id, user_key"""
    return [
        upsert("user_stats", _sorted(stats_select(source), _KEYS["user_stats"])),
        upsert("user_orders", _sorted(orders_select(source), _KEYS["user_orders"])),
        upsert("user_items", _sorted(items_select(source), _KEYS["user_items"])),
        upsert("user_categories", _sorted(categories_select(source), _KEYS["user_categories"])),
        upsert("batch_users", _sorted(batch_select, _KEYS["batch_users"])),
    ]


def upsert_from(name: str, table: str) -> str:
    """Upsert of pre-aggregated rows (one per key) from ``table``, in key order."""
    return upsert(
        name,
        f"SELECT {', '.join(UPSERT_COLUMNS[name])} FROM {table} WHERE TRUE ORDER BY {_KEYS[name]}",
    )


def fold_into_aggregates(conn: Connection, source: str) -> None:
    """Fold the events of ``source`` (new events only) into the running aggregates."""
    for statement in aggregate_upserts(source):
        conn.execute(text(statement))
