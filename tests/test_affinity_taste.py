"""Taste coordinates (purchase-only data, no categories): an incremental update's projection,
summed by PostgreSQL, equals the one computed here from every (user, item) pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from automation.config import Settings
from automation.features.affinity import _purchases, _taste_frame, _taste_matrix, apply_affinity
from automation.features.build import build_features, restrict_users
from automation.ingest.run import ingest_files


def _shop(tmp_path: Path, n_users: int = 300, n_items: int = 60) -> Path:
    rng = np.random.default_rng(3)
    lines = ["user_id,type,timestamp,item_id,quantity,price,order_id"]
    for u in range(n_users):
        taste = rng.integers(0, 3)  # three tastes over overlapping item ranges
        for o in range(int(rng.integers(1, 5))):
            for _ in range(int(rng.integers(1, 6))):
                item = int(rng.integers(taste * 15, taste * 15 + 30)) % n_items
                t = 1_700_000_000 + int(rng.integers(0, 10_000_000))
                lines.append(f"u{u},purchase,{t},i{item},{int(rng.integers(1, 4))},2.5,o{u}-{o}")
        if u % 7 == 0:  # a customer who only looked: no purchases, no taste
            lines.append(f"v{u},view,1700000000,i1,1,2.5,")
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_database_projection_equals_the_pairwise_one(engine: Engine, tmp_path: Path) -> None:
    ingest_files(engine, [_shop(tmp_path)], Settings())
    with engine.connect() as conn:
        table = build_features(conn)  # the whole population: fits the taste SVD
        model = table.affinity_model
        assert model.kind == "taste"
        keys = [int(k) for k in table.frame.index[::3]] + [10**9]  # and a key with no row
        users = pd.Index(keys, name="user_key")
        only = restrict_users(conn, keys)
        got = apply_affinity(conn, model, users, only)
        ui = _purchases(conn, "user_items", None, only)
        want = _taste_frame(
            (_taste_matrix(ui, users, model.items, model.idf) @ model.components.T) * model.signs,
            users,
        )
        n_buyers = conn.execute(text("SELECT COUNT(DISTINCT user_key) FROM user_items")).scalar()
    assert got is not None and list(got.columns) == list(want.columns)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-9, atol=1e-12)
    assert (np.abs(got.to_numpy()).sum(axis=1) > 0).sum() > 50  # real coordinates, not zeros
    assert n_buyers and n_buyers < len(table.frame)  # the viewers have none
    # The full fit's coordinates, for the same users, are the same projection.
    full = table.frame.loc[keys[:-1], list(want.columns)].to_numpy()
    np.testing.assert_allclose(got.to_numpy()[:-1], full, rtol=1e-6, atol=1e-9)
