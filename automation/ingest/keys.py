"""The store keys of users and items, remembered across the blocks (and calls) of an ingest.

Every block names its users and items by external id; the events carry the store's integer keys.
Upserting a block's every user and item to learn their keys costs a staged ``INSERT ... ON CONFLICT``
plus a join per block, although most of them are already known after the first blocks. A
:class:`KeyCache` keeps the mapping in memory: only ids it has not seen (and items whose name,
category or price changed) go to the database.

Users no store has seen are copied in with ids drawn from the table's sequence, without an
``INSERT ... ON CONFLICT`` or ``RETURNING`` (PostgreSQL), when the cache knows that none of them
can exist: it is *complete* (:attr:`KeyMap.complete`) when it started on an empty table and no
other process added a row since (the table's largest id is still the largest one it learnt; every
writer of ``users`` holds the ingest lock). A unique violation all the same rolls the copy back to
a savepoint and falls back to the upsert.

It stays true because keys never change: a row of ``users`` or ``items`` keeps its id until the
user is erased. Erasure takes the ingest lock and bumps the ``erasure`` lock counter in the same
transaction (:func:`automation.store.erase.erase_user`), so :meth:`KeyCache.check`, called under the
ingest lock at the start of each transaction, forgets everything when that counter moved. Keys
learnt in a transaction that rolls back are forgotten too (:meth:`KeyCache.rollback`): the rows
they named are gone.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pandas as pd
import psycopg
from sqlalchemy import Connection, text

from automation.store.bulk import create_temp_like, read_frame, write_frame
from automation.store.pgcopy import Encoder, copy_binary, stream

_KEYS_SQL = {
    "postgresql": "external_id varchar(200), name text, category varchar(200), price float8, "
    "is_product boolean",
    "sqlite": "external_id TEXT, name TEXT, category TEXT, price REAL, is_product INTEGER",
}
ITEM_UPDATE = (
    "UPDATE SET name = COALESCE(excluded.name, items.name), "
    "category = COALESCE(excluded.category, items.category), "
    "price = COALESCE(excluded.price, items.price)"
)


def upsert_keys(conn: Connection, table: str, attrs: pd.DataFrame, update_sql: str) -> pd.Series:
    """Insert unseen ``external_id``s into ``table``; return external_id -> internal id.

    The keys come back with the insert (``RETURNING``): for new rows, and for every row when
    ``update_sql`` updates the existing ones. Only when some rows already existed and were left
    alone (``NOTHING``) are their keys read with a join.
    """
    cols = list(attrs.columns)
    create_temp_like(conn, "_stage_keys", _KEYS_SQL[conn.dialect.name])
    write_frame(conn, "_stage_keys", {c: attrs[c] for c in cols})
    returned = conn.execute(
        text(
            f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _stage_keys "
            f"WHERE TRUE ORDER BY external_id ON CONFLICT (external_id) DO {update_sql} "
            "RETURNING external_id, id"
        )
    ).all()
    if len(returned) < len(attrs):
        keys = read_frame(
            conn,
            f"SELECT s.external_id, t.id FROM _stage_keys s JOIN {table} t "
            "ON t.external_id = s.external_id",
        )
        return pd.Series(
            keys["id"].to_numpy(dtype="int64"), index=keys["external_id"].astype("str")
        )
    return pd.Series(
        np.fromiter((r[1] for r in returned), dtype=np.int64, count=len(returned)),
        index=pd.Index([str(r[0]) for r in returned], dtype=object),
    )


def insert_new(conn: Connection, table: str, external_ids: np.ndarray) -> np.ndarray | None:
    """Copy rows known to be new into ``table`` (PostgreSQL) with ids drawn from its sequence;
    their ids, in order, or None (nothing written) if one existed after all.

    The ids are a range taken from the sequence at once (moved past it with ``setval``): every
    writer of the table holds the ingest lock, so no ``nextval`` runs meanwhile.
    """
    n = len(external_ids)
    seq = f"pg_get_serial_sequence('{table}', 'id')"
    # One statement; the last value is NULL while the sequence was never used.
    sql = f"SELECT setval({seq}, COALESCE(pg_sequence_last_value({seq}), 0) + :n)"
    top = int(conn.execute(text(sql), {"n": n}).scalar_one())
    # Ids in the external ids' order: both indexes then take the rows in order (~30% less
    # database time than in the block's order).
    order = np.argsort(external_ids, kind="stable")
    ranked = np.arange(top - n + 1, top + 1, dtype=np.int64)
    body = stream(
        Encoder(
            {"id": ranked, "external_id": external_ids[order]},
            {"id": "int8", "external_id": "text"},
        )
    )
    keys = np.empty(n, dtype=np.int64)
    keys[order] = ranked
    savepoint = conn.begin_nested()
    try:
        copy_binary(conn, table, ["id", "external_id"], body)
    except psycopg.errors.UniqueViolation:
        savepoint.rollback()
        return None
    savepoint.commit()
    return keys


def lookup(keys: pd.Series, values: pd.Series) -> np.ndarray:
    """The key of each value (``-1`` where ``keys`` has none)."""
    pos = pd.Index(keys.index).get_indexer(values.astype("str"))
    found = keys.to_numpy()[pos]
    return np.where(pos >= 0, found, -1)


def attribute_marks(items: pd.DataFrame) -> np.ndarray:
    """A 64-bit fingerprint of each item row's name, category and price."""
    cols = [c for c in ("name", "category", "price") if c in items]
    if not cols or len(items) == 0:
        return np.zeros(len(items), dtype=np.uint64)
    return pd.util.hash_pandas_object(items[cols], index=False).to_numpy(dtype=np.uint64)


