"""Scaling raw features for clustering: shrinkage, heavy tails compressed, standardisation, weights.

Per column, in order:

0. **Shrinkage** (:func:`shrink`). Ratios and shares measured on a handful of events
   (``view_to_cart``, ``cart_to_purchase``, ``refund_rate``, ``aff_*``, ``units_per_line``,
   ``price_index``, and ``avg_order_value`` and ``interpurchase_days``, which are 0 and the tenure
   without orders) are pulled towards the population value by the evidence behind them;
   ``rating_mean`` without ratings is the raters' mean, not 0; ``activity_trend`` counts only
   once a user's history covers both of its windows.
   Without it, the users with few events scattered over every segment (a k-means on the
   simulator's features followed activity and noise, ARI 0.30 against the personas).
1. **Transform.** Counts, money and durations are heavy-tailed: ``log1p`` (signed for money, which
   can be negative after refunds). Rates, shares, trends and SVD coordinates are kept as they are.
2. **Standardisation.** ``(x - mean) / std``, never below a floor (0.05 for bounded features, 0.1
   otherwise). The floor keeps a column that hardly varies today from exploding distances when it
   starts to vary tomorrow (a new category appearing). (An IQR scale, used before, made columns
   concentrated on a few values with a tail, such as tenure, the widest axes.)
3. **Clipping** at +-``clip`` scaled units, so one wholesale account cannot stretch an axis.
4. **Weights.** Affinity columns (``aff_*``, ``taste_*``) share :data:`AFFINITY_WEIGHT` among
   them, so that many categories do not outvote recency, frequency and value. (Giving the five
   volume columns one shared unit too was tried: no better on the simulator, and on Online Retail,
   where value is what separates customers, the monthly updates merged the high-value segment
   away.)
5. **Decorrelation** (:func:`fit_whitening`, on by default). Many columns measure the same thing
   (orders, spend, items, carts and views all grow with a user's activity), so a plain sum of
   squares counts activity several times over. A regularised ZCA whitening,
   ``W = U diag(1 / sqrt(ev + r)) U^T`` from the eigen-decomposition of the scaled columns'
   covariance, with ``r`` = :data:`WHITEN_RIDGE` mean eigenvalues, shrinks the directions far
   above the average spread (the shared activity direction) and leaves the others nearly as
   they were; ``W`` is then scaled so the total variance is what it was (thresholds in scaled
   units keep their meaning). ZCA, not PCA: column ``j`` stays feature ``j``, so explanations
   still name features. On the simulator (``none``, the day-28 warm-up, 5 personas) the
   lowest-inertia KMeans of 4 went from ARI 0.43 / 0.41 to 0.59 / 0.59 (seeds 0 / 1); day 46
   0.77 -> 0.78, day 56 (6 personas) 0.85 -> 0.85. The gain is the objective's choice between
   two near-equal five-cluster solutions (one persona-like) tipping to the persona-like one; it
   is gone with ``r`` above ~30 mean eigenvalues.

Columns with no spread at all when fitted (every user has no views, or nobody has bought from a
category yet) are kept at the floor scale and listed in ``constant_``: they add nothing to
distances today, and a change in them (a new category appearing) shows up tomorrow. A scaler
stored before the shrinkage existed (no ``shrink`` key) transforms as it was fitted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from automation.errors import ValidationError

LOG_COLUMNS = {
    "recency_days",
    "inactive_days",
    "frequency",
    "avg_order_value",
    "tenure_days",
    "interpurchase_days",
    "distinct_items",
    "n_views",
    "n_carts",
    "units_per_line",
}
SIGNED_LOG_COLUMNS = {"monetary"}
BOUNDED_PREFIXES = ("aff_", "refund_rate", "view_to_cart", "cart_to_purchase", "activity_trend")
PSEUDO = {
    "view_to_cart": 5.0,
    "cart_to_purchase": 5.0,
    "refund_rate": 2.0,
    "aff_": 20.0,
    "activity_trend": 2.0,
    "units_per_line": 3.0,
    "price_index": 3.0,
    "avg_order_value": 0.5,
    "interpurchase_days": 0.5,
}
"""Pseudo-counts of the shrinkage (views, carts, orders, weighted interactions, orders, lines,
lines, orders, intervals between orders)."""
AFFINITY_WEIGHT = 2.0
"""Total weight of the affinity columns (a composition: they share it)."""
WHITEN_RIDGE = 8.0
"""The whitening's regulariser in mean eigenvalues (step 5). On the simulator 1-16 give the same
partitions (ARI within 0.015). On Online Retail, whose spectrum is flat after its top two
directions, 1 and 2 flattened it: the demo's warm-up chose K=8 / K=5, and its monthly updates
merged segments and refitted four times (ids kept by no segment all year); 8 keeps the demo's
K=5, its five names and every id all year."""
TREND_SPAN_DAYS = 180.0
"""``activity_trend`` compares two 90-day windows: meaningful once a user's history covers both."""


