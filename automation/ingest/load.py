"""Bulk load of validated events: ids, user/item keys, staging, de-duplication, aggregates.

Blocks are loaded under the ingest lock the caller holds
(:func:`automation.store.locks.acquire_lock`), one or more per transaction (:func:`open_window`,
then :func:`load_batch` per block, then the window's ``flush``). Per block, users and items are
keyed (:mod:`automation.ingest.keys`: only ids not seen before are upserted), then the events go
in. On PostgreSQL a block whose ids all sort after the largest stored
id cannot hold a stored duplicate (ids are time-prefixed): it is sent with one binary ``COPY``
straight into ``events``, and its contribution to the running aggregates, grouped in Python while
the block was prepared (:mod:`automation.features.partials`), is folded in once for all such blocks
of the transaction. Any other block (and every block on SQLite) is staged in a temporary table, rows
already stored are removed from the stage and counted as duplicates, the rest go into ``events``
with one ``INSERT ... SELECT``, and the aggregates are folded from the stage in SQL. The primary key
enforces uniqueness either way. Coupon codes, which ``events`` does not store, travel in a small
side stage and are redeemed before the fold. No Python loop over rows touches the database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, text

from automation.features.aggregates import fold_into_aggregates
from automation.features.partials import (
    Partials,
    Window,
    block_partials,
    largest_user_key,
)
from automation.ingest.keys import KeyCache, attribute_marks
from automation.store.bulk import create_temp_like, ids_to_hex, write_frame
from automation.store.pgcopy import Encoder, copy_binary, join_rows, stream

# Fixed 16-byte keys for pandas' SipHash row hashing: derived ids are stable across runs.
_K1 = "shoal-event-id-1"
_K2 = "shoal-event-id-2"
_CONTENT = (
    "user_id",
    "type",
    "ts",
    "item_id",
    "quantity",
    "price",
    "revenue",
    "rating",
    "session_id",
    "order_id",
)
EVENT_COLUMNS = (
    "event_id",
    "user_key",
    "type",
    "ts",
    "item_key",
    "category",
    "quantity",
    "price",
    "revenue",
    "rating",
    "session_id",
    "order_id",
    "batch_id",
)
_STAGE_SQL = {
    "postgresql": "event_id uuid, user_key bigint, type varchar(10), ts timestamptz, "
    "item_key bigint, category varchar(200), quantity float8, price float8, revenue float8, "
    "rating float8, session_id varchar(200), order_id varchar(200), batch_id integer",
    "sqlite": "event_id BLOB, user_key INTEGER, type TEXT, ts TEXT, item_key INTEGER, "
    "category TEXT, quantity REAL, price REAL, revenue REAL, rating REAL, session_id TEXT, "
    "order_id TEXT, batch_id INTEGER",
}
# Purchases that carry a coupon code (redemptions; the code is not stored in ``events``).
_COUPONS_SQL = {
    "postgresql": "event_id uuid, user_key bigint, type varchar(10), ts timestamptz, "
    "order_id varchar(200), coupon varchar(200)",
    "sqlite": "event_id BLOB, user_key INTEGER, type TEXT, ts TEXT, order_id TEXT, coupon TEXT",
}
# Event columns the helper thread can encode before the database assigns keys.
HEAD_COLUMNS = tuple(c for c in EVENT_COLUMNS if c not in ("user_key", "item_key", "batch_id"))
STAGE_TYPES = {
    "event_id": "uuid",
    "user_key": "int8",
    "type": "text",
    "ts": "timestamptz",
    "item_key": "int8",
    "category": "text",
    "quantity": "float8",
    "price": "float8",
    "revenue": "float8",
    "rating": "float8",
    "session_id": "text",
    "order_id": "text",
    "batch_id": "int4",
}


@dataclass
class Loaded:
    inserted: int
    duplicates: int


def event_ids(acc: pd.DataFrame) -> np.ndarray:
    """Deterministic 16-byte ids, as an (n, 16) uint8 array.

    48 bits of the event time in milliseconds (time-ordered, like UUIDv7, so bulk inserts append
    to the index instead of scattering) followed by a 64-bit keyed hash (SipHash): of the source
    ``event_id`` when the row has one (an event id names one event at one time), else of the
    canonical fields, so re-ingesting the same rows yields the same ids. The last 16 bits are a
    second hash of those 64 (they fill the 16 bytes; they add no entropy). Two distinct events
    collide only if they share the millisecond and the 64-bit hash.
    """
    n = len(acc)
    out = np.empty((n, 16), dtype=np.uint8)
    if n == 0:
        return out
    given = acc["event_id"].notna().to_numpy()
    ms = (acc["ts"].astype("int64").to_numpy() // 1000).astype(">u8")
    out[:, :6] = ms.view(np.uint8).reshape(n, 8)[:, 2:]
    h1 = np.empty(n, dtype=np.uint64)
    if given.any():
        ids = acc.loc[given, "event_id"].astype("str").to_numpy(dtype=object)
        h1[given] = pd.util.hash_array(ids, hash_key=_K1, categorize=False)
    if (~given).any():
        content = acc.loc[~given]
        frame = pd.DataFrame(
            {
                c: (
                    content[c].astype("int64")
                    if c == "ts"
                    else content[c].astype("float64")
                    if c in ("quantity", "price", "revenue", "rating")
                    else content[c].astype("str").fillna("\x00")
                )
                for c in _CONTENT
            }
        )
        h1[~given] = pd.util.hash_pandas_object(
            frame, index=False, hash_key=_K1, categorize=False
        ).to_numpy()
    h2 = pd.util.hash_array(h1, hash_key=_K2)
    out[:, 6:14] = h1.astype(">u8").view(np.uint8).reshape(n, 8)
    out[:, 14:] = h2.astype(">u8").view(np.uint8).reshape(n, 8)[:, :2]
    return out


@dataclass
class Prepared:
    """One block's accepted rows made ready to load, without touching the database.

    Built by :func:`prepare_batch` (so the ingest can prepare the next block in a helper thread
    while the database loads this one) and consumed by :func:`load_batch`.
    """

    acc: pd.DataFrame  # accepted rows, duplicates within the block removed
    ids: np.ndarray  # (n, 16) uint8 event ids
    min_id: bytes  # the smallest id of the block (b"" when empty)
    dup_in_batch: int
    users: pd.DataFrame  # the block's distinct users (external_id), in order of appearance
    user_code: np.ndarray  # each row's position in ``users``
    items: pd.DataFrame | None  # the block's distinct items and their attributes
    item_code: np.ndarray  # each row's position in ``items`` (-1: no item)
    order: pd.Series
    item_marks: np.ndarray | None = None  # fingerprints of the items' attributes
    head: list[pa.Array] | None = None  # binary COPY rows without their keys (PostgreSQL)
    partials: Partials | None = None  # the block's aggregate rows (PostgreSQL)


def _halves(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16) uint8 ids as their big-endian high and low 64 bits: they sort as the ids do."""
    hi = np.ascontiguousarray(ids[:, :8]).view(">u8").ravel()
    lo = np.ascontiguousarray(ids[:, 8:]).view(">u8").ravel()
    return hi, lo


