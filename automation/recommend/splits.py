"""Time splits for evaluation: train before a date, test on the purchases after it.

Test users are the users with history before the split who buy after it. Two protocols:

``repeat``     every product bought in the window is relevant; lists may repeat past purchases.
``new-items``  items the user bought before the split are left out of both the list
               (``filter_seen``) and the relevant set; users left with nothing are dropped.

A user is *cold* with at most :data:`COLD_ORDERS` orders before the split. Only products that
exist before the split can be recommended; products first sold after it still count as relevant
(a model cannot know them, which every model pays alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from automation.errors import ValidationError
from automation.recommend.data import IntArray, Interactions
from automation.recommend.store import SegmentMap

PROTOCOLS = ("repeat", "new-items")
COLD_ORDERS = 2


@dataclass
class ProtocolData:
    """Evaluated users (rows in the training interactions), their relevant items, coldness."""

    rows: IntArray
    truth: sp.csr_matrix  # users x (train items + items first sold after the split)
    cold: NDArray[np.bool_]
    segments: NDArray[np.str_]


@dataclass
class SplitData:
    """One split: the training interactions and the evaluation data of each protocol."""

    at: pd.Timestamp
    end: pd.Timestamp | None
    train: Interactions
    repeat: ProtocolData
    new_items: ProtocolData

    def protocol(self, name: str) -> ProtocolData:
        """The evaluation data of protocol ``name`` (``repeat`` or ``new-items``)."""
        if name not in PROTOCOLS:
            raise ValidationError(f"protocol={name!r} should be one of {PROTOCOLS}")
        return self.repeat if name == "repeat" else self.new_items


def make_split(
    events: pd.DataFrame,
    items: pd.DataFrame,
    at: pd.Timestamp,
    segments: SegmentMap,
    end: pd.Timestamp | None = None,
) -> SplitData:
    """Split ``events`` (``user_id``, ``item_id``, ``type``, ``timestamp``, ``order_id``) at ``at``;
    the test window is ``[at, end)`` (``end`` None: to the newest event)."""
    ts = pd.to_datetime(events["timestamp"], utc=True, format="ISO8601")
    before = events[(ts < at).to_numpy()]
    if before.empty:
        raise ValidationError(f"split_at={at.isoformat()}: no events before it")
    window = np.array(ts >= at, dtype=bool)
    if end is not None:
        window &= (ts < end).to_numpy()
    after = events[window & (events["type"] == "purchase").to_numpy()]
    if after.empty:
        raise ValidationError(f"split_at={at.isoformat()}: no purchases after it to test on")
    train = Interactions.from_frame(
        before,
        items,
        segments=segments.members if len(segments.members) else None,
        segment_names=segments.names,
        as_of=at,
    )
    product = _products(items)
    after = after[after["item_id"].astype(str).map(product).fillna(True).astype(bool)]
    user_pos = {u: i for i, u in enumerate(train.user_ids.tolist())}
    item_pos = train.catalogue.index()
    mapped = after["user_id"].astype(str).map(user_pos)
    after = after[mapped.notna().to_numpy()]
    users = mapped.dropna().astype(np.int64).to_numpy()
    new_codes = {
        i: train.n_items + k
        for k, i in enumerate(sorted(set(after["item_id"].astype(str)) - set(item_pos)))
    }
    cols = after["item_id"].astype(str).map(lambda i: item_pos.get(i, new_codes.get(i)))
    width = train.n_items + len(new_codes)
    uniq, inverse = np.unique(users, return_inverse=True)
    rows = uniq.astype(np.int64)
    truth = sp.csr_matrix(
        (np.ones(len(users)), (inverse, cols.to_numpy(dtype=np.int64))), shape=(len(rows), width)
    )
    truth.sum_duplicates()
    truth.data = np.ones_like(truth.data)
    seen = train.purchases()
    seen.data = np.ones_like(seen.data)
    seen_wide = sp.hstack([seen[rows], sp.csr_matrix((len(rows), len(new_codes)))]).tocsr()
    fresh = truth - truth.multiply(seen_wide)
    fresh = sp.csr_matrix(fresh)
    fresh.eliminate_zeros()
    cold = train.orders_per_user()[rows] <= COLD_ORDERS
    segs = train.segments[rows] if len(train.segments) else np.full(len(rows), "", dtype=str)
    keep = np.diff(fresh.indptr) > 0
    return SplitData(
        at=at,
        end=end,
        train=train,
        repeat=ProtocolData(rows, truth, cold, segs),
        new_items=ProtocolData(rows[keep], fresh[keep], cold[keep], segs[keep]),
    )


def _products(items: pd.DataFrame) -> dict[str, bool]:
    if "is_product" not in items.columns:
        return {}
    flags = items["is_product"].map(
        lambda v: str(v).strip().lower() not in ("0", "false", "f", "no")
    )
    return dict(zip(items["item_id"].astype(str), flags.astype(bool), strict=True))
