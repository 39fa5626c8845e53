"""The per-user feature snapshot: a full base plus per-update deltas, time advanced on read.

A refit writes a *base* (``feature_snapshots``): every user's raw features, segment id and the
affinity model. An update writes a *delta* (``feature_snapshot_deltas``) holding only the rows
that changed: the users its ingest batches touched and the users whose segment changed. The
snapshot of the newest version is the base with its deltas applied in order (a later row of a
user replaces an earlier one). Deltas are compacted into a new base when there are many of them
or they hold many rows (:data:`MAX_DELTAS`, :data:`MAX_DELTA_SHARE`).

Time-driven cells are stored as *anchors* rather than values: recency and tenure (and the
inter-purchase time of a user with fewer than two orders, which is their tenure) grow by the
elapsed event time without events, so a cell is stored as ``T - value`` (days since the epoch,
float64) and read at time ``T'`` as ``T' - anchor``. An untouched row is never rewritten, and a
compaction copies rows without re-encoding them: any chain of deltas reads exactly as the same
versions written in full would.

Every write carries a random token; the newest row's token names the whole state. A process
keeps the last state it wrote or read (:func:`load_stored`), so a worker that just wrote a
snapshot does not read it back; a write or an erasure anywhere changes the token.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from automation.features.affinity import AffinityModel

#: Columns that grow with elapsed time (stored as anchors).
GROWING = ("recency_days", "tenure_days", "interpurchase_days", "inactive_days")
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class Compaction:
    """When deltas are folded into a new base: more than ``max_deltas`` of them (0: every update
    writes a full snapshot), or more rows than ``max_share`` of the users."""

    max_deltas: int = 30
    max_share: float = 0.25


def days(at: pd.Timestamp) -> float:
    """Event time as days since the epoch."""
    return pd.Timestamp(at).value / DAY_NS


@dataclass(frozen=True)
class Rows:
    """Stored per-user rows, sorted by ``keys``: values (float32), anchors (float64, ``NaN``
    where a cell does not grow: the value stands) and segment ids."""

    keys: np.ndarray
    values: np.ndarray
    anchors: np.ndarray
    labels: np.ndarray  # object array of segment ids

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, pos: np.ndarray) -> Rows:
        return Rows(self.keys[pos], self.values[pos], self.anchors[pos], self.labels[pos])


def encode(raw: pd.DataFrame, at: pd.Timestamp, labels: np.ndarray) -> Rows:
    """Rows of ``raw`` (features as of ``at``; sorted by user key) in the stored form."""
    cols = list(raw.columns)
    values = np.asfortranarray(raw.to_numpy(dtype=np.float32))  # column-major: see materialise
    anchors = np.full((len(raw), len(GROWING)), np.nan)
    now = days(at)
    for j, name in enumerate(GROWING):
        if name not in cols:
            continue
        v = raw[name].to_numpy(dtype=np.float64)
        grows = np.ones(len(raw), bool)
        if name == "interpurchase_days" and "frequency" in cols:
            grows = raw["frequency"].to_numpy(dtype=np.float64) < 2
        anchors[:, j] = np.where(grows, now - v, np.nan)
    keys = raw.index.to_numpy(dtype=np.int64)
    return Rows(keys, values, anchors, np.asarray(labels, dtype=object))


def materialise(rows: Rows, columns: list[str], at: pd.Timestamp) -> np.ndarray:
    """Float64 features of ``rows`` as of ``at`` (time-driven cells advanced), column-major
    like the stored values: a frame over them reads a column without striding."""
    out = np.asfortranarray(rows.values, dtype=np.float64)
    now = days(at)
    for j, name in enumerate(GROWING):
        if name not in columns:
            continue
        a = rows.anchors[:, j]
        grows = ~np.isnan(a)
        out[grows, columns.index(name)] = now - a[grows]
    return out


def upsert(base: Rows, new: Rows) -> Rows:
    """``base`` with ``new``'s rows replacing or inserted (``new``: unique sorted keys)."""
    if len(new) == 0:
        return base
    pos = np.searchsorted(base.keys, new.keys)
    hit = pos < len(base.keys)
    hit[hit] = base.keys[pos[hit]] == new.keys[hit]
    miss = ~hit
    at, add = pos[miss], new.take(np.flatnonzero(miss))
    out = Rows(  # one pass per array; also a copy when nothing is inserted
        np.insert(base.keys, at, add.keys),
        np.insert(base.values, at, add.values, axis=0),
        np.insert(base.anchors, at, add.anchors, axis=0),
        np.insert(base.labels, at, add.labels),
    )
    if hit.any():
        rows = pos[hit] + np.searchsorted(add.keys, new.keys[hit])
        out.values[rows], out.anchors[rows] = new.values[hit], new.anchors[hit]
        out.labels[rows] = new.labels[hit]
    return out