def _min_id(ids: np.ndarray) -> bytes:
    if len(ids) == 0:
        return b""
    hi, lo = _halves(ids)
    first = hi == hi.min()
    row = np.flatnonzero(first)[np.argmin(lo[first])]
    return bytes(ids[row])


def prepare_batch(acc: pd.DataFrame, non_product: object | None, binary: bool = False) -> Prepared:
    """Ids, in-block de-duplication, the users and items to upsert and each line's order.

    With ``binary`` (PostgreSQL), the ``COPY`` rows are encoded here too, all but the fields that
    need the database (user and item keys, batch id), which :func:`load_batch` appends.
    """
    ids = event_ids(acc)
    pair = pd.DataFrame(ids.view("<u8").reshape(len(acc), 2))
    dup_in_batch = pair.duplicated().to_numpy()
    acc = acc[~dup_in_batch].reset_index(drop=True)
    ids = ids[~dup_in_batch]
    user_code, user_uniques = pd.factorize(acc["user_id"])
    user_ids = np.asarray(user_uniques, dtype=object)
    users = pd.DataFrame({"external_id": user_ids})
    item_code, item_uniques = pd.factorize(acc["item_id"], use_na_sentinel=True)
    item_ids = np.asarray(item_uniques, dtype=object)
    items = None
    has_item = item_code >= 0
    if has_item.any():
        attrs = acc.loc[has_item, ["item_name", "category", "price"]]
        items = attrs.groupby(item_code[has_item], sort=True).last().reset_index(drop=True)
        items = items.rename(columns={"item_name": "name"})
        items.insert(0, "external_id", item_ids)
        pattern = non_product
        items["is_product"] = (
            ~items["external_id"].str.match(pattern).fillna(False).astype(bool)  # type: ignore[arg-type]
            if pattern is not None
            else True
        )
    is_line = acc["type"].isin(["purchase", "refund"])
    # A purchase without an order id belongs to its session, else to its instant.
    order = acc["order_id"].where(~is_line, acc["order_id"].fillna(acc["session_id"]))
    no_order = (is_line & order.isna()).to_numpy()
    if no_order.any():
        order = order.astype("object")
        order[no_order] = "@" + acc.loc[no_order, "ts"].astype("str")
    prep = Prepared(
        acc,
        ids,
        _min_id(ids),
        int(dup_in_batch.sum()),
        users,
        user_code.astype(np.int64),
        items,
        item_code.astype(np.int64),
        order,
        item_marks=None if items is None else attribute_marks(items),
    )
    if binary and len(acc):
        head = {c: _stage_value(prep, c) for c in HEAD_COLUMNS}
        prep.head = Encoder(head, STAGE_TYPES, fields=len(EVENT_COLUMNS)).chunks()
        prep.partials = block_partials(
            acc, order, (prep.user_code, user_ids), (prep.item_code, item_ids)
        )
    return prep


