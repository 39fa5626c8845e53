"""FeatureScaler: evidence shrinkage, standardisation, group weights, decorrelation, stored
round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from automation.features.scaling import AFFINITY_WEIGHT, FeatureScaler, fit_priors, shrink


def _raw(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    views = rng.poisson(30, n).astype(float)
    carts = rng.binomial(views.astype(int), 0.2).astype(float)
    bought = rng.binomial(carts.astype(int), 0.5).astype(float)
    orders = np.maximum(bought // 2, 0)
    rated = rng.random(n) < 0.5
    return pd.DataFrame(
        {
            "recency_days": rng.exponential(10, n),
            "tenure_days": rng.uniform(0, 400, n),
            "frequency": orders,
            "monetary": orders * 40.0,
            "distinct_items": bought,
            "refund_rate": np.where(orders > 0, rng.uniform(0, 0.2, n), 0.0),
            "activity_trend": np.where(orders > 0, 1.0, 0.0),
            "n_views": views,
            "view_to_cart": np.where(views > 0, carts / np.maximum(views, 1), 0.0),
            "n_carts": carts,
            "cart_to_purchase": np.where(carts > 0, bought / np.maximum(carts, 1), 0.0),
            "rating_mean": np.where(rated, rng.uniform(1, 5, n), 0.0),
            "aff_a": rng.uniform(0, 1, n),
            "aff_b": rng.uniform(0, 1, n),
        }
    )


def test_shrinkage_moves_thin_evidence_not_thick() -> None:
    raw = _raw()
    priors = fit_priors(raw)
    pooled = (raw["view_to_cart"] * raw["n_views"]).sum() / raw["n_views"].sum()
    assert priors["view_to_cart"] == pytest.approx(pooled)
    two = raw.iloc[:2].reset_index(drop=True).copy()
    two.loc[0, ["n_views", "n_carts", "view_to_cart"]] = [2.0, 2.0, 1.0]  # 2 views, 2 carts
    two.loc[1, ["n_views", "n_carts", "view_to_cart"]] = [2000.0, 2000.0, 1.0]  # same rate
    out = shrink(two, priors)
    thin, thick = out.loc[0, "view_to_cart"], out.loc[1, "view_to_cart"]
    assert priors["view_to_cart"] < thin < 0.5 < thick < 1.0
    assert thick == pytest.approx((2000 + 5 * priors["view_to_cart"]) / 2005)


def test_missing_rating_is_the_raters_mean_and_trend_needs_both_windows() -> None:
    raw = _raw()
    priors = fit_priors(raw)
    r = raw["rating_mean"]
    assert priors["rating_mean"] == pytest.approx(r[r > 0].mean())
    out = shrink(raw, priors)
    assert (out.loc[r == 0, "rating_mean"] == priors["rating_mean"]).all()
    assert (out.loc[r > 0, "rating_mean"] == r[r > 0]).all()
    young = raw["tenure_days"] < 180
    assert (out.loc[young, "activity_trend"] == 0).all()
    old_buyers = ~young & (raw["frequency"] > 0)
    k = raw.loc[old_buyers, "frequency"]
    assert np.allclose(out.loc[old_buyers, "activity_trend"], k / (k + 2))


def test_standardised_and_group_weighted() -> None:
    raw = _raw()
    scaler = FeatureScaler(whiten=False).fit(raw)
    X = scaler.transform(raw)
    cols = scaler.features_
    w = np.array([scaler.weight_[c] for c in cols])
    # Unclipped columns have unit spread before their weight.
    spread = X.std(axis=0) / w
    assert np.allclose(spread[[cols.index("n_views"), cols.index("recency_days")]], 1.0, atol=0.05)
    aff = [c for c in cols if c.startswith("aff_")]
    assert sum(scaler.weight_[c] ** 2 for c in aff) == pytest.approx(AFFINITY_WEIGHT**2)
    assert scaler.weight_["tenure_days"] == scaler.weight_["monetary"] == 1.0


def test_round_trip_and_scalers_stored_before_shrinkage() -> None:
    raw = _raw()
    scaler = FeatureScaler().fit(raw)
    again = FeatureScaler.from_dict(scaler.to_dict())
    assert np.array_equal(again.transform(raw), scaler.transform(raw))
    legacy = scaler.to_dict()
    del legacy["shrink"], legacy["priors"], legacy["whiten"]
    old = FeatureScaler.from_dict(legacy)
    X = old.transform(raw)
    j = old.features_.index("view_to_cart")
    v = raw["view_to_cart"].to_numpy()
    expected = np.clip((v - old.center_["view_to_cart"]) / old.scale_["view_to_cart"], -6, 6)
    assert np.allclose(X[:, j], expected * old.weight_["view_to_cart"])
    assert not np.allclose(X, scaler.transform(raw))


def test_decorrelation_shrinks_the_redundant_direction_and_keeps_columns() -> None:
    """Five columns that all measure activity: after the whitening the direction they share
    weighs less against the others, the total variance is what it was, and column j still
    follows feature j (ZCA, not a rotation onto principal axes)."""
    raw = _raw(n=2000, seed=1)
    plain = FeatureScaler(whiten=False).fit(raw).transform(raw)
    scaler = FeatureScaler().fit(raw)
    X = scaler.transform(raw)
    ev_plain = np.linalg.eigvalsh(np.cov(plain, rowvar=False))
    ev = np.linalg.eigvalsh(np.cov(X, rowvar=False))
    assert ev.sum() == pytest.approx(ev_plain.sum(), rel=1e-6)
    assert ev[-1] / ev.sum() < 0.9 * ev_plain[-1] / ev_plain.sum()
    for j in range(X.shape[1]):
        if plain[:, j].std() > 0:
            assert np.corrcoef(plain[:, j], X[:, j])[0, 1] > 0.5
    assert scaler.whiten_ is not None and np.allclose(scaler.whiten_, scaler.whiten_.T)
