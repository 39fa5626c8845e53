"""The store keys of users and items, remembered across the blocks (and calls) of an ingest.

Every block names its users and items by external id; the events carry the store's integer keys.
Upserting a block's every user and item to learn their keys costs a staged ``INSERT ... ON CONFLICT``
plus a join per block, although most of them are already known after the first blocks. A
:class:`KeyCache` keeps the mapping in memory: only ids it has not seen (and items whose name,
category or price changed) go to the database.

It stays true because keys never change: a row of ``users`` or ``items`` keeps its id until the
user is erased. Erasure takes the ingest lock and bumps the ``erasure`` lock counter in the same
transaction (:func:`automation.store.erase.erase_user`), so :meth:`KeyCache.check`, called under the
ingest lock at the start of each transaction, forgets everything when that counter moved. Keys
learnt in a transaction that rolls back are forgotten too (:meth:`KeyCache.rollback`): the rows
they named are gone.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from automation.store.bulk import create_temp_like, read_frame, write_frame

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


class KeyMap:
    """External id -> key of one table (``users`` or ``items``), as far as it is known."""

    def __init__(self, table: str, update_sql: str = "NOTHING") -> None:
        self.table = table
        self.update_sql = update_sql
        self.known: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.added: list[str] = []

    def keys(
        self, conn: Connection, attrs: pd.DataFrame, marks: np.ndarray | None = None
    ) -> np.ndarray:
        """The key of each row of ``attrs`` (unique ``external_id``s), upserting what is unknown.

        With ``marks`` (items), rows whose attributes differ from the last ones sent are upserted
        too, so a changed name, category or price still reaches the store.
        """
        ids = attrs["external_id"].astype("str").to_numpy(dtype=object)
        n = len(ids)
        get = self.known.get
        got = np.fromiter((get(x, -1) for x in ids), dtype=np.int64, count=n)
        need = got < 0
        if marks is not None:
            mget = self.marks.get
            seen = np.fromiter((mget(x, -1) for x in ids), dtype=np.int64, count=n)
            need |= seen != marks.view(np.int64)
        if not need.any():
            return got
        sent = attrs[need]
        mapping = upsert_keys(conn, self.table, sent, self.update_sql)
        fresh = lookup(mapping, sent["external_id"])
        if (fresh < 0).any():
            raise RuntimeError(f"{self.table}: keys missing after the upsert")
        got[need] = fresh
        new_ids = ids[need]
        for x, k in zip(new_ids.tolist(), fresh.tolist(), strict=True):
            if x not in self.known:
                self.added.append(x)
            self.known[x] = k
        if marks is not None:
            self.marks.update(
                zip(new_ids.tolist(), marks.view(np.int64)[need].tolist(), strict=True)
            )
        return got

    def clear(self) -> None:
        self.known.clear()
        self.marks.clear()
        self.added.clear()


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
        count = conn.execute(text("SELECT count FROM locks WHERE name = 'erasure'")).scalar()
        erasures = int(count or 0)
        held = len(self.users.known) + len(self.items.known)
        if erasures != self.erasures or held > self.max_keys:
            self.users.clear()
            self.items.clear()
            self.erasures = erasures
        self.users.added.clear()
        self.items.added.clear()

    def rollback(self) -> None:
        """The transaction failed: the keys it learnt name rows that were never committed."""
        for keymap in (self.users, self.items):
            for x in keymap.added:
                keymap.known.pop(x, None)
            keymap.marks.clear()
            keymap.added.clear()