def _stage_value(prep: Prepared, column: str) -> Any:
    if column == "event_id":
        return prep.ids
    if column == "order_id":
        return prep.order
    return prep.acc[column]


def _largest_stored_id(conn: Connection) -> bytes | None:
    """The largest ``event_id`` stored (one step down the primary key's index), or None."""
    value = conn.execute(
        text("SELECT event_id FROM events ORDER BY event_id DESC LIMIT 1")
    ).scalar_one_or_none()
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, str):
        return bytes.fromhex(value.replace("-", ""))
    return bytes(value)


def load_batch(
    conn: Connection,
    prep: Prepared,
    batch_id: int,
    window: Window,
    keys: KeyCache | None = None,
) -> Loaded:
    """Persist one prepared block; returns how many events were new and how many duplicates.

    Call after :func:`open_window`, under the ingest lock, so no other writer adds events meanwhile.
    When every id of the block sorts after the largest stored id (the usual case: ids are
    time-prefixed and new events are newer), no stored event can be a duplicate: on PostgreSQL the
    block is copied straight into ``events``, elsewhere the check is skipped. On PostgreSQL a block
    with older ids (a file not in time order, a late batch) is still copied straight in when none
    of those ids is stored (one join of the older ids against the primary key). Otherwise stored
    duplicates are removed from the stage first.
    """
    acc = prep.acc
    if len(acc) == 0:
        return Loaded(0, prep.dup_in_batch)
    pg = conn.dialect.name == "postgresql"
    keys = keys or KeyCache()
    user_keys = keys.users.keys(conn, prep.users)
    item_keys = np.full(1, -1, dtype=np.int64)  # code -1 (no item) reads the last entry
    if prep.items is not None:
        item_keys = np.append(keys.items.keys(conn, prep.items, prep.item_marks), -1)
    has_item = prep.item_code >= 0
    item_key = item_keys[prep.item_code]
    tail = {
        "user_key": pd.Series(user_keys[prep.user_code]),
        "item_key": pd.Series(item_key).astype("Int64").where(has_item),
        "batch_id": pd.Series(np.full(len(acc), batch_id, dtype=np.int64)),
    }
    largest = _largest_stored_id(conn)
    newer = largest is None or prep.min_id > largest
    if pg and not newer and prep.partials is not None:
        assert largest is not None
        newer = not _any_stored(conn, prep.ids, largest)
    coupons = _stage_coupons(conn, prep, tail["user_key"])
    dup_stored = 0
    direct = pg and newer and prep.partials is not None
    if direct:
        copy_binary(conn, "events", [*HEAD_COLUMNS, *tail], _binary_rows(prep, tail))
        inserted = len(acc)
    else:
        create_temp_like(conn, "_stage_events", _STAGE_SQL[conn.dialect.name])
        if pg:
            copy_binary(conn, "_stage_events", [*HEAD_COLUMNS, *tail], _binary_rows(prep, tail))
        else:
            stage = {**{c: _stage_value(prep, c) for c in HEAD_COLUMNS}, **tail}
            write_frame(conn, "_stage_events", stage)
        if not newer:
            dup_stored = _drop_stored(conn, "_stage_events")
            if coupons:
                _drop_stored(conn, "_stage_coupons")
        cols = ", ".join(EVENT_COLUMNS)
        inserted = conn.execute(
            text(f"INSERT INTO events ({cols}) SELECT {cols} FROM _stage_events")
        ).rowcount
    if inserted != len(acc) - dup_stored:
        raise RuntimeError(
            f"concurrent writer: staged {len(acc) - dup_stored} events, inserted {inserted}"
        )
    if coupons:
        window.flush()  # the orders of earlier blocks are known before redeeming
        redeem_coupons(conn, "_stage_coupons")
    if direct:
        part = prep.partials
        assert part is not None
        window.add(part, user_keys, item_keys[:-1], batch_id)
    else:
        # Staged rows first: this block's users (keys already upserted) then count as folded.
        window.flush()
        fold_into_aggregates(conn, "_stage_events")
    return Loaded(inserted, prep.dup_in_batch + dup_stored)


