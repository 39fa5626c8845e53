"""Expansion of sessions into events: view -> cart -> (remove) -> purchase, then refund, rating.

Everything is vectorised over sessions, views and lines (``np.repeat`` to expand, inverse-CDF
sampling with ``np.searchsorted`` to draw categories and items). Times are integer
milliseconds since the epoch; a session stays inside its day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from automation.simulate.catalogue import CATEGORY_NAMES, Catalogue
from automation.simulate.personas import Persona

__all__ = ["EVENT_TYPES", "EventArrays", "expand_sessions"]

EVENT_TYPES: tuple[str, ...] = ("view", "cart", "remove", "purchase", "refund", "rating")
VIEW, CART, REMOVE, PURCHASE, REFUND, RATING = range(len(EVENT_TYPES))

DAY_MS = 86_400_000
HOUR_WEIGHTS: tuple[float, ...] = (
    0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.0, 1.1, 1.2,
    1.4, 1.3, 1.1, 1.0, 1.0, 1.1, 1.3, 1.6, 1.8, 1.7, 1.2, 0.6,
)  # fmt: skip
"""Relative activity per hour of the day (UTC)."""

FOCUS = 0.75
"""Probability that a view stays in the session's category."""

VIEW_DISPERSION = 1.5
"""Negative-binomial shape of ``views - 1`` (smaller = heavier tail)."""

MAX_VIEWS = 200
MEAN_VIEW_GAP_S = 40.0
REFUND_DELAY_MEAN = 4.0
RATING_DELAY_MEAN = 5.0


@dataclass
class EventArrays:
    """Columns of the generated events before formatting (one entry per event).

    ``session`` numbers browsing sessions first (chronologically), then one session per refund
    or rating; ``order`` is ``-1`` outside purchases and refunds.
    """

    user: np.ndarray
    etype: np.ndarray
    ms: np.ndarray
    item: np.ndarray
    quantity: np.ndarray
    rating: np.ndarray
    session: np.ndarray
    order: np.ndarray
    n_sessions: int
    n_orders: int

    def __len__(self) -> int:
        return len(self.ms)


