"""Formatting of the generated arrays into the canonical event and truth tables.

String columns are built once per distinct value with pyarrow and attached as
:class:`pandas.Categorical` codes, which is cheap for ten million rows and small in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from automation.simulate.catalogue import CATEGORY_NAMES, Catalogue, format_ids
from automation.simulate.funnel import EVENT_TYPES, PURCHASE, REFUND, EventArrays

__all__ = ["EVENT_COLUMNS", "events_frame", "truth_frame", "user_ids"]

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "type",
    "timestamp",
    "item_id",
    "category",
    "quantity",
    "price",
    "revenue",
    "rating",
    "session_id",
    "order_id",
)
"""Canonical event columns, in order."""


def _width(n: int, minimum: int) -> int:
    return max(minimum, len(str(max(n - 1, 0))))


def user_ids(n_users: int) -> pd.Index:
    """User identifiers ``u0000000 ..`` (at least seven digits)."""
    return format_ids("u", n_users, _width(n_users, 7))


def _categorical(codes: np.ndarray, categories: pd.Index | Sequence[str]) -> pd.Categorical:
    index = categories if isinstance(categories, pd.Index) else pd.Index(list(categories))
    return pd.Categorical.from_codes(codes, categories=index.astype("str"))


def events_frame(arr: EventArrays, cat: Catalogue, users: pd.Index, seed: int) -> pd.DataFrame:
    """Sort the events by time and build the canonical event table.

    Parameters
    ----------
    arr : EventArrays
        Events in generation order.
    cat : Catalogue
        Items (for ids, categories and prices).
    users : pandas.Index
        User identifier of each user code.
    seed : int
        Seed of the run, part of every ``event_id`` (``sim-{seed}-{i}``).

    Returns
    -------
    pandas.DataFrame
        One row per event, sorted by ``timestamp``; columns :data:`EVENT_COLUMNS`.
    """
    order = np.argsort(arr.ms, kind="stable")
    n = len(order)
    etype = arr.etype[order]
    item = arr.item[order]
    quantity = arr.quantity[order]
    price = cat.price[item]
    money = (etype == PURCHASE) | (etype == REFUND)
    revenue = np.where(money, quantity * price, 0.0)
    stamps = pd.DatetimeIndex(arr.ms[order].astype("datetime64[ms]").astype("datetime64[ns]"))
    digits = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    event_id = pc.binary_join_element_wise(f"sim-{seed}-", digits, "")
    item_index = pd.Index(cat.items["item_id"], dtype="str")
    frame = pd.DataFrame(
        {
            "event_id": pd.array(event_id, dtype="str"),
            "user_id": _categorical(arr.user[order], users),
            "type": _categorical(etype, EVENT_TYPES),
            "timestamp": stamps.tz_localize("UTC"),
            "item_id": _categorical(item, item_index),
            "category": _categorical(cat.category[item].astype(np.int16), CATEGORY_NAMES),
            "quantity": quantity.astype(np.int64),
            "price": price,
            "revenue": revenue,
            "rating": arr.rating[order],
            "session_id": _categorical(
                arr.session[order], format_ids("s", arr.n_sessions, _width(arr.n_sessions, 8))
            ),
            "order_id": _categorical(
                arr.order[order], format_ids("o", arr.n_orders, _width(arr.n_orders, 8))
            ),
        },
        copy=False,
    )
    return frame


def truth_frame(
    labels: Sequence[str],
    group_labels: np.ndarray,
    user_group: np.ndarray,
    arrival: np.ndarray,
    users: pd.Index,
) -> pd.DataFrame:
    """Ground-truth persona of every user from the day it applies.

    Parameters
    ----------
    labels : sequence of str
        Persona names; codes index into it.
    group_labels : numpy.ndarray
        ``group_labels[g, d]``: persona code of group ``g`` on day ``d``.
    user_group : numpy.ndarray
        Group of each user.
    arrival : numpy.ndarray
        First day of each user (its first truth row).
    users : pandas.Index
        User identifier of each user code.

    Returns
    -------
    pandas.DataFrame
        ``user_id``, ``day``, ``persona``: one row at the user's arrival day, then one per day its
        persona changes; a persona holds until the user's next row. Sorted by user, day.
    """
    n_users = len(user_group)
    user_codes = [np.arange(n_users)]
    day_parts = [arrival.astype(np.int64)]
    label_parts = [group_labels[user_group, arrival]]
    changes = np.flatnonzero(np.any(group_labels[:, 1:] != group_labels[:, :-1], axis=0)) + 1
    for day in changes.tolist():
        moved = np.flatnonzero(
            (group_labels[user_group, day] != group_labels[user_group, day - 1]) & (arrival < day)
        )
        user_codes.append(moved)
        day_parts.append(np.full(len(moved), day, dtype=np.int64))
        label_parts.append(group_labels[user_group[moved], day])
    user = np.concatenate(user_codes)
    day_all = np.concatenate(day_parts)
    sort = np.lexsort((day_all, user))
    return pd.DataFrame(
        {
            "user_id": _categorical(user[sort], users),
            "day": day_all[sort],
            "persona": _categorical(np.concatenate(label_parts)[sort], labels),
        }
    )
