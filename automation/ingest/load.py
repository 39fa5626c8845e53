"""Bulk load of validated events: ids, user/item keys, staging, de-duplication, aggregates.

One batch is one transaction, under the ingest lock the caller holds
(:func:`automation.store.locks.acquire_lock`): users and items are upserted, then the batch is staged in a
temporary table (``COPY`` on PostgreSQL), rows already stored are removed from the stage and
counted as duplicates, the rest go into ``events`` in one ``INSERT ... SELECT`` (the primary key
enforces uniqueness), and the running aggregates are folded from the stage. No Python loop over
rows touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from automation.features.aggregates import aggregate_upserts, fold_into_aggregates
from automation.store.bulk import create_temp_like, ids_to_hex, read_frame, write_frame

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
_KEYS_SQL = {
    "postgresql": "external_id varchar(200), name text, category varchar(200), price float8, "
    "is_product boolean",
    "sqlite": "external_id TEXT, name TEXT, category TEXT, price REAL, is_product INTEGER",
}


@dataclass
class Loaded:
    inserted: int
    duplicates: int


def event_ids(acc: pd.DataFrame) -> np.ndarray:
    """Deterministic 16-byte ids, as an (n, 16) uint8 array.

    48 bits of the event time in milliseconds (time-ordered, like UUIDv7, so bulk inserts append
    to the index instead of scattering) followed by 80 bits of a hash: of the source
    ``event_id`` when the row has one (an event id names one event at one time), else of the
    canonical fields, so re-ingesting the same rows yields the same ids.
    """
    n = len(acc)
    out = np.empty((n, 16), dtype=np.uint8)
    if n == 0:
        return out
    given = acc["event_id"].notna().to_numpy()
    ms = (acc["ts"].astype("int64").to_numpy() // 1000).astype(">u8")
    out[:, :6] = ms.view(np.uint8).reshape(n, 8)[:, 2:]
    h1 = np.empty(n, dtype=np.uint64)
    h2 = np.empty(n, dtype=np.uint64)
    if given.any():
        ids = acc.loc[given, "event_id"].astype("str").to_numpy(dtype=object)
        h1[given] = pd.util.hash_array(ids, hash_key=_K1)
        h2[given] = pd.util.hash_array(ids, hash_key=_K2)
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
        h1[~given] = pd.util.hash_pandas_object(frame, index=False, hash_key=_K1).to_numpy()
        h2[~given] = pd.util.hash_pandas_object(frame, index=False, hash_key=_K2).to_numpy()
    out[:, 6:14] = h1.astype(">u8").view(np.uint8).reshape(n, 8)
    out[:, 14:] = h2.astype(">u8").view(np.uint8).reshape(n, 8)[:, :2]
    return out


def upsert_keys(conn: Connection, table: str, attrs: pd.DataFrame, update_sql: str) -> pd.Series:
    """Insert unseen ``external_id``s into ``table``; return external_id -> internal id."""
    cols = list(attrs.columns)
    create_temp_like(conn, "_stage_keys", _KEYS_SQL[conn.dialect.name])
    write_frame(conn, "_stage_keys", {c: attrs[c] for c in cols})
    conn.execute(
        text(
            f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _stage_keys "
            f"WHERE TRUE ON CONFLICT (external_id) DO {update_sql}"
        )
    )
    keys = read_frame(
        conn,
        f"SELECT s.external_id, t.id FROM _stage_keys s JOIN {table} t "
        "ON t.external_id = s.external_id",
    )
    return pd.Series(keys["id"].to_numpy(dtype="int64"), index=keys["external_id"].astype("str"))


def _lookup(keys: pd.Series, values: pd.Series) -> np.ndarray:
    pos = pd.Index(keys.index).get_indexer(values.astype("str"))
    found = keys.to_numpy()[pos]
    return np.where(pos >= 0, found, -1)


def load_batch(
    conn: Connection, acc: pd.DataFrame, batch_id: int, non_product: object | None
) -> Loaded:
    """Persist accepted rows of one batch; returns how many were new and how many duplicates."""
    ids = event_ids(acc)
    pair = pd.DataFrame(ids.view("<u8").reshape(len(acc), 2))
    dup_in_batch = pair.duplicated().to_numpy()
    acc = acc[~dup_in_batch].reset_index(drop=True)
    ids = ids[~dup_in_batch]
    if len(acc) == 0:
        return Loaded(0, int(dup_in_batch.sum()))

    users = pd.DataFrame({"external_id": acc["user_id"].drop_duplicates()})
    user_keys = upsert_keys(conn, "users", users, "NOTHING")

    item_key = np.full(len(acc), -1, dtype=np.int64)
    has_item = acc["item_id"].notna().to_numpy()
    if has_item.any():
        items = (
            acc.loc[has_item, ["item_id", "item_name", "category", "price"]]
            .groupby("item_id", sort=False)
            .last()
            .reset_index()
            .rename(columns={"item_id": "external_id", "item_name": "name"})
        )
        pattern = non_product
        items["is_product"] = (
            ~items["external_id"].str.match(pattern).fillna(False).astype(bool)  # type: ignore[arg-type]
            if pattern is not None
            else True
        )
        item_keys = upsert_keys(
            conn,
            "items",
            items,
            "UPDATE SET name = COALESCE(excluded.name, items.name), "
            "category = COALESCE(excluded.category, items.category), "
            "price = COALESCE(excluded.price, items.price)",
        )
        item_key[has_item] = _lookup(item_keys, acc.loc[has_item, "item_id"])

    is_line = acc["type"].isin(["purchase", "refund"])
    # A purchase without an order id belongs to its session, else to its instant.
    order = acc["order_id"].where(~is_line, acc["order_id"].fillna(acc["session_id"]))
    no_order = (is_line & order.isna()).to_numpy()
    if no_order.any():
        order = order.astype("object")
        order[no_order] = "@" + acc.loc[no_order, "ts"].astype("str")
    stage = {
        "event_id": ids,
        "user_key": pd.Series(_lookup(user_keys, acc["user_id"])),
        "type": acc["type"],
        "ts": acc["ts"],
        "item_key": pd.Series(item_key).astype("Int64").where(has_item),
        "category": acc["category"],
        "quantity": acc["quantity"],
        "price": acc["price"],
        "revenue": acc["revenue"],
        "rating": acc["rating"],
        "session_id": acc["session_id"],
        "order_id": order,
        "batch_id": pd.Series(np.full(len(acc), batch_id, dtype=np.int64)),
    }
    create_temp_like(conn, "_stage_events", _STAGE_SQL[conn.dialect.name])
    write_frame(conn, "_stage_events", stage)
    cols = ", ".join(EVENT_COLUMNS)
    if conn.dialect.name == "postgresql":
        # One statement: insert the new events, and fold exactly those (RETURNING) into the
        # aggregates as data-modifying CTEs. Each event is written once and probed once.
        upserts = ",\n".join(
            f"agg_{i} AS ({stmt})" for i, stmt in enumerate(aggregate_upserts("ins"))
        )
        inserted = int(
            conn.execute(
                text(
                    f"WITH ins AS (INSERT INTO events ({cols}) SELECT {cols} FROM _stage_events "
                    f"ON CONFLICT (event_id) DO NOTHING RETURNING {cols}),\n{upserts}\n"
                    "SELECT COUNT(*) FROM ins"
                )
            ).scalar_one()
        )
        dup_stored = len(acc) - inserted
    else:
        dup_stored = conn.execute(
            text(
                "DELETE FROM _stage_events WHERE EXISTS "
                "(SELECT 1 FROM events e WHERE e.event_id = _stage_events.event_id)"
            )
        ).rowcount
        inserted = conn.execute(
            text(
                f"INSERT INTO events ({cols}) SELECT {cols} FROM _stage_events "
                "WHERE TRUE ON CONFLICT (event_id) DO NOTHING"
            )
        ).rowcount
        if inserted != len(acc) - dup_stored:
            raise RuntimeError(
                f"concurrent writer: staged {len(acc) - dup_stored} events, inserted {inserted}"
            )
        fold_into_aggregates(conn, "_stage_events")
    return Loaded(inserted, int(dup_in_batch.sum()) + dup_stored)


_QUARANTINE_SQL = {
    "postgresql": "batch_id integer, source text, line bigint, reason varchar(50), detail text, "
    "raw text, fingerprint varchar(32)",
    "sqlite": "batch_id INTEGER, source TEXT, line INTEGER, reason TEXT, detail TEXT, raw TEXT, "
    "fingerprint TEXT",
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
        [pd.util.hash_array(key, hash_key=_K1), pd.util.hash_array(key, hash_key=_K2)], axis=1
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