def fit_whitening(X: np.ndarray) -> np.ndarray:
    """The regularised ZCA matrix of :class:`FeatureScaler` (step 5) for the scaled rows ``X``.

    The regulariser is the mean eigenvalue (the spread an average direction has), taken from the
    data: directions far above it are divided by their own spread, those below it keep about
    ``sqrt(ev / mean)`` of theirs.
    """
    if len(X) < 2 or X.shape[1] < 2:
        return np.eye(X.shape[1])
    C = np.cov(X, rowvar=False)
    ev, U = np.linalg.eigh(C)
    ev = np.clip(ev, 0.0, None)
    lam = WHITEN_RIDGE * float(ev.mean())
    if lam <= 0:
        return np.eye(X.shape[1])
    W = (U / np.sqrt(ev + lam)) @ U.T
    kept = float(np.trace(W @ C @ W))
    return W * np.sqrt(float(np.trace(C)) / kept) if kept > 0 else np.eye(X.shape[1])


def transform_column(name: str, values: np.ndarray) -> np.ndarray:
    if name in LOG_COLUMNS:
        return np.log1p(np.clip(values, 0, None))
    if name in SIGNED_LOG_COLUMNS:
        return np.sign(values) * np.log1p(np.abs(values))
    return values


def _is_affinity(name: str) -> bool:
    return name.startswith(("aff_", "taste_"))


def _col(raw: pd.DataFrame, name: str) -> np.ndarray | None:
    return raw[name].to_numpy(dtype="float64") if name in raw.columns else None


def _values(raw: pd.DataFrame, name: str, shrunk: dict[str, np.ndarray]) -> np.ndarray:
    return shrunk[name] if name in shrunk else raw[name].to_numpy(dtype="float64")


def _evidence(raw: pd.DataFrame) -> dict[str, np.ndarray]:
    """How many observations each user's ratio and share features rest on (raw counts)."""
    out: dict[str, np.ndarray] = {}
    views, carts = _col(raw, "n_views"), _col(raw, "n_carts")
    orders, items = _col(raw, "frequency"), _col(raw, "distinct_items")
    if views is not None and "view_to_cart" in raw.columns:
        out["view_to_cart"] = np.nan_to_num(views)
    if carts is not None and "cart_to_purchase" in raw.columns:
        out["cart_to_purchase"] = np.nan_to_num(carts)
    if orders is not None:
        out["refund_rate"] = np.nan_to_num(orders)
        # Without orders a basket value is 0 and the time between orders the tenure (a bound):
        # both made "never bought" an axis of its own next to frequency and spend.
        if "avg_order_value" in raw.columns:
            out["avg_order_value"] = np.nan_to_num(orders)
        if "interpurchase_days" in raw.columns:
            out["interpurchase_days"] = np.clip(np.nan_to_num(orders) - 1, 0, None)
    # Affinity shares weigh views 1, carts 2, purchases 4 (automation.features.affinity).
    to_purchase = _col(raw, "cart_to_purchase")
    bought = (
        np.nan_to_num(to_purchase) * np.nan_to_num(carts)
        if carts is not None and to_purchase is not None
        else items
    )
    parts = [
        np.nan_to_num(x) * w for x, w in ((views, 1), (carts, 2), (bought, 4)) if x is not None
    ]
    if parts:
        out["aff_"] = np.sum(parts, axis=0)
    if bought is not None:  # purchased lines (distinct items where carts are not recorded)
        for name in ("units_per_line", "price_index"):
            if name in raw.columns:
                out[name] = np.nan_to_num(bought)
    return out


