"""Marketer-readable segment names, derived by rules from where each segment sits in the population.

Every rule looks at the *percentile* of the segment's median (raw, unscaled) feature within the
population's distribution of that feature (mid-rank, so ties such as many zeros count half), plus
a few absolute sanity floors (a "loyal" segment buys at least 3 times, a "refunder" segment
refunds at least 20%). Names never depend on the segment's id. Columns that are missing are skipped.

A name is ``[lifecycle] + core``:

* lifecycle: ``New`` (tenure percentile <= 0.25), ``Lapsed`` (recency percentile >= 0.70),
  ``At-risk`` (recency percentile >= 0.55, or activity trend <= -0.3 with recency >= 0.40);
  ``Active`` (recency percentile <= 0.35) is implied and only spoken for otherwise plain segments.
* core, first match: ``Wholesale-scale buyers`` (median spend above the population's 99.5th
  percentile), ``Frequent refunders``, ``Window shoppers`` (no orders), ``Browsers who rarely buy``
  (views percentile >= 0.70 with low frequency or conversion), else value x frequency:
  value ``High-value``/``big spenders`` (spend percentile >= 0.70) or ``Low-spend``/``low spenders``
  (<= 0.30); frequency ``loyal``/``regulars`` (percentile >= 0.70), ``occasional`` (<= 0.40),
  ``one-time buyers`` (median 1 order). With a lifecycle word, only the more salient of value and
  frequency is kept ("Lapsed big spenders", "New one-time buyers", "At-risk regulars").

Duplicates get the qualifier of the column on which the segment differs most (in percentile)
from the others sharing its name, e.g. "(recent)" or "(large baskets)"; a numeral is the last
resort. Label ``-1`` (density noise) is "Unclassified (noise)"; a segment mostly made of outliers
(see ``outlier_share``) is "Wholesale-scale outliers" (or "Extreme-activity outliers" when its
spend is not high).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd

NOISE_NAME = "Unclassified (noise)"
NEW_TENURE, LAPSED, AT_RISK, ACTIVE = 0.25, 0.70, 0.55, 0.35
HIGH, LOW, LOYAL, OCCASIONAL, BROWSING = 0.70, 0.30, 0.70, 0.40, 0.70
WHOLESALE_QUANTILE, MIN_LOYAL_ORDERS, MIN_REFUND_RATE = 0.995, 3.0, 0.2

#: column -> (qualifier when the segment is higher, qualifier when lower) than its namesakes.
QUALIFIERS: dict[str, tuple[str, str]] = {
    "recency_days": ("less recent", "recent"),
    "frequency": ("more frequent", "less frequent"),
    "monetary": ("higher spend", "lower spend"),
    "avg_order_value": ("large baskets", "small baskets"),
    "tenure_days": ("long-standing", "newer"),
    "refund_rate": ("high refunds", "low refunds"),
    "n_views": ("heavy browsing", "light browsing"),
    "n_carts": ("many carts", "few carts"),
    "view_to_cart": ("high cart rate", "low cart rate"),
    "cart_to_purchase": ("converting", "cart abandoners"),
    "distinct_items": ("wide range", "narrow range"),
    "activity_trend": ("rising", "declining"),
}

#: (value tier, frequency tier) -> core name when no lifecycle word is added.
_CORE: dict[tuple[str | None, str | None], str] = {
    ("high", "loyal"): "High-value loyal",
    ("high", "occasional"): "Occasional big spenders",
    ("high", "one-time"): "High-value one-time buyers",
    ("high", None): "Big spenders",
    ("low", "loyal"): "Low-spend regulars",
    ("low", "occasional"): "Occasional low spenders",
    ("low", "one-time"): "Low-spend one-time buyers",
    ("low", None): "Low spenders",
    (None, "loyal"): "Regulars",
    (None, "occasional"): "Occasional buyers",
    (None, "one-time"): "One-time buyers",
    (None, None): "Mainstream customers",
}


def segment_profiles(raw: pd.DataFrame, labels: Any) -> pd.DataFrame:
    """Median of every numeric column of ``raw`` per segment label (index: label, sorted)."""
    numeric = raw.select_dtypes(include="number").reset_index(drop=True)
    return numeric.groupby(np.asarray(labels)).median()


class _Segment:
    """Percentiles and medians of one segment's profile, with the tiering rules."""

    def __init__(self, profile: pd.Series, population: dict[str, np.ndarray]) -> None:
        self.med: dict[str, float] = {}
        self.pct: dict[str, float] = {}
        for col, values in population.items():
            v = profile.get(col)
            if v is None or pd.isna(v):
                continue
            v = float(v)
            left = np.searchsorted(values, v, side="left")
            right = np.searchsorted(values, v, side="right")
            self.med[col] = v
            self.pct[col] = float(left + right) / (2.0 * len(values))
        self.population = population

    def lifecycle(self) -> str | None:
        tenure, recency = self.pct.get("tenure_days"), self.pct.get("recency_days")
        trend = self.med.get("activity_trend")
        if tenure is not None and tenure <= NEW_TENURE:
            return "New"
        if recency is not None and recency >= LAPSED:
            return "Lapsed"
        if recency is not None and (
            recency >= AT_RISK or (trend is not None and trend <= -0.3 and recency >= 0.4)
        ):
            return "At-risk"
        if recency is not None and recency <= ACTIVE:
            return "Active"
        return None

    def spend_column(self) -> str | None:
        return next((c for c in ("monetary", "avg_order_value") if c in self.pct), None)

    def value(self) -> tuple[str | None, float]:
        col = self.spend_column()
        if col is None:
            return None, 0.0
        values, v, p = self.population[col], self.med[col], self.pct[col]
        if v > np.quantile(values, WHOLESALE_QUANTILE) and v > np.median(values):
            return "wholesale", 1.0
        if p >= HIGH:
            return "high", p - 0.5
        if p <= LOW:
            return "low", 0.5 - p
        return None, 0.0

    def frequency(self) -> tuple[str | None, float]:
        if "frequency" not in self.pct:
            return None, 0.0
        v, p = self.med["frequency"], self.pct["frequency"]
        if v <= 0:
            return "none", 1.0
        if v <= 1:
            return "one-time", 0.45
        if p >= LOYAL and v >= MIN_LOYAL_ORDERS:
            return "loyal", p - 0.5
        if p <= OCCASIONAL:
            return "occasional", 0.5 - p
        return None, 0.0

    def behaviour(self, freq: str | None) -> str | None:
        refund = self.med.get("refund_rate")
        if refund is not None and refund >= MIN_REFUND_RATE and self.pct["refund_rate"] >= 0.8:
            return "Frequent refunders"
        if freq == "none":
            return (
                "Window shoppers"
                if "n_views" in self.pct or "n_carts" in self.pct
                else ("Non-buyers")
            )
        views = self.pct.get("n_views")
        low_buying = self.pct.get("frequency", 1.0) <= OCCASIONAL or (
            self.pct.get("cart_to_purchase", 1.0) <= LOW
        )
        if views is not None and views >= BROWSING and low_buying:
            return "Browsers who rarely buy"
        return None

    def name(self, outlier_share: float) -> str:
        value, v_sal = self.value()
        if outlier_share >= 0.5:
            spend = self.pct.get(self.spend_column() or "", 0.5)
            big = value == "wholesale" or spend >= HIGH
            return "Wholesale-scale outliers" if big else "Extreme-activity outliers"
        freq, f_sal = self.frequency()
        life = self.lifecycle()
        special = self.behaviour(freq)
        if value == "wholesale":
            core = "Wholesale-scale buyers"
        elif special is not None:
            core = special
        elif life in ("New", "Lapsed", "At-risk"):
            core = _CORE[(value, None)] if v_sal > f_sal else _CORE[(None, freq)]
            if core == _CORE[(None, None)]:
                core = "Customers"
        else:
            core = _CORE[(value, freq)]
            if core == _CORE[(None, None)] and life == "Active":
                return "Active customers"
        if life in ("New", "Lapsed", "At-risk"):
            return f"{life} {core[0].lower()}{core[1:]}"
        return core


