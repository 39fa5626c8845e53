"""A block's contribution to the running aggregates, computed in Python before the database.

The ingest's helper thread has every accepted row of a block in memory; it groups them here (integer
codes, NumPy and pandas) into the rows each aggregate upsert takes, so the database only receives
the grouped rows (``COPY``) and folds them in (:class:`Window`, once for all the blocks of a
transaction), instead of grouping the staged events itself. The arithmetic is that of the SQL
selects in :mod:`automation.features.aggregates` (missing revenue, quantity or rating count as 0;
refunds subtract), which stay the reference: ``build_features(conn, from_events=True)`` recomputes
the same figures from ``events``. Users and items are grouped by their external ids' codes; the
database keys are attached at fold time, once the block's users and items are upserted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, text

from automation.features.aggregates import (
    CATEGORY_COLUMNS,
    ITEM_COLUMNS,
    STATS_COLUMNS,
    UPSERT_COLUMNS,
    upsert_from,
)
from automation.store.bulk import create_temp_like
from automation.store.pgcopy import Encoder, copy_binary, stream

_COUNTED = {"view": "n_views", "cart": "n_carts", "remove": "n_removes"}
_TYPES = {
    "user_key": "int8",
    "item_key": "int8",
    "batch_id": "int4",
    "order_id": "text",
    "category": "text",
    "first_ts": "timestamptz",
    "last_ts": "timestamptz",
    "first_purchase_ts": "timestamptz",
    "last_purchase_ts": "timestamptz",
    "ts": "timestamptz",
    "rating_sum": "float8",
    "purchase_revenue": "float8",
    "refund_revenue": "float8",
    "revenue": "float8",
    "quantity": "float8",
}
_SQL_TYPES = {
    "int8": "bigint",
    "int4": "integer",
    "text": "varchar(200)",
    "timestamptz": "timestamptz",
    "float8": "float8",
}


@dataclass
class Partials:
    """Grouped rows per aggregate; ``user``/``item`` columns hold codes into the id arrays."""

    user_ids: np.ndarray  # external user id per user code
    item_ids: np.ndarray  # external item id per item code
    stats: dict[str, np.ndarray]  # per user code: the user_stats columns but user_key
    orders: pd.DataFrame  # user, order_id, ts, revenue, n_lines
    items: pd.DataFrame  # user, item, n_purchases, n_refunds, quantity, revenue, last_ts
    categories: pd.DataFrame  # user, category, n_views, n_carts, n_purchases


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _utc(us: np.ndarray) -> pd.Series:
    """Microseconds since the epoch (NaN where none) as UTC datetimes (NaT where none)."""
    ok = ~np.isnan(us)
    vals = np.where(ok, us, 0).astype("int64").astype("datetime64[us]")
    return pd.Series(vals).dt.tz_localize("UTC").where(ok)


def group_rows(
    keys: np.ndarray, columns: dict[str, np.ndarray], minimum: tuple[str, ...] = ("ts",)
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Group rows by integer ``keys`` (sorted keys out): the ``minimum`` columns take their
    minimum, other ``*_ts`` columns their maximum (NaN skipped, as pandas' ``groupby.agg``
    does; NaN where a group has none), every other column its sum. A sort and one ``reduceat``
    per column: pandas' ``groupby.agg`` costs milliseconds per call in fixed work, several
    times per API request."""
    if len(keys) == 0:
        return keys[:0], {c: v[:0] for c, v in columns.items()}
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    out: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        how = np.fmin if name in minimum else np.fmax if name.endswith("_ts") else np.add
        out[name] = how.reduceat(values[order], starts)
    return ordered[starts], out


