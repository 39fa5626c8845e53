"""``group_rows`` (the NumPy group-by of a block's aggregate rows) against pandas' ``groupby.agg``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from automation.features.partials import group_rows


@pytest.mark.parametrize("seed", range(5))
def test_group_rows_equals_pandas_groupby(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    keys = rng.integers(0, max(2, n // 3), n).astype(np.int64)
    stamps = rng.uniform(0, 1e9, n)
    bought = np.where(rng.random(n) < 0.4, stamps, np.nan)  # groups without any: NaN
    columns = {
        "ts": stamps,
        "last_ts": stamps,
        "first_purchase_ts": bought,
        "last_purchase_ts": bought,
        "count": rng.integers(0, 5, n).astype(np.int64),
        "revenue": rng.normal(0, 10, n),
    }
    got_keys, got = group_rows(keys, columns, minimum=("ts", "first_purchase_ts"))
    how = {"ts": "min", "last_ts": "max", "first_purchase_ts": "min", "last_purchase_ts": "max"}
    want = (
        pd.DataFrame({"k": keys, **columns})
        .groupby("k", sort=True)
        .agg({**how, "count": "sum", "revenue": "sum"})
    )
    np.testing.assert_array_equal(got_keys, want.index.to_numpy())
    for name in columns:
        np.testing.assert_allclose(got[name], want[name].to_numpy(), rtol=1e-12, atol=1e-9)
        assert got[name].dtype == want[name].dtype, name


def test_group_rows_empty() -> None:
    keys, out = group_rows(np.zeros(0, dtype=np.int64), {"ts": np.zeros(0), "n": np.zeros(0)})
    assert len(keys) == 0 and all(len(v) == 0 for v in out.values())