def _pack(rows: Rows, **extra: np.ndarray) -> bytes:
    codes, names = pd.factorize(pd.Series(rows.labels, dtype=object), use_na_sentinel=False)
    arrays: dict[str, Any] = {
        "user_keys": rows.keys,
        "values": rows.values,
        "anchors": rows.anchors,
        "label_codes": codes.astype(np.int32),
        "label_names": np.asarray([str(n) for n in names], dtype=str),
        **extra,
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(data: bytes, columns: list[str], at: pd.Timestamp) -> tuple[Rows, Any, bool]:
    """Rows, the affinity model's bytes (a base) and whether segment ids were stored."""
    z = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    keys = z["user_keys"].astype(np.int64)
    if "label_codes" in z.files:
        labels = z["label_names"].astype(object)[z["label_codes"]]
    elif "labels" in z.files:  # a full snapshot written before deltas
        labels = z["labels"].astype(object)
    else:
        labels = np.full(len(keys), "", dtype=object)
    values = np.asfortranarray(z["values"], dtype=np.float32)
    if "anchors" in z.files:
        anchors = z["anchors"]
        if anchors.shape[1] < len(GROWING):  # written before a growing column was added
            pad = np.full((len(keys), len(GROWING) - anchors.shape[1]), np.nan)
            anchors = np.hstack([anchors, pad])
        rows = Rows(keys, values, anchors, labels)
    else:  # values as of ``at``: anchor the time-driven cells there
        raw = pd.DataFrame(values.astype(np.float64), index=keys, columns=columns)
        rows = encode(raw, at, labels)
        rows = Rows(keys, values, rows.anchors, labels)
    order = np.argsort(keys, kind="stable")
    if (order != np.arange(len(keys))).any():
        rows = rows.take(order)
    labelled = "label_codes" in z.files or "labels" in z.files
    return rows, z["affinity"].tobytes() if "affinity" in z.files else None, labelled


@dataclass(frozen=True)
class Stored:
    """The newest version's snapshot in stored form, and where it came from."""

    rows: Rows
    columns: list[str]
    at: pd.Timestamp
    affinity: AffinityModel
    version: int  # the newest version written (base or delta)
    base_version: int
    n_deltas: int
    delta_rows: int
    token: str
    labelled: bool = True  # False: a snapshot written before it carried segment ids

    def frame(self, at: pd.Timestamp | None = None) -> pd.DataFrame:
        values = materialise(self.rows, self.columns, self.at if at is None else at)
        index = pd.Index(self.rows.keys, name="user_key")
        return pd.DataFrame(values, index=index, columns=self.columns, copy=False)

    def positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each of ``keys`` and whether it is stored at all."""
        pos = np.searchsorted(self.rows.keys, keys)
        hit = pos < len(self.rows.keys)
        hit[hit] = self.rows.keys[pos[hit]] == keys[hit]
        return np.where(hit, pos, 0), hit

    def frame_of(self, keys: np.ndarray) -> pd.DataFrame:
        """The stored features of ``keys`` as of :attr:`at` (``NaN`` rows for unknown users)."""
        keys = np.asarray(keys, dtype=np.int64)
        pos, hit = self.positions(keys)
        values = materialise(self.rows.take(pos), self.columns, self.at)
        values[~hit] = np.nan
        return pd.DataFrame(values, index=pd.Index(keys, name="user_key"), columns=self.columns)


_last: Stored | None = None  # the last state this process wrote or read


def forget() -> None:
    """Drop the in-process copy (the next read comes from the database)."""
    global _last
    _last = None


def _remember(stored: Stored) -> Stored:
    global _last
    _last = stored
    return stored


def _ts(conn: Connection, at: pd.Timestamp) -> Any:
    from automation.features.build import ts_param

    return ts_param(conn, at)


def _to_ts(value: Any) -> pd.Timestamp:
    return pd.Timestamp(pd.to_datetime(pd.Series([value]), utc=True, format="ISO8601").iloc[0])


def _cols(value: Any) -> list[str]:
    return [str(c) for c in (json.loads(value) if isinstance(value, str) else value)]


def save_base(
    conn: Connection,
    version_id: int,
    at: pd.Timestamp,
    rows: Rows,
    columns: list[str],
    model: AffinityModel,
) -> Stored:
    """A full snapshot for ``version_id``; older bases and deltas are deleted."""
    affinity = np.frombuffer(model.to_bytes(), dtype=np.uint8)
    token = uuid.uuid4().hex
    conn.execute(text("DELETE FROM feature_snapshot_deltas"))
    conn.execute(text("DELETE FROM feature_snapshots"))
    conn.execute(
        text(
            "INSERT INTO feature_snapshots (version_id, as_of, columns, data, token) "
            "VALUES (:v, :at, :c, :d, :t)"
        ),
        {
            "v": version_id,
            "at": _ts(conn, at),
            "c": json.dumps(columns),
            "d": _pack(rows, affinity=affinity),
            "t": token,
        },
    )
    return _remember(Stored(rows, columns, at, model, version_id, version_id, 0, 0, token))


def save_delta(
    conn: Connection,
    prev: Stored,
    version_id: int,
    at: pd.Timestamp,
    rows: Rows,
    changed: Rows,
    policy: Compaction | None = None,
) -> Stored:
    """``version_id``'s snapshot: ``rows`` (all users), of which ``changed`` differ from
    ``prev``'s; stored as a delta on ``prev``'s base, or compacted into a new base."""
    policy = policy or Compaction()
    n_deltas, delta_rows = prev.n_deltas + 1, prev.delta_rows + len(changed)
    if n_deltas > policy.max_deltas or delta_rows > policy.max_share * max(len(rows), 1):
        return save_base(conn, version_id, at, rows, prev.columns, prev.affinity)
    token = uuid.uuid4().hex
    conn.execute(
        text(
            "INSERT INTO feature_snapshot_deltas (version_id, base_version_id, as_of, n_rows, "
            "data, token) VALUES (:v, :b, :at, :n, :d, :t)"
        ),
        {
            "v": version_id,
            "b": prev.base_version,
            "at": _ts(conn, at),
            "n": len(changed),
            "d": _pack(changed),
            "t": token,
        },
    )
    stored = Stored(
        rows, prev.columns, at, prev.affinity, version_id, prev.base_version, n_deltas,
        delta_rows, token,
    )  # fmt: skip
    return _remember(stored)


def _newest(conn: Connection) -> tuple[Any, Any] | None:
    base = conn.execute(
        text(
            "SELECT version_id, as_of, columns, token FROM feature_snapshots "
            "ORDER BY version_id DESC LIMIT 1"
        )
    ).first()
    if base is None:
        return None
    delta = conn.execute(
        text(
            "SELECT version_id, token FROM feature_snapshot_deltas WHERE base_version_id = :b "
            "ORDER BY version_id DESC LIMIT 1"
        ),
        {"b": base.version_id},
    ).first()
    return base, delta


def load_stored(conn: Connection) -> Stored | None:
    """The newest version's snapshot (from memory when this process holds the same one)."""
    newest = _newest(conn)
    if newest is None:
        return None
    base, delta = newest
    token = (delta or base).token
    last = _last
    if token is not None and last is not None and last.token == token:
        return last
    columns = _cols(base.columns)
    base_at = _to_ts(base.as_of)
    data = conn.execute(
        text("SELECT data FROM feature_snapshots WHERE version_id = :v"), {"v": base.version_id}
    ).scalar_one()
    rows, affinity, labelled = _unpack(data, columns, base_at)
    deltas = conn.execute(
        text(
            "SELECT version_id, as_of, n_rows, data FROM feature_snapshot_deltas "
            "WHERE base_version_id = :b ORDER BY version_id"
        ),
        {"b": base.version_id},
    ).all()
    at, version, n_rows = base_at, int(base.version_id), 0
    parts = [_unpack(d.data, columns, _to_ts(d.as_of))[0] for d in deltas]
    if parts:
        at, version = _to_ts(deltas[-1].as_of), int(deltas[-1].version_id)
        n_rows = sum(int(d.n_rows) for d in deltas)
        rows = upsert(rows, _last_per_key(parts))
    model = AffinityModel.from_bytes(affinity)
    stored = Stored(
        rows, columns, at, model, version, int(base.version_id), len(parts), n_rows, token or "",
        labelled,
    )  # fmt: skip
    return _remember(stored) if token is not None else stored


def _last_per_key(parts: list[Rows]) -> Rows:
    """The rows of several deltas (oldest first) with each user's newest row, sorted."""
    cat = Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in Rows.__dataclass_fields__))
    rev = np.arange(len(cat))[::-1]
    _, first = np.unique(cat.keys[rev], return_index=True)  # sorted keys, newest occurrence
    return cat.take(rev[first])