def _any_stored(conn: Connection, ids: np.ndarray, largest: bytes) -> bool:
    """Whether any of ``ids`` (an (n, 16) uint8 array) is stored; only those that do not sort
    after ``largest``, the largest stored id, can be (PostgreSQL)."""
    hi, lo = _halves(ids)
    top_hi = int.from_bytes(largest[:8], "big")
    top_lo = int.from_bytes(largest[8:], "big")
    older = (hi < top_hi) | ((hi == top_hi) & (lo <= top_lo))
    create_temp_like(conn, "_stage_ids", "event_id uuid")
    copy_binary(
        conn,
        "_stage_ids",
        ["event_id"],
        stream(Encoder({"event_id": ids[older]}, {"event_id": "uuid"})),
    )
    found = conn.execute(
        text("SELECT EXISTS (SELECT 1 FROM _stage_ids s JOIN events e USING (event_id))")
    ).scalar_one()
    return bool(found)


def _drop_stored(conn: Connection, table: str) -> int:
    """Remove the staged rows whose event is already stored; returns how many."""
    return int(
        conn.execute(
            text(
                f"DELETE FROM {table} WHERE EXISTS "
                f"(SELECT 1 FROM events e WHERE e.event_id = {table}.event_id)"
            )
        ).rowcount
    )


def _binary_rows(prep: Prepared, tail: dict[str, pd.Series]) -> list[pa.Buffer]:
    head = prep.head
    if head is None:
        head = Encoder(
            {c: _stage_value(prep, c) for c in HEAD_COLUMNS},
            STAGE_TYPES,
            fields=len(EVENT_COLUMNS),
        ).chunks()
    return join_rows(head, Encoder(tail, STAGE_TYPES, fields=0))


