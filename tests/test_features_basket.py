"""Basket features: units per purchased line, the price index, and their shrinkage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, text

from automation.config import Settings
from automation.features.build import build_features
from automation.features.scaling import PSEUDO, FeatureScaler, fit_priors, shrink
from automation.ingest.run import ingest_files

HEAD = "user_id,type,timestamp,item_id,quantity,price,category,order_id\n"
# Category "a": items at 2, 4 and 8 (median 4); category "b": 10 and 30 (the median of their
# log prices is the mean of the two: log(10 * 30) / 2).
ITEMS = {"a1": (2.0, "a"), "a2": (4.0, "a"), "a3": (8.0, "a"), "b1": (10.0, "b"), "b2": (30.0, "b")}


def _rows(with_category: bool, with_carts: bool = True) -> str:
    def line(u: str, kind: str, t: int, item: str, q: int, order: str) -> str:
        price, cat = ITEMS[item]
        return f"{u},{kind},{1_700_000_000 + t},{item},{q},{price},{cat if with_category else ''},{order}\n"

    rows = [line("u0", "view", i, item, 1, "") for i, item in enumerate(ITEMS)]  # every item seen
    rows += [line("u1", "cart", 9, "a1", 6, "")] if with_carts else []
    rows += [
        # cheap and bulk: a1 (log 2/4) x 6, b1 (-log 3 / 2) x 4
        line("u1", "purchase", 10, "a1", 6, "o1"),
        line("u1", "purchase", 11, "b1", 4, "o1"),
        # dear, single pieces: a3 (log 8/4), b2 (+log 3 / 2), a2 (0)
        line("u2", "purchase", 20, "a3", 1, "o2"),
        line("u2", "purchase", 21, "b2", 1, "o2"),
        line("u2", "purchase", 22, "a2", 1, "o3"),
        line("u2", "refund", 30, "a2", 1, "o3"),
        line("u3", "view", 40, "a2", 1, ""),  # never bought
    ]
    return HEAD + "".join(rows)


def _store(
    engine: Engine, tmp_path: Path, with_category: bool, with_carts: bool = True
) -> pd.DataFrame:
    path = tmp_path / "events.csv"
    path.write_text(_rows(with_category, with_carts))
    assert ingest_files(engine, [path], Settings()).accepted == 12 + with_carts
    with engine.connect() as conn:
        # Every user by key: a lookup, so no taste SVD (this store is too small for one).
        keys = [int(k) for k in conn.execute(text("SELECT id FROM users")).scalars()]
        table = build_features(conn, user_keys=keys)
    return table.frame.set_axis(table.external_ids.to_numpy())


def test_units_per_line_and_price_index(engine: Engine, tmp_path: Path) -> None:
    f = _store(engine, tmp_path, with_category=True)
    assert f.loc["u1", "units_per_line"] == pytest.approx(5.0)  # 10 units, 2 lines
    assert f.loc["u2", "units_per_line"] == pytest.approx(1.0)  # the refunded line left out
    assert f.loc["u3", "units_per_line"] == 0.0
    cheap = (math.log(2 / 4) - math.log(3) / 2) / 2
    dear = (math.log(8 / 4) + math.log(3) / 2 + 0.0) / 3  # every purchased line counts
    assert f.loc["u1", "price_index"] == pytest.approx(cheap)
    assert f.loc["u2", "price_index"] == pytest.approx(dear)
    assert f.loc["u3", "price_index"] == 0.0


def test_no_price_index_without_categories(engine: Engine, tmp_path: Path) -> None:
    """Online Retail has no categories: the price index is not made (units per line is)."""
    f = _store(engine, tmp_path, with_category=False)
    assert "price_index" not in f.columns
    assert f.loc["u1", "units_per_line"] == pytest.approx(5.0)


def test_no_units_per_line_on_purchase_only_data(engine: Engine, tmp_path: Path) -> None:
    """Without carts (Online Retail: purchases and cancellations only) no units per line."""
    f = _store(engine, tmp_path, with_category=True, with_carts=False)
    assert "units_per_line" not in f.columns
    assert "price_index" in f.columns


def _raw(n: int = 300, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    orders = rng.poisson(2.0, n).astype(float)
    orders[:10] = 0.0
    lines = orders * 2
    return pd.DataFrame(
        {
            "frequency": orders,
            "avg_order_value": np.where(orders > 0, rng.uniform(10, 100, n), 0.0),
            "tenure_days": rng.uniform(5, 60, n),
            "interpurchase_days": np.where(orders >= 2, rng.uniform(1, 20, n), 60.0),
            "distinct_items": lines,
            "units_per_line": np.where(lines > 0, rng.uniform(1, 4, n), 0.0),
            "price_index": np.where(lines > 0, rng.normal(0, 0.5, n), 0.0),
        }
    )


def test_no_orders_is_not_an_axis_of_its_own() -> None:
    """Without orders, the basket value, the time between orders, the units per line and the
    price index are the population's (not 0 or the tenure); a well-measured user keeps his."""
    raw = _raw()
    priors = fit_priors(raw)
    out = shrink(raw, priors)
    none = raw["frequency"] == 0
    for col in ("avg_order_value", "interpurchase_days", "units_per_line", "price_index"):
        assert np.allclose(out.loc[none, col], priors[col]), col
    many = raw["frequency"].idxmax()
    n = raw.loc[many, "frequency"]
    a = PSEUDO["avg_order_value"]
    expect = (n * raw.loc[many, "avg_order_value"] + a * priors["avg_order_value"]) / (n + a)
    assert out.loc[many, "avg_order_value"] == pytest.approx(expect)
    assert abs(out.loc[many, "avg_order_value"] - raw.loc[many, "avg_order_value"]) < abs(
        priors["avg_order_value"] - raw.loc[many, "avg_order_value"]
    )
    # One order: no interval between orders, the prior; the scaled matrix is finite.
    one = raw.index[raw["frequency"] == 1]
    assert len(one) and np.allclose(
        out.loc[one, "interpurchase_days"], priors["interpurchase_days"]
    )
    assert np.isfinite(FeatureScaler().fit_transform(raw)).all()
