"""Interactions: the events a recommender learns from, as compact arrays.

An :class:`Interactions` holds one row per event (user index, item index, type code, age in days
before ``as_of``, order index), the catalogue of the items that occur in those events (id, name,
category, price, whether it is a product) and, where known, every user's segment. The sparse
matrices every model needs (weighted interactions, purchases, refunds, baskets) are derived from
those arrays on demand; nothing is read from the store here (see :mod:`automation.recommend.store`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from automation.errors import ValidationError

TYPES = ("view", "cart", "remove", "purchase", "refund", "rating")
TYPE_CODE = {t: i for i, t in enumerate(TYPES)}
PURCHASE = TYPE_CODE["purchase"]
REFUND = TYPE_CODE["refund"]
DEFAULT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "cart": 3.0,
    "remove": 0.0,
    "purchase": 5.0,
    "refund": 0.0,
    "rating": 2.0,
}
DAY_SECONDS = 86_400.0

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


def decay(age_days: FloatArray, half_life: float | None) -> FloatArray:
    """``0.5 ** (age / half_life)`` (ages below zero count as zero); ``None`` means no decay."""
    if half_life is None or half_life <= 0:
        return np.ones_like(age_days, dtype=np.float64)
    return np.power(0.5, np.clip(age_days, 0.0, None) / float(half_life))


@dataclass
class Catalogue:
    """The recommendable items: external ids, names, categories ('' if none), prices, products."""

    item_ids: NDArray[np.str_]
    names: NDArray[np.str_]
    categories: NDArray[np.str_]
    prices: FloatArray
    is_product: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        """External item id -> position."""
        return {str(v): i for i, v in enumerate(self.item_ids.tolist())}


@dataclass
class Interactions:
    """Events as arrays, with the catalogue and the users' segments.

    Build one with :meth:`from_frame` (any events table) or
    :func:`automation.recommend.store.load_interactions` (the store).
    """

    user_ids: NDArray[np.str_]
    catalogue: Catalogue
    user: NDArray[np.int32]
    item: NDArray[np.int32]
    kind: NDArray[np.int8]
    age_days: FloatArray
    order: IntArray
    as_of: pd.Timestamp
    segments: NDArray[np.str_] = field(default_factory=lambda: np.array([], dtype=str))
    segment_names: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frame(
        cls,
        events: pd.DataFrame,
        items: pd.DataFrame | None = None,
        segments: Mapping[str, str] | pd.Series | None = None,
        segment_names: Mapping[str, str] | None = None,
        as_of: pd.Timestamp | str | None = None,
    ) -> Interactions:
        """Interactions from an events frame.

        Parameters
        ----------
        events : DataFrame
            Columns ``user_id``, ``item_id``, ``type`` (canonical names) and ``timestamp``;
            optional ``order_id`` (a purchase without one belongs to its user and instant).
            Rows without an item are ignored.
        items : DataFrame, optional
            ``item_id`` with optional ``name``, ``category``, ``price``, ``is_product``.
        segments : mapping or Series, optional
            User id -> segment id (users missing here have no segment yet).
        segment_names : mapping, optional
            Segment id -> readable name.
        as_of : timestamp, optional
            Events after it are dropped; ages are measured from it (default: the newest event).
        """
        missing = {"user_id", "item_id", "type", "timestamp"} - set(events.columns)
        if missing:
            raise ValidationError(f"events: missing columns {sorted(missing)}")
        ev = events[events["item_id"].notna()]
        ts = pd.to_datetime(ev["timestamp"], utc=True, format="ISO8601")
        at = (
            _utc(as_of) if as_of is not None else (ts.max() if len(ts) else pd.Timestamp.now("UTC"))
        )
        keep = (ts <= at).to_numpy()
        ev, ts = ev[keep], ts[keep]
        codes = ev["type"].astype(str).map(TYPE_CODE)
        if codes.isna().any():
            bad = ev["type"][codes.isna()].iloc[0]
            raise ValidationError(f"type={bad!r} should be one of {', '.join(TYPES)}")
        users, u_idx = np.unique(ev["user_id"].astype(str).to_numpy(), return_inverse=True)
        item_codes, i_idx = np.unique(ev["item_id"].astype(str).to_numpy(), return_inverse=True)
        ages = np.asarray((at - ts).dt.total_seconds() / DAY_SECONDS, dtype=np.float64)
        if "order_id" in ev.columns:
            order_key = ev["order_id"].astype("string").fillna("")
        else:
            order_key = pd.Series("", index=ev.index, dtype="string")
        blank = (order_key == "").to_numpy()
        stamp = ev["user_id"].astype(str) + "@" + ts.astype("int64").astype(str)
        order_key = order_key.where(~blank, stamp.astype("string"))
        _, o_idx = np.unique(order_key.to_numpy(dtype=str), return_inverse=True)
        order = np.where(codes.to_numpy() == PURCHASE, o_idx, -1).astype(np.int64)
        cat = _catalogue(item_codes, items)
        seg = _segments_for(users, segments)
        return cls(
            user_ids=users.astype(str),
            catalogue=cat,
            user=u_idx.astype(np.int32),
            item=i_idx.astype(np.int32),
            kind=np.asarray(codes, dtype=np.int8),
            age_days=ages,
            order=order,
            as_of=at,
            segments=seg,
            segment_names=dict(segment_names or {}),
        )

    # ------------------------------------------------------------------ shapes
    @property
    def n_users(self) -> int:
        """Distinct users."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Items in the catalogue."""
        return len(self.catalogue)

    @property
    def n_events(self) -> int:
        """Events kept."""
        return len(self.user)

    def has_segments(self) -> bool:
        """Whether any user has a segment."""
        return len(self.segments) == self.n_users and bool((self.segments != "").any())

    # ------------------------------------------------------------------ matrices
    def _matrix(self, values: FloatArray, mask: NDArray[np.bool_] | None = None) -> sp.csr_matrix:
        u, i = self.user, self.item
        if mask is not None:
            u, i, values = u[mask], i[mask], values[mask]
        m = sp.csr_matrix((values.astype(np.float64), (u, i)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.eliminate_zeros()
        return m

    def weighted(
        self, weights: Mapping[str, float] | None = None, half_life: float | None = None
    ) -> sp.csr_matrix:
        """Users x items: the sum over events of the type's weight times the time decay."""
        w = {**DEFAULT_WEIGHTS, **(weights or {})}
        per_type = np.array([w[t] for t in TYPES], dtype=np.float64)
        return self._matrix(per_type[self.kind] * decay(self.age_days, half_life))

    def purchases(self) -> sp.csr_matrix:
        """Users x items: number of purchase events."""
        return self._matrix(np.ones(self.n_events), self.kind == PURCHASE)

    def refunds(self) -> sp.csr_matrix:
        """Users x items: number of refund events."""
        return self._matrix(np.ones(self.n_events), self.kind == REFUND)

    def last_purchase_age(self) -> sp.csr_matrix:
        """Users x items: days since the newest purchase, plus one (so that today is stored)."""
        mask = self.kind == PURCHASE
        frame = (
            pd.DataFrame({"u": self.user[mask], "i": self.item[mask], "a": self.age_days[mask]})
            .groupby(["u", "i"], sort=False)["a"]
            .min()
        )
        u = frame.index.get_level_values(0).to_numpy()
        i = frame.index.get_level_values(1).to_numpy()
        m = sp.csr_matrix(
            (np.clip(frame.to_numpy(), 0, None) + 1.0, (u, i)), shape=(self.n_users, self.n_items)
        )
        return m

    def baskets(self, half_life: float | None = None) -> sp.csr_matrix:
        """Orders x items (binary, optionally decayed by the order's age)."""
        mask = (self.kind == PURCHASE) & (self.order >= 0)
        orders, o_idx = np.unique(self.order[mask], return_inverse=True)
        vals = decay(self.age_days[mask], half_life)
        m = sp.csr_matrix((vals, (o_idx, self.item[mask])), shape=(len(orders), self.n_items))
        m.sum_duplicates()
        m.data = np.minimum(m.data, 1.0)
        return m

    def orders_per_user(self) -> IntArray:
        """Distinct orders (purchases) of each user."""
        mask = (self.kind == PURCHASE) & (self.order >= 0)
        pairs = np.unique(np.stack([self.user[mask].astype(np.int64), self.order[mask]]), axis=1)
        return np.bincount(pairs[0], minlength=self.n_users).astype(np.int64)

    def to_frame(self) -> pd.DataFrame:
        """The events as a frame (``user_id``, ``item_id``, ``type``, ``timestamp``, ``order_id``)."""
        ts = self.as_of - pd.to_timedelta(self.age_days, unit="D")
        return pd.DataFrame(
            {
                "user_id": self.user_ids[self.user],
                "item_id": self.catalogue.item_ids[self.item],
                "type": np.asarray(TYPES, dtype=object)[self.kind],
                "timestamp": ts,
                "order_id": pd.Series(self.order.astype(str)).where(self.order >= 0, None),
            }
        )


def _utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _catalogue(item_codes: NDArray[Any], items: pd.DataFrame | None) -> Catalogue:
    n = len(item_codes)
    meta = pd.DataFrame(index=pd.Index(item_codes.astype(str), name="item_id"))
    if items is not None and len(items):
        it = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id")
        meta = meta.join(it.set_index("item_id"), how="left")
    names = meta["name"] if "name" in meta else pd.Series(index=meta.index, dtype=object)
    cats = meta["category"] if "category" in meta else pd.Series(index=meta.index, dtype=object)
    prices = meta["price"] if "price" in meta else pd.Series(np.nan, index=meta.index)
    prod = meta["is_product"] if "is_product" in meta else pd.Series(True, index=meta.index)
    return Catalogue(
        item_ids=item_codes.astype(str),
        names=names.fillna(pd.Series(meta.index, index=meta.index)).astype(str).to_numpy(str),
        categories=cats.fillna("").astype(str).to_numpy(str),
        prices=pd.to_numeric(prices, errors="coerce").to_numpy(dtype=np.float64)
        if n
        else np.zeros(0),
        is_product=prod.map(_truthy).to_numpy(dtype=bool) if n else np.zeros(0, dtype=bool),
    )


def _truthy(value: Any) -> bool:
    if value is None or (isinstance(value, float) and value != value):
        return True
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "f", "no")
    return bool(value)


def _segments_for(
    users: NDArray[Any], segments: Mapping[str, str] | pd.Series | None
) -> NDArray[np.str_]:
    if segments is None:
        return np.full(len(users), "", dtype=object).astype(str)
    series = segments if isinstance(segments, pd.Series) else pd.Series(dict(segments))
    series.index = series.index.astype(str)
    out = series.reindex(users.astype(str)).fillna("").astype(str)
    return out.to_numpy(dtype=str)