class _Sampler:
    """Inverse-CDF samplers of categories and items for every regime at once.

    Row ``k`` of a cumulative table is shifted by ``k`` and all rows are flattened, so one
    ``searchsorted`` of ``k + u`` draws from row ``k`` for every query.
    """

    def __init__(self, regimes: Sequence[Persona], cat: Catalogue) -> None:
        n_cat = len(CATEGORY_NAMES)
        weights = np.stack([p.category_weights(CATEGORY_NAMES) for p in regimes])
        cum = np.cumsum(weights, axis=1)
        cum[:, -1] = 1.0
        self._cat_flat = (cum + np.arange(len(regimes))[:, None]).ravel()
        self.n_cat = n_cat
        self.n_items = cat.n_items
        median = np.array([np.median(cat.price[cat.category == c]) for c in range(n_cat)])
        rel_price = cat.price / median[cat.category]
        tilt = np.array([p.price_tilt for p in regimes])
        w = cat.popularity[None, :] * rel_price[None, :] ** tilt[:, None]
        # cumulative weight restarted in each category, normalised to end at exactly 1
        cum_items = np.cumsum(w, axis=1)
        start = cat.bounds[:-1]
        before = np.where(start > 0, cum_items[:, np.maximum(start - 1, 0)], 0.0)
        total = cum_items[:, cat.bounds[1:] - 1] - before
        within = (cum_items - before[:, cat.category]) / total[:, cat.category]
        within[:, cat.bounds[1:] - 1] = 1.0
        row = np.arange(len(regimes))[:, None] * n_cat + cat.category[None, :]
        self._item_flat = (within + row).ravel()

    def category(self, regime: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Category codes drawn from each regime's category weights."""
        pos = np.searchsorted(self._cat_flat, regime + u, side="right")
        return (pos - regime * self.n_cat).astype(np.int16)

    def item(self, regime: np.ndarray, category: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item codes drawn within ``category`` with each regime's price tilt."""
        key = regime.astype(np.float64) * self.n_cat + category + u
        pos = np.searchsorted(self._item_flat, key, side="right")
        return (pos - regime.astype(np.int64) * self.n_items).astype(np.int32)


def _param(regimes: Sequence[Persona], name: str) -> np.ndarray:
    return np.array([getattr(p, name) for p in regimes], dtype=np.float64)


def _time_of_day_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Milliseconds since midnight, hour drawn from :data:`HOUR_WEIGHTS`."""
    cum = np.cumsum(HOUR_WEIGHTS) / sum(HOUR_WEIGHTS)
    cum[-1] = 1.0
    hour = np.searchsorted(cum, rng.random(n), side="right")
    return hour * 3_600_000 + rng.integers(0, 3_600_000, n)


def expand_sessions(
    s_user: np.ndarray,
    s_day: np.ndarray,
    s_regime: np.ndarray,
    regimes: Sequence[Persona],
    cat: Catalogue,
    day0_ms: int,
    days: int,
    rng: np.random.Generator,
) -> EventArrays:
    """Turn sessions into events.

    Parameters
    ----------
    s_user, s_day, s_regime : numpy.ndarray
        User, day and regime of each browsing session.
    regimes : sequence of Persona
        Parameters of each regime code.
    cat : Catalogue
        Items to draw from.
    day0_ms : int
        Epoch milliseconds of day 0 at midnight UTC.
    days : int
        Horizon; refunds and ratings falling after it are dropped.
    rng : numpy.random.Generator
        Random stream.

    Returns
    -------
    EventArrays
        Events in generation order (not yet sorted by time).
    """
    sampler = _Sampler(regimes, cat)
    n_s = len(s_user)
    reg = s_regime.astype(np.int64)
    # views
    extra = _param(regimes, "views_mean")[reg] - 1.0
    n_views = 1 + rng.negative_binomial(
        VIEW_DISPERSION, VIEW_DISPERSION / (VIEW_DISPERSION + extra)
    )
    n_views = np.minimum(n_views, MAX_VIEWS)
    first = np.cumsum(n_views) - n_views
    v_sess = np.repeat(np.arange(n_s), n_views)
    v_reg = reg[v_sess]
    s_cat = sampler.category(reg, rng.random(n_s))
    own = sampler.category(v_reg, rng.random(len(v_sess)))
    v_cat = np.where(rng.random(len(v_sess)) < FOCUS, s_cat[v_sess], own)
    v_item = sampler.item(v_reg, v_cat, rng.random(len(v_sess)))
    gaps = np.round(2000.0 + rng.exponential(MEAN_VIEW_GAP_S * 1000.0, len(v_sess))).astype(
        np.int64
    )
    gaps[first] = 0
    clock = np.cumsum(gaps)
    v_off = clock - clock[first][v_sess]
    end = v_off[first + n_views - 1] + 30_000 + rng.integers(0, 120_000, n_s)
    # carts and removes
    c_idx = np.flatnonzero(rng.random(len(v_sess)) < _param(regimes, "cart_p")[v_reg])
    c_sess = v_sess[c_idx]
    c_off = v_off[c_idx] + rng.integers(3_000, 28_000, len(c_idx))
    c_qty = 1 + rng.poisson(_param(regimes, "extra_quantity")[reg[c_sess]])
    removed = rng.random(len(c_idx)) < _param(regimes, "remove_p")[reg[c_sess]]
    r_idx = np.flatnonzero(removed)
    r_off = c_off[r_idx] + (rng.random(len(r_idx)) * (end[c_sess[r_idx]] - c_off[r_idx])).astype(
        np.int64
    )
    # checkout: every line left in the cart, one order per session
    left = np.bincount(c_sess[~removed], minlength=n_s) > 0
    checkout = left & (rng.random(n_s) < _param(regimes, "checkout_p")[reg])
    p_idx = np.flatnonzero(~removed & checkout[c_sess])
    p_sess = c_sess[p_idx]
    # session start inside its day, sessions numbered chronologically
    tod = np.clip(np.minimum(_time_of_day_ms(rng, n_s), DAY_MS - 2_000 - end), 0, None)
    s_ms = day0_ms + s_day.astype(np.int64) * DAY_MS + tod
    chrono = np.argsort(s_ms, kind="stable")
    s_rank = np.empty(n_s, dtype=np.int64)
    s_rank[chrono] = np.arange(n_s)
    s_order = np.empty(n_s, dtype=np.int64)
    s_order[chrono] = np.cumsum(checkout[chrono]) - 1
    n_orders = int(checkout.sum())
    p_item = v_item[c_idx[p_idx]]
    p_qty = c_qty[p_idx]
    p_reg = reg[p_sess]
    # refunds and ratings of purchased lines, on later days
    refunded = rng.random(len(p_idx)) < _param(regimes, "refund_p")[p_reg]
    f_day = s_day[p_sess] + 1 + rng.poisson(REFUND_DELAY_MEAN, len(p_idx))
    f_idx = np.flatnonzero(refunded & (f_day < days))
    rated = rng.random(len(p_idx)) < _param(regimes, "rating_p")[p_reg]
    t_day = s_day[p_sess] + 1 + rng.poisson(RATING_DELAY_MEAN, len(p_idx))
    t_idx = np.flatnonzero(rated & (t_day < days))
    score = (
        cat.quality[p_item[t_idx]]
        + _param(regimes, "rating_bias")[p_reg[t_idx]]
        - 1.5 * refunded[t_idx]
        + rng.normal(0.0, 0.8, len(t_idx))
    )
    f_ms = day0_ms + f_day[f_idx] * DAY_MS + _time_of_day_ms(rng, len(f_idx))
    t_ms = day0_ms + t_day[t_idx] * DAY_MS + _time_of_day_ms(rng, len(t_idx))
    n_after = len(f_idx) + len(t_idx)

    def cat_(*parts: np.ndarray) -> np.ndarray:
        return np.concatenate(parts)

    n_c, n_r, n_p = len(c_idx), len(r_idx), len(p_idx)
    counts = [len(v_sess), n_c, n_r, n_p, len(f_idx), len(t_idx)]
    sess = cat_(v_sess, c_sess, c_sess[r_idx], p_sess, p_sess[f_idx], p_sess[t_idx])
    return EventArrays(
        user=s_user[sess].astype(np.int32),
        etype=np.repeat(np.arange(len(EVENT_TYPES), dtype=np.int8), counts),
        ms=cat_(
            s_ms[v_sess] + v_off,
            s_ms[c_sess] + c_off,
            s_ms[c_sess[r_idx]] + r_off,
            s_ms[p_sess] + end[p_sess],
            f_ms,
            t_ms,
        ),
        item=cat_(
            v_item, v_item[c_idx], v_item[c_idx[r_idx]], p_item, p_item[f_idx], p_item[t_idx]
        ),
        quantity=cat_(
            np.ones(len(v_sess), np.int64),
            c_qty,
            c_qty[r_idx],
            p_qty,
            p_qty[f_idx],
            np.ones(len(t_idx), np.int64),
        ),  # fmt: skip
        rating=cat_(np.full(len(sess) - len(t_idx), np.nan), np.clip(np.round(score), 1.0, 5.0)),
        session=cat_(s_rank[sess[: len(sess) - n_after]], n_s + np.arange(n_after, dtype=np.int64)),
        order=cat_(
            np.full(len(v_sess) + n_c + n_r, -1, np.int64),
            s_order[p_sess],
            s_order[p_sess[f_idx]],
            np.full(len(t_idx), -1, np.int64),
        ),
        n_sessions=n_s + n_after,
        n_orders=n_orders,
    )