def _get_all(mapping: dict[str, int], ids: np.ndarray) -> np.ndarray:
    """``mapping[x]`` for each of ``ids`` (-1 where none), as int64."""
    return np.array(list(map(mapping.get, ids, itertools.repeat(-1))), dtype=np.int64)


class KeyMap:
    """External id -> key of one table (``users`` or ``items``), as far as it is known."""

    def __init__(self, table: str, update_sql: str = "NOTHING") -> None:
        self.table = table
        self.update_sql = update_sql
        self.known: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.added: list[str] = []
        self.complete = False  # every row of the table is in ``known`` (see the module docstring)
        self.top = 0  # the largest key learnt

    def keys(
        self, conn: Connection, attrs: pd.DataFrame, marks: np.ndarray | None = None
    ) -> np.ndarray:
        """The key of each row of ``attrs`` (unique ``external_id``s), upserting what is unknown.

        With ``marks`` (items), rows whose attributes differ from the last ones sent are upserted
        too, so a changed name, category or price still reaches the store.
        """
        ids = attrs["external_id"].astype("str").to_numpy(dtype=object)
        got = _get_all(self.known, ids)
        need = got < 0
        if marks is not None:
            need |= _get_all(self.marks, ids) != marks.view(np.int64)
        if not need.any():
            return got
        new_ids = ids[need]
        fresh = None
        if self.complete and marks is None and conn.dialect.name == "postgresql":
            fresh = insert_new(conn, self.table, new_ids)
            self.complete = fresh is not None
        if fresh is None:
            sent = attrs[need]
            mapping = upsert_keys(conn, self.table, sent, self.update_sql)
            fresh = lookup(mapping, sent["external_id"])
            if (fresh < 0).any():
                raise RuntimeError(f"{self.table}: keys missing after the upsert")
        got[need] = fresh
        self.top = max(self.top, int(fresh.max()))
        learnt = new_ids.tolist()
        known = self.known
        self.added.extend(learnt if marks is None else [x for x in learnt if x not in known])
        known.update(zip(learnt, fresh.tolist(), strict=True))
        if marks is not None:
            self.marks.update(
                zip(new_ids.tolist(), marks.view(np.int64)[need].tolist(), strict=True)
            )
        return got

    def clear(self) -> None:
        self.known.clear()
        self.marks.clear()
        self.added.clear()
        self.complete = False
        self.top = 0

    def check(self, conn: Connection, cleared: bool) -> None:
        """Start of a transaction: is the map still :attr:`complete`?"""
        largest = conn.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {self.table}")).scalar()
        if cleared:
            self.complete = not largest
        else:
            self.complete = self.complete and int(largest or 0) == self.top


def _erasures(conn: Connection) -> int:
    """The ``erasure`` lock counter: how many erasures the store has seen."""
    count = conn.execute(text("SELECT count FROM locks WHERE name = 'erasure'")).scalar()
    return int(count or 0)


class KeyCache:
    """The user and item key maps of an ingest (see the module docstring).

    Hold :attr:`lock` from :meth:`check` to the end of the transaction (and its
    :meth:`rollback`): threads sharing a cache (the service) then take turns.
    """

    def __init__(self, max_keys: int = 2_000_000) -> None:
        self.lock = threading.Lock()
        self.max_keys = max_keys
        self.users = KeyMap("users")
        self.items = KeyMap("items", ITEM_UPDATE)
        self.erasures: int | None = None

    def check(self, conn: Connection) -> None:
        """Start of a transaction, under the ingest lock: forget all if a user was erased since
        (or when more than ``max_keys`` keys are held: a long-running service's memory stays
        bounded, at the price of learning the keys again)."""
        erasures = _erasures(conn)
        held = len(self.users.known) + len(self.items.known)
        cleared = erasures != self.erasures or held > self.max_keys
        if cleared:
            self.users.clear()
            self.items.clear()
            self.erasures = erasures
        self.users.check(conn, cleared)
        self.users.added.clear()
        self.items.added.clear()

    def prime(self, conn: Connection) -> bool:
        """Learn every user's key at once (a service starting on a store), if they fit in half
        of ``max_keys``; the map is then :attr:`KeyMap.complete`, so new users are copied in.
        Returns whether it did. The erasure counter is read first: an erasure meanwhile still
        empties the cache at the next :meth:`check`."""
        with self.lock:
            erasures = _erasures(conn)
            n = int(conn.execute(text("SELECT COUNT(*) FROM users")).scalar_one())
            if n > self.max_keys // 2:
                return False
            rows = read_frame(conn, "SELECT external_id, id FROM users")
            users = self.users
            users.clear()
            ids = rows["id"].to_numpy(dtype=np.int64)
            external = rows["external_id"].astype("str").tolist()
            users.known.update(zip(external, ids.tolist(), strict=True))
            users.top = int(ids.max()) if len(ids) else 0
            users.complete = True
            self.erasures = erasures
            return True

    def rollback(self) -> None:
        """The transaction failed: the keys it learnt name rows that were never committed."""
        for keymap in (self.users, self.items):
            for x in keymap.added:
                keymap.known.pop(x, None)
            keymap.marks.clear()
            keymap.added.clear()
            keymap.complete = False
