"""Pseudonymous user ids: a keyed hash (HMAC-SHA256) replaces the shop's id at ingest.

With ``SHOAL_PSEUDONYM_KEY`` set, the store never holds a raw user id: events, aggregates and
segments carry ``p_<hash>``; lookups (``shoal user``, the API) hash the id they are given with
the same key, and quarantined rows keep their reason but not their raw text.
"""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd

PREFIX = "p_"


def pseudonym(key: str, user_id: str) -> str:
    digest = hmac.new(key.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:32]


def pseudonymise(key: str, ids: pd.Series) -> pd.Series:
    """Each id replaced by its pseudonym (computed once per distinct id)."""
    codes, uniques = pd.factorize(ids.astype("str"))
    mapped = [pseudonym(key, u) for u in uniques]
    out = pd.Series([mapped[c] if c >= 0 else None for c in codes], index=ids.index, dtype=object)
    return out.where(ids.notna())
