"""Rule-based segment names on hand-made profiles."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automation.segments import NOISE_NAME, name_segments, segment_profiles


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 5000
    tenure = rng.uniform(0, 730, n)
    freq = 1 + rng.poisson(2, n)
    aov = rng.lognormal(3.5, 0.5, n)
    return pd.DataFrame(
        {
            "recency_days": tenure * rng.uniform(0, 1, n),
            "frequency": freq,
            "monetary": freq * aov,
            "avg_order_value": aov,
            "tenure_days": tenure,
            "refund_rate": np.where(rng.uniform(size=n) < 0.85, 0.0, rng.uniform(0, 0.6, n)),
            "n_views": rng.poisson(30, n),
            "activity_trend": rng.uniform(-1, 1, n),
        }
    )


QUANTILE_COLUMNS = {"recency_days", "monetary", "avg_order_value", "tenure_days", "n_views"}


def profile(population: pd.DataFrame, **where: Any) -> dict[str, float]:
    """Population medians, with some columns set: floats in QUANTILE_COLUMNS are quantiles."""
    row = {str(c): float(population[c].median()) for c in population}
    for col, v in where.items():
        as_quantile = col in QUANTILE_COLUMNS or (col == "frequency" and isinstance(v, float))
        row[col] = float(population[col].quantile(v)) if as_quantile else float(v)
    return row


def names_for(population: pd.DataFrame, rows: dict[int, dict[str, float]]) -> dict[int, str]:
    return name_segments(pd.DataFrame.from_dict(rows, orient="index"), population)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"recency_days": 0.9, "monetary": 0.9, "tenure_days": 0.8}, "Lapsed big spenders"),
        (
            {"tenure_days": 0.05, "recency_days": 0.03, "frequency": 1, "monetary": 0.2},
            "New one-time buyers",
        ),
        (
            {"recency_days": 0.35, "frequency": 0.92, "monetary": 0.92, "tenure_days": 0.7},
            "High-value loyal",
        ),
        (
            {"recency_days": 0.62, "frequency": 0.88, "monetary": 0.5, "tenure_days": 0.7},
            "At-risk regulars",
        ),
        ({"frequency": 2, "monetary": 0.12}, "Occasional low spenders"),
        ({"frequency": 0, "monetary": 0, "n_views": 0.9}, "Window shoppers"),
        ({"refund_rate": 0.45}, "Frequent refunders"),
        ({"n_views": 0.95, "frequency": 2, "monetary": 0.4}, "Browsers who rarely buy"),
        ({"monetary": 1.0, "frequency": 0.99}, "Wholesale-scale buyers"),
        ({}, "Mainstream customers"),
        ({"recency_days": 0.1}, "Active customers"),
        ({"recency_days": 0.5, "activity_trend": -0.6}, "At-risk customers"),
    ],
)
def test_single_segment_names(
    population: pd.DataFrame, where: dict[str, float], expected: str
) -> None:
    assert names_for(population, {0: profile(population, **where)}) == {0: expected}


def test_names_come_from_profiles_not_ids(population: pd.DataFrame) -> None:
    rows = [
        profile(population, recency_days=0.9, monetary=0.9),
        profile(population, tenure_days=0.05, recency_days=0.03, frequency=1, monetary=0.2),
        profile(population, frequency=0, monetary=0, n_views=0.9),
    ]
    a = names_for(population, {0: rows[0], 1: rows[1], 2: rows[2]})
    b = names_for(population, {5: rows[2], 0: rows[1], 9: rows[0]})
    assert [a[0], a[1], a[2]] == [b[9], b[0], b[5]]


def test_duplicates_get_the_most_distinguishing_qualifier(population: pd.DataFrame) -> None:
    recent = profile(population, monetary=0.9, recency_days=0.2, avg_order_value=0.5)
    older = profile(population, monetary=0.9, recency_days=0.5, avg_order_value=0.52)
    names = names_for(population, {0: recent, 1: older})
    assert names == {0: "Big spenders (recent)", 1: "Big spenders (less recent)"}
    baskets = profile(population, monetary=0.9, recency_days=0.21, avg_order_value=0.95)
    names = names_for(population, {0: recent, 1: baskets})
    assert names == {0: "Big spenders (small baskets)", 1: "Big spenders (large baskets)"}


def test_numerals_are_the_last_resort(population: pd.DataFrame) -> None:
    same = profile(population, monetary=0.9)
    names = names_for(population, {0: same, 1: same, 2: same})
    assert sorted(names.values()) == ["Big spenders (1)", "Big spenders (2)", "Big spenders (3)"]


def test_noise_and_outlier_segments(population: pd.DataFrame) -> None:
    rows = {
        -1: profile(population),
        0: profile(population, monetary=1.0, frequency=0.99),
        1: profile(population, monetary=0.1),
        2: profile(population, monetary=0.5),
    }
    profiles = pd.DataFrame.from_dict(rows, orient="index")
    names = name_segments(profiles, population, outlier_share={0: 0.9, 1: 0.6, 2: 0.1})
    assert names == {
        -1: NOISE_NAME,
        0: "Wholesale-scale outliers",
        1: "Extreme-activity outliers",
        2: "Mainstream customers",
    }


def test_only_present_columns_are_used() -> None:
    pop = pd.DataFrame({"monetary": np.arange(100.0), "frequency": 1 + np.arange(100) % 7})
    prof = pd.DataFrame({"monetary": [95.0, 3.0], "frequency": [6.0, 1.0], "other": [1, 2]})
    assert name_segments(prof, pop) == {0: "High-value loyal", 1: "Low-spend one-time buyers"}
    assert name_segments(prof[["other"]], pop) == {
        0: "Mainstream customers (1)",
        1: "Mainstream customers (2)",
    }


def test_segment_profiles_are_medians() -> None:
    raw = pd.DataFrame(
        {"monetary": [1.0, 2.0, 3.0, 10.0, 20.0], "country": list("ababa")}, index=list("vwxyz")
    )
    out = segment_profiles(raw, np.array([0, 0, 0, 1, -1]))
    assert out.index.tolist() == [-1, 0, 1]
    assert out["monetary"].tolist() == [20.0, 2.0, 10.0]
    assert "country" not in out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(0, 8), st.floats(0, 1)
        ),
        min_size=1,
        max_size=12,
    )
)
def test_names_are_always_unique_and_non_empty(rows: list[tuple[float, ...]]) -> None:
    rng = np.random.default_rng(0)
    pop = pd.DataFrame(
        {
            "recency_days": rng.uniform(0, 365, 300),
            "monetary": rng.lognormal(4, 1, 300),
            "tenure_days": rng.uniform(0, 730, 300),
            "frequency": rng.integers(0, 9, 300),
            "refund_rate": rng.uniform(0, 0.5, 300),
        }
    )
    profiles = pd.DataFrame(
        [
            {
                "recency_days": r * 365,
                "monetary": float(np.quantile(pop["monetary"], m)),
                "tenure_days": t * 730,
                "frequency": f,
                "refund_rate": rr * 0.5,
            }
            for r, m, t, f, rr in rows
        ]
    )
    names = name_segments(profiles, pop)
    assert len(set(names.values())) == len(rows)
    assert all(name.strip() for name in names.values())