def _qualify(names: dict[int, str], segs: dict[int, _Segment]) -> dict[int, str]:
    """Make ``names`` unique with distinguishing qualifiers, then numerals."""
    used = set(names.values())
    out = dict(names)
    groups: dict[str, list[int]] = {}
    for label, name in names.items():
        groups.setdefault(name, []).append(label)
    for name, group in groups.items():
        if len(group) < 2:
            continue
        for label in group:
            others = [o for o in group if o != label]
            cands = []
            for col, (up, down) in QUALIFIERS.items():
                if col not in segs[label].pct or any(col not in segs[o].pct for o in others):
                    continue
                diff = segs[label].pct[col] - np.mean([segs[o].pct[col] for o in others])
                if abs(diff) >= 0.05:
                    cands.append((-abs(diff), up if diff > 0 else down))
            chosen = next(
                (f"{name} ({q})" for _, q in sorted(cands) if f"{name} ({q})" not in used), None
            )
            if chosen is None:
                i = 1
                while f"{name} ({i})" in used:
                    i += 1
                chosen = f"{name} ({i})"
            used.add(chosen)
            out[label] = chosen
    return out


def name_segments(
    profiles: pd.DataFrame,
    population: pd.DataFrame,
    *,
    outlier_share: Mapping[Hashable, float] | None = None,
) -> dict[int, str]:
    """Name each segment of ``profiles`` by rules over the population distribution.

    Parameters
    ----------
    profiles : DataFrame
        One row per segment label (the index) with the median raw features of its members, e.g.
        from :func:`segment_profiles`. Label ``-1`` is density noise.
    population : DataFrame
        The raw per-user feature table the percentiles are taken in.
    outlier_share : mapping label -> float, optional
        (e.g. ``pd.Series(outliers_).groupby(labels_).mean().to_dict()``)
        Share of each segment's members flagged as outliers; >= 0.5 names it as outliers.

    Returns
    -------
    dict
        ``{label: name}``, names unique within the call.

    Examples
    --------
    >>> pop = pd.DataFrame({"recency_days": range(100), "monetary": range(100),
    ...                     "frequency": [1 + i % 7 for i in range(100)]})
    >>> prof = pd.DataFrame({"recency_days": [90, 5], "monetary": [92, 4],
    ...                      "frequency": [3, 1]}, index=[0, 1])
    >>> name_segments(prof, pop)
    {0: 'Lapsed big spenders', 1: 'Low-spend one-time buyers'}
    """
    population_values: dict[str, np.ndarray] = {}
    for col in population.columns:
        if col not in profiles.columns or not pd.api.types.is_numeric_dtype(population[col]):
            continue
        values = population[col].to_numpy(dtype=np.float64, na_value=np.nan)
        values = np.sort(values[np.isfinite(values)])
        if len(values):
            population_values[str(col)] = values
    shares = dict(outlier_share or {})
    names: dict[int, str] = {}
    segs: dict[int, _Segment] = {}
    for label, row in profiles.iterrows():
        key = int(label)  # type: ignore[call-overload]
        if key == -1:
            names[key] = NOISE_NAME
            continue
        segs[key] = _Segment(row, population_values)
        names[key] = segs[key].name(float(shares.get(key, 0.0)))
    return _qualify(names, segs)
