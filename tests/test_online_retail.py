"""The bundled real data end to end: ingest, features, segments, history, on both databases."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, text

from automation import api
from automation.features.build import build_features
from automation.store.db import open_store
from tests.conftest import ONLINE_RETAIL, _pg_store

# Known traits of the file (automation/data/README.md).
LINES = 541_909
NO_CUSTOMER = 135_080


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def retail(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Online Retail ingested once per database, and segmented once with --k auto."""
    with tempfile.TemporaryDirectory() as d:
        urls = (
            iter([f"sqlite:///{Path(d) / 'or.db'}"]) if request.param == "sqlite" else _pg_store()
        )
        url = next(urls)
        engine = open_store(url)
        report = api.ingest(engine, [ONLINE_RETAIL], preset="online-retail")
        result = api.segment(engine, k="auto", seed=0)
        yield {"engine": engine, "report": report, "result": result, "dialect": request.param}
        engine.dispose()
        for _ in urls:  # finish the generator: drops the PostgreSQL schema
            pass


def test_every_line_is_accounted_for(retail: dict[str, Any]) -> None:
    r = retail["report"]
    assert r.read == LINES
    assert r.read == r.accepted + r.duplicates + r.quarantined
    assert r.reasons["missing_user_id"] == NO_CUSTOMER
    assert r.accepted > 400_000
    with retail["engine"].connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == r.accepted
        assert conn.execute(text("SELECT COUNT(*) FROM users")).scalar() == 4372
        assert conn.execute(text("SELECT COUNT(*) FROM quarantine")).scalar() == r.quarantined
        refunds = conn.execute(text("SELECT COUNT(*) FROM events WHERE type = 'refund'"))
        assert refunds.scalar() > 8000
        stored = conn.execute(
            text(
                "SELECT SUM(read), SUM(accepted), SUM(duplicates), SUM(quarantined) "
                "FROM ingest_batches WHERE finished_at IS NOT NULL"
            )
        ).one()
        assert tuple(stored) == (r.read, r.accepted, r.duplicates, r.quarantined)


def test_reingest_adds_nothing(retail: dict[str, Any]) -> None:
    engine: Engine = retail["engine"]
    with engine.connect() as conn:
        before = [
            conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()
            for t in ("events", "quarantine", "user_orders", "user_items")
        ]
        revenue = conn.execute(text("SELECT SUM(purchase_revenue) FROM user_stats")).scalar()
    again = api.ingest(engine, [ONLINE_RETAIL], preset="online-retail")
    assert again.accepted == 0
    assert again.duplicates == retail["report"].accepted + retail["report"].duplicates
    with engine.connect() as conn:
        after = [
            conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()
            for t in ("events", "quarantine", "user_orders", "user_items")
        ]
        assert conn.execute(text("SELECT SUM(purchase_revenue) FROM user_stats")).scalar() == (
            pytest.approx(revenue)
        )
    assert after == before


def test_running_aggregates_equal_a_recompute_from_events(retail: dict[str, Any]) -> None:
    with retail["engine"].connect() as conn:
        fast = build_features(conn).frame
        slow = build_features(conn, from_events=True).frame
    pd.testing.assert_frame_equal(fast, slow, check_exact=False, rtol=1e-9, atol=1e-9)


def test_as_of_recomputes_the_past(retail: dict[str, Any], tmp_path: Path) -> None:
    """Features as of June equal those of a store that only ever saw events up to June."""
    cut = pd.Timestamp("2011-06-01", tz="UTC")
    with retail["engine"].connect() as conn:
        past = build_features(conn, as_of=cut).frame
    raw = pd.read_csv(ONLINE_RETAIL, dtype=str)
    stamp = pd.to_datetime(raw["InvoiceDate"]).dt.tz_localize("Europe/London").dt.tz_convert("UTC")
    raw[(stamp <= cut).to_numpy()].to_csv(tmp_path / "early.csv", index=False)
    early = open_store(f"sqlite:///{tmp_path / 'early.db'}")
    api.ingest(early, [tmp_path / "early.csv"], preset="online-retail")
    with early.connect() as conn:
        direct = build_features(conn, as_of=cut).frame
    early.dispose()
    assert len(past) == len(direct) < 4372
    base = [c for c in direct.columns if not c.startswith("taste_")]
    np.testing.assert_allclose(past[base].to_numpy(), direct[base].to_numpy(), rtol=1e-9, atol=1e-9)


def test_auto_k_named_segments_with_quality(retail: dict[str, Any]) -> None:
    result = retail["result"]
    data = result.to_dict()
    assert 2 <= data["k"] <= 10
    assert set(data["quality"]) == {
        "silhouette",
        "davies_bouldin",
        "calinski_harabasz",
        "stability_ari",
    }
    assert data["quality"]["silhouette"] > 0.1
    assert data["quality"]["stability_ari"] > 0.6
    table = pd.DataFrame(data["k_selection"]["table"])
    assert list(table["k"]) == list(range(2, 11))
    assert f"k={data['k']}" in data["k_selection"]["reason"]
    names = [s["name"] for s in data["segments"]]
    assert len(set(names)) == len(names)
    assert sum(s["size"] for s in data["segments"]) == 4372
    assert all(s["id"].startswith("seg-") for s in data["segments"])
    for s in data["segments"]:
        assert {"representativeness", "separation", "distinguishing"} <= set(s["quality"])
        assert {"recency_days", "frequency", "monetary"} <= set(s["profile"])
    # Wholesale-scale accounts are flagged but still assigned.
    assert sum(s["outliers"] for s in data["segments"]) > 0


def test_refit_on_same_data_keeps_ids_and_history_answers_past_dates(
    retail: dict[str, Any], tmp_path: Path
) -> None:
    engine: Engine = retail["engine"]
    first = retail["result"]
    again = api.segment(engine, k=str(first.k), seed=0)
    assert [(s.segment_id, s.size, s.name) for s in again.segments] == [
        (s.segment_id, s.size, s.name) for s in first.segments
    ]
    past = api.segment(engine, k="4", as_of="2011-06-01", seed=0)
    # The newest as_of stays current; the past version answers past dates.
    assert api.segments(engine)["version"] == again.version
    assert api.segments(engine, as_of="2011-07-15")["version"] == past.version
    june = api.assignments(engine, as_of="2011-07-15")
    assert len(june) == past.n_users < 4372
    now = api.assignments(engine)
    assert len(now) == 4372 and now["segment_name"].notna().all()
    out = tmp_path / "a.parquet"
    now.to_parquet(out)
    assert len(pd.read_parquet(out)) == 4372
    user = api.user(engine, str(now["user_id"].iloc[0]))
    assert user["segment"]["id"] == now["segment_id"].iloc[0]
    assert user["features"]["frequency"] >= 0
    # Refitting the same data moved nobody: no migrations, no outbox events.
    assert user["history"] == []
    assert api.migrations(engine) == []