def _by_pair(
    first: np.ndarray,
    second: np.ndarray,
    columns: dict[str, np.ndarray],
    names: tuple[str, str] = ("user", "second"),
) -> pd.DataFrame:
    """Group rows by (first, second) integer codes (see :func:`group_rows`): a frame of the two
    codes (named ``names``) and the columns, in key order."""
    width = int(second.max()) + 1 if len(second) else 1
    keys, out = group_rows(first * width + second, columns)
    return pd.DataFrame({names[0]: keys // width, names[1]: keys % width, **out}, copy=False)


Coded = tuple[np.ndarray, np.ndarray]  # each row's code (-1: none), the value of each code


def block_partials(
    acc: pd.DataFrame,
    order: pd.Series,
    user_codes: Coded | None = None,
    item_codes: Coded | None = None,
) -> Partials:
    """Group a block's accepted rows (``order``: each line's order id) into aggregate rows.

    ``user_codes``/``item_codes``: the rows' user and item ids already factorised (as ``pd.factorize``
    gives them), so that the partials' codes are those of the caller.
    """
    user, user_ids = user_codes if user_codes is not None else _codes(acc["user_id"])
    item, item_ids = item_codes if item_codes is not None else _codes(acc["item_id"])
    user, item = user.astype(np.int64, copy=False), item.astype(np.int64, copy=False)
    n = len(user_ids)
    type_code, type_names = _codes(acc["type"])
    is_type = {t: type_code == i for i, t in enumerate(type_names)}
    none = np.zeros(len(acc), dtype=bool)

    def of(name: str) -> np.ndarray:
        return is_type.get(name, none)

    ts = acc["ts"].astype("datetime64[us, UTC]").dt.tz_localize(None).to_numpy().astype("int64")
    ts_f = ts.astype("float64")  # exact: microseconds stay below 2**53 until the year 2255
    purchase, refund = of("purchase"), of("refund")
    revenue = acc["revenue"].to_numpy(dtype="float64", na_value=np.nan)
    revenue = np.where(np.isnan(revenue), 0.0, revenue)
    quantity = acc["quantity"].to_numpy(dtype="float64", na_value=np.nan)
    quantity = np.where(np.isnan(quantity), 0.0, quantity)
    rating = acc["rating"].to_numpy(dtype="float64", na_value=np.nan)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(user[mask], minlength=n).astype(np.int64)

    def total(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.bincount(user[mask], weights=values[mask], minlength=n)

    bought = np.where(purchase, ts_f, np.nan)
    # Every user code 0..n-1 has rows: one row per code, in code order.
    _, span = group_rows(
        user,
        {
            "first_ts": ts_f,
            "last_ts": ts_f,
            "first_purchase_ts": bought,
            "last_purchase_ts": bought,
        },
        minimum=("first_ts", "first_purchase_ts"),
    )
    every = np.ones(len(acc), dtype=bool)
    stats: dict[str, np.ndarray] = {
        **span,
        "n_events": count(every),
        **{col: count(of(k)) for k, col in _COUNTED.items()},
        "n_purchases": count(purchase),
        "n_refunds": count(refund),
        "n_ratings": count(of("rating")),
        "rating_sum": total(of("rating"), np.where(np.isnan(rating), 0.0, rating)),
        "purchase_revenue": total(purchase, revenue),
        "refund_revenue": total(refund, revenue),
    }

    o_code, o_ids = _codes(order[purchase].reset_index(drop=True))
    orders = _by_pair(
        user[purchase],
        o_code,
        {"ts": ts_f[purchase], "revenue": revenue[purchase], "n_lines": np.ones(purchase.sum())},
    )
    orders.insert(1, "order_id", o_ids[orders.pop("second").to_numpy()])

    line = (purchase | refund) & (item >= 0)
    sign = np.where(purchase, 1.0, -1.0)[line]
    items = _by_pair(
        user[line],
        item[line],
        {
            "n_purchases": purchase[line].astype(np.int64),
            "n_refunds": refund[line].astype(np.int64),
            "quantity": quantity[line] * sign,
            "revenue": revenue[line] * sign,
            "last_ts": ts_f[line],
        },
        names=("user", "item"),
    )

    c_code, c_ids = _codes(acc["category"])
    has_cat = c_code >= 0
    categories = _by_pair(
        user[has_cat],
        c_code[has_cat],
        {
            "n_views": of("view")[has_cat].astype(np.int64),
            "n_carts": of("cart")[has_cat].astype(np.int64),
            "n_purchases": purchase[has_cat].astype(np.int64),
        },
    )
    categories.insert(1, "category", c_ids[categories.pop("second").to_numpy()])
    return Partials(user_ids, item_ids, stats, orders, items, categories)


def keyed_rows(
    part: Partials, user_keys: np.ndarray, item_keys: np.ndarray
) -> dict[str, pd.DataFrame]:
    """The partials with database keys, as the rows each aggregate's upsert takes."""
    stats = part.stats
    orders, items, cats = part.orders, part.items, part.categories
    return {
        "user_stats": pd.DataFrame(
            {
                "user_key": user_keys,
                **{c: _utc(stats[c]) for c in stats if c.endswith("_ts")},
                **{c: stats[c] for c in STATS_COLUMNS},
            }
        ),
        "user_orders": pd.DataFrame(
            {
                "user_key": user_keys[orders["user"].to_numpy()],
                "order_id": orders["order_id"].to_numpy(),
                "ts": _utc(orders["ts"].to_numpy()),
                "revenue": orders["revenue"].to_numpy(),
                "n_lines": orders["n_lines"].to_numpy().astype("int64"),
            }
        ),
        "user_items": pd.DataFrame(
            {
                "user_key": user_keys[items["user"].to_numpy()],
                "item_key": item_keys[items["item"].to_numpy()],
                **{c: items[c].to_numpy() for c in ITEM_COLUMNS},
                "last_ts": _utc(items["last_ts"].to_numpy()),
            }
        ),
        "user_categories": pd.DataFrame(
            {
                "user_key": user_keys[cats["user"].to_numpy()],
                "category": cats["category"].to_numpy(),
                **{c: cats[c].to_numpy() for c in CATEGORY_COLUMNS},
            }
        ),
    }


def _encode(frame: pd.DataFrame, names: tuple[str, ...], types: dict[str, str]) -> list[pa.Buffer]:
    return stream(Encoder({c: frame[c] for c in names}, types)) if len(frame) else []


def _copy(conn: Connection, table: str, names: tuple[str, ...], body: list[pa.Buffer]) -> None:
    if body:
        copy_binary(conn, table, names, body)


@dataclass
class _Encoded:
    """One aggregate's combined rows, encoded: users new in the window, the others."""

    name: str
    touched: list[pa.Buffer]  # batch_users rows (with user_stats)
    fresh: list[pa.Buffer]
    known: list[pa.Buffer]


# ``batch_users`` is copied into directly: its own column types (``n_events`` is an integer).
_BATCH_TYPES = {"batch_id": "int4", "user_key": "int8", "n_events": "int4"}
_KEY_COLUMNS = ("user_key", "order_id", "item_key", "category")
_EARLIEST = ("first_ts", "first_purchase_ts", "ts")


def table_types(name: str) -> dict[str, str]:
    """Binary ``COPY`` types of an aggregate's columns, as its table declares them."""
    wide = name == "user_stats"  # its counters are bigint; the others' are integer
    return {
        c: _TYPES.get(c, "int8" if wide or c in _KEY_COLUMNS else "int4")
        for c in UPSERT_COLUMNS[name]
    }


def _combine(name: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Several blocks' rows of one aggregate as one row per key (the upsert's arithmetic)."""
    if len(frames) == 1:  # a block's rows are grouped already
        return frames[0]
    rows = pd.concat(frames, ignore_index=True)
    keys = [c for c in UPSERT_COLUMNS[name] if c in _KEY_COLUMNS]
    how = {
        c: ("min" if c in _EARLIEST else "max" if c.endswith("_ts") else "sum")
        for c in UPSERT_COLUMNS[name]
        if c not in keys
    }
    return rows.groupby(keys, sort=False).agg(how).reset_index()


class Window:
    """Aggregate rows of the blocks of one transaction, folded together.

    Each block's rows (with their database keys) are kept in memory as they come; :meth:`flush`
    (at the end of the window, before coupons are redeemed, and past ``max_rows`` rows) combines
    them to one row per key, so a user seen in every block of a window is folded once, not once
    per block. Users created in this window and not folded yet (keys above ``floor``, the
    largest ``users.id`` when the window opened or last flushed) have no aggregate rows: theirs
    are copied straight into the aggregate tables; the others go through a temporary table and
    one upsert per aggregate.

    ``batch_users`` gets one row per user per flush, under the last batch flushed: its readers
    only ever ask which users the batches after one committed batch touched, and every batch of
    a window commits with its last one, so a user is not written once per block.
    """

    def __init__(self, conn: Connection, floor: int, max_rows: int = 8_000_000) -> None:
        self.conn = conn
        self.floor = floor
        self.max_rows = max_rows
        self.pending: dict[str, list[pd.DataFrame]] = {}
        self.rows = 0
        self.batch_id: int | None = None  # the last batch added since the last flush

    def add(
        self, part: Partials, user_keys: np.ndarray, item_keys: np.ndarray, batch_id: int
    ) -> None:
        """Take one block's partials; ``user_keys``/``item_keys``: the key of each code."""
        self.batch_id = max(batch_id, self.batch_id or batch_id)
        for name, frame in keyed_rows(part, user_keys, item_keys).items():
            if len(frame):
                self.pending.setdefault(name, []).append(frame)
                self.rows += len(frame)
        if self.rows >= self.max_rows:
            self.flush()

    def _encoded(self, name: str, frames: list[pd.DataFrame]) -> _Encoded:
        """Combine, order and encode one aggregate's pending rows (no database work)."""
        rows = _combine(name, frames)
        # In user order: the primary key's index then takes rows page by page (measured:
        # 2.7x less database time than 2M rows in random order; 20% less than the blocks'
        # order of the simulator's aggregate rows).
        rows = rows.take(np.argsort(rows["user_key"].to_numpy(), kind="stable"))
        touched: list[pa.Buffer] = []
        if name == "user_stats" and self.batch_id is not None:
            batch = pd.DataFrame(
                {
                    "batch_id": np.full(len(rows), self.batch_id, dtype=np.int64),
                    "user_key": rows["user_key"].to_numpy(),
                    "n_events": rows["n_events"].to_numpy(),
                }
            )
            touched = _encode(batch, UPSERT_COLUMNS["batch_users"], _BATCH_TYPES)
        names, types = UPSERT_COLUMNS[name], table_types(name)
        fresh = rows["user_key"].to_numpy() > self.floor
        return _Encoded(
            name, touched, _encode(rows[fresh], names, types), _encode(rows[~fresh], names, types)
        )

    def flush(self) -> None:
        """Fold every pending row into the aggregates.

        A helper thread combines and encodes the next aggregate's rows while this one's are
        sent (the database works in its own process; Arrow and the socket release the GIL).
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-flush") as pool:
            jobs = [pool.submit(self._encoded, n, f) for n, f in self.pending.items()]
            for job in jobs:
                enc = job.result()
                names, types = UPSERT_COLUMNS[enc.name], table_types(enc.name)
                _copy(self.conn, "batch_users", UPSERT_COLUMNS["batch_users"], enc.touched)
                _copy(self.conn, enc.name, names, enc.fresh)
                if enc.known:
                    table = f"_part_{enc.name}"
                    columns = ", ".join(f"{c} {_SQL_TYPES[types[c]]}" for c in names)
                    create_temp_like(self.conn, table, columns)
                    _copy(self.conn, table, names, enc.known)
                    self.conn.execute(text(upsert_from(enc.name, table)))
        self.pending = {}
        self.rows = 0
        self.batch_id = None
        self.floor = largest_user_key(self.conn)


def largest_user_key(conn: Connection) -> int:
    """The largest ``users.id`` (0 when there is none)."""
    return int(conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM users")).scalar_one())
