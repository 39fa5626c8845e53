"""What every list answers to: the result record, the business rules, and the top-n with a
per-category cap (ties go to the lower item index, so answers are deterministic)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from automation.errors import ValidationError
from automation.recommend.context import Context
from automation.recommend.data import Catalogue, FloatArray, IntArray


@dataclass(frozen=True)
class Recommendation:
    """One recommended item, with what a campaign template shows."""

    item_id: str
    name: str
    price: float | None
    score: float
    reason: str
    category: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields a campaign template reads (``category`` when there is one)."""
        return {
            "item_id": self.item_id,
            "name": self.name,
            "price": self.price,
            "score": round(self.score, 6),
            "reason": self.reason,
            **({"category": self.category} if self.category else {}),
        }


@dataclass(frozen=True)
class Rules:
    """Business rules applied to every list.

    Parameters
    ----------
    exclude_non_products : bool
        Leave out fees, postage and adjustments (``items.is_product`` false).
    exclude_refunded : bool
        Leave out items the user has refunded.
    recent_days : float
        Leave out items the user bought within this many days (0: off). Matters when
        ``filter_seen`` is false (replenishment lists).
    max_per_category : int or None
        At most this many items of one category per list (items without a category are not
        capped); ``None``: no cap.
    """

    exclude_non_products: bool = True
    exclude_refunded: bool = True
    recent_days: float = 0.0
    max_per_category: int | None = None

    def __post_init__(self) -> None:
        if self.recent_days < 0:
            raise ValidationError(f"recent_days={self.recent_days} should be >= 0")
        if self.max_per_category is not None and self.max_per_category < 1:
            raise ValidationError(f"max_per_category={self.max_per_category} should be >= 1")


def recommendations(
    cat: Catalogue, idx: IntArray, scores: FloatArray, reasons: list[str]
) -> list[Recommendation]:
    """Result records of item positions ``idx`` (``-1`` padding skipped)."""
    out = []
    for i, s, why in zip(idx.tolist(), scores.tolist(), reasons, strict=True):
        if i < 0:
            continue
        price = float(cat.prices[i])
        out.append(
            Recommendation(
                item_id=str(cat.item_ids[i]),
                name=str(cat.names[i]),
                price=None if price != price else round(price, 2),
                score=float(s),
                reason=why,
                category=str(cat.categories[i]) or None,
            )
        )
    return out


def global_ban(ctx: Context, rules: Rules, exclude: Sequence[str] | None) -> NDArray[np.bool_]:
    """Items nobody gets: non-products (when the rules say so) and ``exclude``."""
    banned = np.zeros(ctx.n_items, dtype=bool)
    if rules.exclude_non_products:
        banned |= ~ctx.catalogue.is_product
    if exclude:
        pos = ctx.catalogue.index()
        hits = [pos[str(e)] for e in exclude if str(e) in pos]
        banned[hits] = True
    return banned


def apply_rules(
    S: FloatArray,
    ctx: Context,
    rules: Rules,
    rows: IntArray,
    filter_seen: bool,
    banned: NDArray[np.bool_],
) -> None:
    """Set to ``-inf`` (in place) what each row's user may not get."""
    S[:, banned] = -np.inf
    known = np.flatnonzero(rows >= 0)
    if not len(known):
        return
    r = rows[known]
    masks = []
    if filter_seen:
        masks.append(ctx.seen[r])
    if rules.exclude_refunded:
        masks.append(ctx.refunded[r])
    if rules.recent_days > 0:
        recent = ctx.last_age[r].copy()
        recent.data = (recent.data <= rules.recent_days + 1.0).astype(np.float64)
        masks.append(recent)
    for m in masks:
        m = m.tocoo()
        hit = m.data > 0
        S[known[m.row[hit]], m.col[hit]] = -np.inf


def top_n(
    S: FloatArray,
    n: int,
    categories: NDArray[np.str_],
    cap: int | None,
    decimals: int | None = None,
) -> tuple[IntArray, FloatArray]:
    """The ``n`` best finite entries of each row (``-1`` padding), best first, with at most
    ``cap`` items of one category (items without a category are not capped); ties go to the
    lower item index.

    With ``decimals``, rows are ranked (and scores returned) rounded to that many decimals, as if
    ``S`` had been rounded first; only the candidates are rounded. The candidates of all rows are
    picked and sorted at once; a row where an item outside them could tie with the last one
    (equal scores, or fewer finite items than candidates) is ranked exactly on its own.
    """
    rows, width = S.shape
    capped = cap is not None and bool((categories != "").any())
    m = min(width, n * 5 if capped else n)
    out_i = np.full((rows, n), -1, dtype=np.int64)
    out_s = np.zeros((rows, n), dtype=np.float64)
    if m == 0 or rows == 0:
        return out_i, out_s
    if m < width:
        part = np.argpartition(S, width - m, axis=1)[:, width - m :]
    else:
        part = np.tile(np.arange(width, dtype=np.int64), (rows, 1))
    vals = np.take_along_axis(S, part, axis=1)
    if decimals is not None:
        vals = np.round(vals, decimals)
    order = np.lexsort((part, -vals), axis=-1)
    part = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    exact = np.zeros(rows, dtype=bool)
    if m < width:
        slack = 10.0**-decimals if decimals is not None else 0.0
        floor = vals[:, -1] - slack  # anything at or above it may tie with the last candidate
        exact = np.count_nonzero(floor[:, None] <= S, axis=1) > m
    width_n = min(n, m)
    keep = np.isfinite(vals[:, :width_n])  # -inf sorts last: the finite ones are a prefix
    out_i[:, :width_n] = np.where(keep, part[:, :width_n], -1)
    out_s[:, :width_n] = np.where(keep, vals[:, :width_n], 0.0)
    for k in (np.arange(rows) if capped else np.flatnonzero(exact)).tolist():
        cand = _ranked_row(S[k], decimals) if exact[k] else part[k][np.isfinite(vals[k])]
        if capped:
            cand = _cap(cand, categories, int(cap or n))
        chosen = cand[:n]
        got = S[k, chosen]
        out_i[k], out_s[k] = -1, 0.0
        out_i[k, : len(chosen)] = chosen
        out_s[k, : len(chosen)] = np.round(got, decimals) if decimals is not None else got
    return out_i, out_s


def _ranked_row(s: FloatArray, decimals: int | None) -> IntArray:
    """Every finite item of one row, best first (rounded to ``decimals``), ties to lower index."""
    r = np.round(s, decimals) if decimals is not None else s
    idx = np.flatnonzero(np.isfinite(r))
    return idx[np.lexsort((idx, -r[idx]))]


def _cap(order: IntArray, categories: NDArray[np.str_], cap: int) -> IntArray:
    taken: dict[str, int] = {}
    picked: list[int] = []
    for i in order.tolist():
        c = str(categories[i])
        if c and taken.get(c, 0) >= cap:
            continue
        taken[c] = taken.get(c, 0) + 1
        picked.append(i)
    return np.asarray(picked, dtype=np.int64)