def shrink(raw: pd.DataFrame, priors: dict[str, float]) -> pd.DataFrame:
    """``raw`` with the columns of :func:`shrunk_columns` replaced."""
    return raw.assign(**shrunk_columns(raw, priors))


def shrunk_columns(raw: pd.DataFrame, priors: dict[str, float]) -> dict[str, np.ndarray]:
    """Ratios and shares pulled towards the population value by the evidence behind them.

    A user with 3 views and 1 cart has a view-to-cart rate of 0.33 on paper, as far from the
    population as a heavy user's measured 0.33, while it says almost nothing. Empirical Bayes
    shrinkage, ``(n * x + a * prior) / (n + a)`` with ``n`` the user's observations and ``a``
    the pseudo-count of :data:`PSEUDO`, keeps the well-measured users where they are and moves
    the barely-measured ones to the middle, where they no longer scatter every segment. A
    ``rating_mean`` of 0 (no ratings) becomes the population mean of those who rated, and
    ``activity_trend`` is 0 unless the user's history covers both 90-day windows (a newer user's
    "orders before" window is empty, which made every buyer's trend +1), shrunk by orders.
    Only the changed columns are returned (no copy of the frame: an update transforms every user).
    """
    out: dict[str, np.ndarray] = {}
    ev = _evidence(raw)
    for name in raw.columns:
        key = "aff_" if name.startswith("aff_") else name
        if name in priors and key in ev:
            n, a = ev[key], PSEUDO[key]
            x = raw[name].to_numpy(dtype="float64")
            out[name] = (n * np.nan_to_num(x, nan=priors[name]) + a * priors[name]) / (n + a)
    if "rating_mean" in priors:
        r = raw["rating_mean"].to_numpy(dtype="float64")
        out["rating_mean"] = np.where(np.nan_to_num(r) > 0, r, priors["rating_mean"])
    if "activity_trend" in raw.columns and "tenure_days" in raw.columns:
        covered = raw["tenure_days"].to_numpy(dtype="float64") >= TREND_SPAN_DAYS
        orders = _col(raw, "frequency")
        k = np.zeros(len(raw)) if orders is None else np.nan_to_num(orders)
        trend = raw["activity_trend"].to_numpy(dtype="float64") * k / (k + PSEUDO["activity_trend"])
        out["activity_trend"] = np.where(covered, trend, 0.0)
    return out


def fit_priors(raw: pd.DataFrame) -> dict[str, float]:
    """Population values of the shrunk features: evidence-weighted means."""
    ev = _evidence(raw)
    priors: dict[str, float] = {}
    for name in raw.columns:
        key = "aff_" if name.startswith("aff_") else name
        if key in ev and ev[key].sum() > 0:
            x = np.nan_to_num(raw[name].to_numpy(dtype="float64"))
            priors[name] = float((x * ev[key]).sum() / ev[key].sum())
    if "rating_mean" in raw.columns:
        r = np.nan_to_num(raw["rating_mean"].to_numpy(dtype="float64"))
        if (r > 0).any():
            priors["rating_mean"] = float(r[r > 0].mean())
    return priors