def drop_user(conn: Connection, user_key: int) -> None:
    """Remove ``user_key`` from every stored base and delta (an erasure)."""
    for table in ("feature_snapshots", "feature_snapshot_deltas"):
        for row in conn.execute(
            text(f"SELECT version_id, data FROM {table}")  # noqa: S608
        ).all():
            z = np.load(io.BytesIO(bytes(row.data)), allow_pickle=False)
            keep = z["user_keys"] != user_key
            if keep.all():
                continue
            arrays = {name: z[name] for name in z.files}
            for name in ("user_keys", "values", "anchors", "labels", "label_codes"):
                if name in arrays:
                    arrays[name] = arrays[name][keep]
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            conn.execute(
                text(f"UPDATE {table} SET data = :d, token = :t WHERE version_id = :v"),  # noqa: S608
                {"d": buf.getvalue(), "t": uuid.uuid4().hex, "v": row.version_id},
            )
    newest = _newest(conn)
    if newest is not None:  # whatever a process holds in memory is stale now
        base, delta = newest
        table = "feature_snapshot_deltas" if delta is not None else "feature_snapshots"
        conn.execute(
            text(f"UPDATE {table} SET token = :t WHERE version_id = :v"),  # noqa: S608
            {"t": uuid.uuid4().hex, "v": (delta or base).version_id},
        )
    forget()


@dataclass
class Snapshot:
    """The per-user state of the newest version: raw features and segment ids."""

    raw: pd.DataFrame
    at: pd.Timestamp
    affinity: AffinityModel
    labels: pd.Series | None  # segment id per user key


def save_snapshot(
    conn: Connection,
    version_id: int,
    at: pd.Timestamp,
    raw: pd.DataFrame,
    model: AffinityModel,
    labels: np.ndarray,
) -> Stored:
    """A full snapshot of ``raw`` (features as of ``at``) and ``labels`` (a refit)."""
    labels = np.asarray(labels, dtype=object)
    if not raw.index.is_monotonic_increasing:
        order = np.argsort(raw.index.to_numpy(dtype=np.int64), kind="stable")
        raw, labels = raw.iloc[order], labels[order]
    rows = encode(raw, at, labels)
    return save_base(conn, version_id, at, rows, [str(c) for c in raw.columns], model)


def load_snapshot(conn: Connection) -> Snapshot | None:
    """The newest version's features (as of its time) and segment ids."""
    stored = load_stored(conn)
    if stored is None:
        return None
    raw = stored.frame()
    return Snapshot(raw, stored.at, stored.affinity, pd.Series(stored.rows.labels, index=raw.index))