def _stage_coupons(conn: Connection, prep: Prepared, user_key: pd.Series) -> int:
    """Stage the block's purchases that carry a coupon code; returns how many."""
    coupon = prep.acc["coupon"]
    rows = (coupon.notna() & (prep.acc["type"] == "purchase")).to_numpy()
    if not rows.any():
        return 0
    create_temp_like(conn, "_stage_coupons", _COUPONS_SQL[conn.dialect.name])
    write_frame(
        conn,
        "_stage_coupons",
        {
            "event_id": prep.ids[rows],
            "user_key": user_key[rows].reset_index(drop=True),
            "type": prep.acc.loc[rows, "type"].reset_index(drop=True),
            "ts": prep.acc.loc[rows, "ts"].reset_index(drop=True),
            "order_id": prep.order[rows].reset_index(drop=True),
            "coupon": coupon[rows].reset_index(drop=True),
        },
    )
    return int(rows.sum())


def open_window(conn: Connection) -> Window:
    """Start a window of blocks in this transaction (the caller holds the ingest lock).

    Load each block with :func:`load_batch`, then call the window's ``flush()`` before commit.
    """
    if conn.dialect.name == "postgresql":
        # Room for the aggregates' hash tables (a block's users and categories) in memory.
        conn.execute(text("SET LOCAL work_mem = '256MB'"))
    return Window(conn, largest_user_key(conn))


def redeem_coupons(conn: Connection, source: str) -> None:
    """Count new purchases that carry a campaign coupon code as its redemptions.

    Once per order (an order whose lines arrived in an earlier block is already counted), only
    by the customer the coupon was issued to, only before it expires, and never beyond its
    usage limit.
    """
    conn.execute(
        text(
            "UPDATE coupons SET used = CASE WHEN used + r.n > usage_limit THEN usage_limit "
            "ELSE used + r.n END FROM (SELECT s.coupon, COUNT(DISTINCT s.order_id) AS n "
            f"FROM {source} s JOIN coupons c ON c.code = s.coupon AND c.user_key = s.user_key "
            "WHERE s.type = 'purchase' AND s.ts <= c.expires_at AND NOT EXISTS "
            "(SELECT 1 FROM user_orders o WHERE o.user_key = s.user_key "
            "AND o.order_id = s.order_id) GROUP BY s.coupon) r WHERE coupons.code = r.coupon"
        )
    )


_QUARANTINE_SQL = {
    "postgresql": "batch_id integer, source text, line bigint, reason varchar(50), detail text, "
    "raw text, user_id varchar(200), fingerprint varchar(32)",
    "sqlite": "batch_id INTEGER, source TEXT, line INTEGER, reason TEXT, detail TEXT, raw TEXT, "
    "user_id TEXT, fingerprint TEXT",
}


def store_quarantine(conn: Connection, rows: dict[str, pd.Series]) -> None:
    """Add quarantined rows; a row already quarantined (same source, line, reason, raw) is kept once."""
    if len(rows["reason"]) == 0:
        return
    key = (
        rows["source"].astype("str")
        + "\x1f"
        + rows["line"].astype("str")
        + "\x1f"
        + rows["reason"].astype("str")
        + "\x1f"
        + rows["raw"].astype("str")
    ).to_numpy(dtype=object)
    h = np.stack(
        [
            pd.util.hash_array(key, hash_key=_K1, categorize=False),
            pd.util.hash_array(key, hash_key=_K2, categorize=False),
        ],
        axis=1,
    )
    fingerprint = np.char.decode(
        np.frombuffer(ids_to_hex(h.astype(">u8").view(np.uint8).reshape(-1, 16)), dtype="S32"),
        "ascii",
    )
    cols = [*rows, "fingerprint"]
    create_temp_like(conn, "_stage_quarantine", _QUARANTINE_SQL[conn.dialect.name])
    write_frame(conn, "_stage_quarantine", {**rows, "fingerprint": pd.Series(fingerprint)})
    conn.execute(
        text(
            f"INSERT INTO quarantine ({', '.join(cols)}) SELECT {', '.join(cols)} "
            "FROM _stage_quarantine WHERE TRUE ON CONFLICT (fingerprint) DO NOTHING"
        )
    )