class FeatureScaler:
    """Fit on a raw feature frame; transform frames with the same columns into a float matrix.

    Parameters
    ----------
    clip : float
        Scaled values are clipped to ``[-clip, clip]``.

    Examples
    --------
    >>> import pandas as pd
    >>> raw = pd.DataFrame({"frequency": [1, 2, 3, 50], "refund_rate": [0, 0, 0.1, 0.5]})
    >>> scaler = FeatureScaler().fit(raw)
    >>> scaler.transform(raw).shape
    (4, 2)
    """

    def __init__(self, clip: float = 6.0, whiten: bool = True) -> None:
        self.clip = clip
        self.whiten = whiten

    def fit(self, raw: pd.DataFrame) -> FeatureScaler:
        if self.clip <= 0:
            raise ValidationError(f"clip={self.clip} should be > 0")
        if raw.empty:
            raise ValidationError("cannot fit the scaler on an empty feature table")
        self.priors_ = fit_priors(raw)
        self.shrink_ = True
        shrunk = shrunk_columns(raw, self.priors_)
        centers: dict[str, float] = {}
        scales: dict[str, float] = {}
        constant: list[str] = []
        for name in raw.columns:
            x = transform_column(name, _values(raw, name, shrunk))
            if np.nanstd(x) == 0:
                constant.append(name)
            # The standard deviation, not the IQR: a column concentrated on a few values with a
            # tail (tenure when most users arrived at once, a refund rate mostly 0) has a tiny IQR,
            # and its tail then outweighed every informative column (clipping bounds outliers).
            floor = 0.05 if name.startswith(BOUNDED_PREFIXES) or _is_affinity(name) else 0.1
            centers[name] = float(np.nanmean(x))
            scales[name] = float(max(np.nanstd(x), floor))
        kept = list(raw.columns)
        if len(constant) == len(kept):
            raise ValidationError("every feature is constant: nothing to segment on")
        n_aff = sum(_is_affinity(c) for c in kept)
        self.feature_names_in_ = list(raw.columns)
        self.features_ = kept
        self.constant_ = constant
        self.center_ = centers
        self.scale_ = scales
        self.weight_ = {
            c: (AFFINITY_WEIGHT / np.sqrt(n_aff) if _is_affinity(c) else 1.0) for c in kept
        }
        self.whiten_: np.ndarray | None = None
        if self.whiten:
            self.whiten_ = fit_whitening(self.transform(raw))
        return self

    def transform(self, raw: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.features_ if c not in raw.columns]
        if missing:
            raise ValidationError(f"features missing from the table: {', '.join(missing)}")
        # Column by column into a feature-major buffer (contiguous writes), then one transpose:
        # the same values as stacking the columns, without a strided write per column.
        shrunk = shrunk_columns(raw, self.priors_) if self.shrink_ else {}
        out = np.empty((len(self.features_), len(raw)), dtype=np.float64)
        for j, name in enumerate(self.features_):
            x = transform_column(name, _values(raw, name, shrunk))
            z = (np.nan_to_num(x, nan=self.center_[name]) - self.center_[name]) / self.scale_[name]
            np.multiply(np.clip(z, -self.clip, self.clip), self.weight_[name], out=out[j])
        if self.whiten_ is not None:
            return np.ascontiguousarray(out.T @ self.whiten_)
        return np.ascontiguousarray(out.T)

    def fit_transform(self, raw: pd.DataFrame) -> np.ndarray:
        return self.fit(raw).transform(raw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "features": self.features_,
            "constant": self.constant_,
            "center": self.center_,
            "scale": self.scale_,
            "weight": self.weight_,
            "shrink": self.shrink_,
            "priors": self.priors_,
            "whiten": None if self.whiten_ is None else self.whiten_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureScaler:
        s = cls(clip=float(d["clip"]))
        s.features_ = list(d["features"])
        s.constant_ = list(d.get("constant", []))
        s.feature_names_in_ = list(s.features_)
        s.center_ = {k: float(v) for k, v in d["center"].items()}
        s.scale_ = {k: float(v) for k, v in d["scale"].items()}
        s.weight_ = {k: float(v) for k, v in d["weight"].items()}
        # Scalers stored before the shrinkage existed transform as they were fitted.
        s.shrink_ = bool(d.get("shrink", False))
        s.priors_ = {k: float(v) for k, v in d.get("priors", {}).items()}
        # Scalers stored before the decorrelation existed (no "whiten" key) do without it.
        w = d.get("whiten")
        s.whiten = w is not None
        s.whiten_ = None if w is None else np.asarray(w, dtype=np.float64)
        return s
