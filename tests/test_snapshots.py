"""The incremental feature snapshot: a base plus per-update deltas reads exactly as full
snapshots written per update, agrees with the full-rewrite rule it replaced, is cached per
process only while it is the newest, and erasure removes a user from the base and every delta."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, text

from automation import api
from automation.features.build import build_features
from automation.segments.update import run_update
from automation.simulate import simulate
from automation.store.db import open_store
from automation.store.erase import erase_user
from automation.store.history import resolve
from automation.store.segmentations import current_version
from automation.store.snapshots import Compaction, Snapshot, forget, load_snapshot, load_stored

START = pd.Timestamp("2024-01-01", tz="UTC")
DAYS = 20
WARM = 14


@pytest.fixture(scope="module")
def days_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sim = simulate(n_users=1500, days=DAYS, seed=3, target_events=36_000)
    day = ((sim.events["timestamp"] - START).dt.days).to_numpy()
    out = tmp_path_factory.mktemp("days")
    sim.events[day < WARM].to_csv(out / "warm.csv", index=False)
    for d in range(WARM, DAYS):
        sim.events[day == d].to_csv(out / f"d{d}.csv", index=False)
    return out


def _warm(engine: Engine, days_dir: Path) -> None:
    api.ingest(engine, [days_dir / "warm.csv"])
    api.segment(engine, k="4", seed=0)


def _fresh(engine: Engine) -> Snapshot:
    """The newest snapshot read from the database, not from this process's copy."""
    forget()
    with engine.connect() as conn:
        snap = load_snapshot(conn)
    assert snap is not None and snap.labels is not None
    return snap


def _count(conn: Connection, table: str) -> int:
    return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())  # noqa: S608


def _full_rule(prev: Snapshot, at: pd.Timestamp, fresh: pd.DataFrame) -> pd.DataFrame:
    """What the full-rewrite snapshot held: everyone advanced by the elapsed time, the touched
    users' features recomputed, stored as float32."""
    out = prev.raw.copy()
    dt = (at - prev.at).total_seconds() / 86_400.0
    for col in ("recency_days", "tenure_days", "inactive_days"):
        out[col] += dt
    one = out["frequency"] < 2
    out.loc[one, "interpurchase_days"] += dt
    out = out.reindex(out.index.union(fresh.index))
    out.loc[fresh.index, list(fresh.columns)] = fresh.to_numpy()
    return out.fillna(0.0).astype(np.float32).astype(np.float64)


def test_deltas_read_as_full_snapshots_and_as_the_full_rewrite(
    days_dir: Path, tmp_path: Path
) -> None:
    # The same days into three stores: deltas only, compaction every 2, a full snapshot each.
    stores = {m: open_store(f"sqlite:///{tmp_path / f's{m}.db'}") for m in (100, 2, 0)}
    for engine in stores.values():
        _warm(engine, days_dir)
    prev = _fresh(stores[100])
    for d in range(WARM, DAYS):
        results = []
        for max_deltas, engine in stores.items():
            api.ingest(engine, [days_dir / f"d{d}.csv"])
            results.append(run_update(engine, compaction=Compaction(max_deltas, max_share=2.0)))
        assert all(r is not None for r in results)
        assert len({(r.migrations, tuple(sorted(r.sizes.items()))) for r in results if r}) == 1
        snaps = [_fresh(e) for e in stores.values()]
        for other in snaps[1:]:  # bit for bit
            pd.testing.assert_frame_equal(snaps[0].raw, other.raw, check_exact=True)
            assert snaps[0].labels is not None and other.labels is not None
            assert snaps[0].labels.equals(other.labels)
            assert snaps[0].at == other.at
        snap, engine = snaps[0], stores[100]
        with engine.connect() as conn:
            # The labels are the recorded assignment of the newest version.
            live = resolve(conn, current_version(conn)).set_index("user_key")["segment_id"]
            assert snap.labels is not None
            assert snap.labels.sort_index().astype(str).equals(live.sort_index().astype(str))
            # The features are what the full rewrite would have stored.
            batch = conn.execute(text("SELECT MAX(id) FROM ingest_batches")).scalar_one()
            touched = conn.execute(
                text("SELECT user_key FROM batch_users WHERE batch_id = :b"), {"b": batch}
            ).scalars()
            fresh = build_features(conn, user_keys=list(touched), affinity_model=snap.affinity)
        expected = _full_rule(prev, snap.at, fresh.frame[list(snap.raw.columns)])
        assert expected.index.equals(snap.raw.index)
        np.testing.assert_allclose(snap.raw.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-9)
        prev = snap
    counts = []
    for engine in stores.values():
        with engine.connect() as conn:
            counts.append(
                (_count(conn, "feature_snapshot_deltas"), _count(conn, "feature_snapshots"))
            )
        engine.dispose()
    assert counts == [(DAYS - WARM, 1), ((DAYS - WARM) % 3, 1), (0, 1)]


def test_the_process_copy_is_used_only_while_it_is_the_newest(
    days_dir: Path, tmp_path: Path
) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    _warm(engine, days_dir)
    api.ingest(engine, [days_dir / f"d{WARM}.csv"])
    assert run_update(engine) is not None
    with engine.connect() as conn:
        written = load_stored(conn)  # the copy the update kept
        assert written is not None and load_stored(conn) is written
    forget()
    with engine.connect() as conn:
        read = load_stored(conn)
    assert read is not None and read is not written and read.token == written.token
    pd.testing.assert_frame_equal(read.frame(), written.frame(), check_exact=True)
    assert (read.rows.labels == written.rows.labels).all()
    # A rolled-back write leaves the database's snapshot the newest: the copy is not used.
    api.ingest(engine, [days_dir / f"d{WARM + 1}.csv"])
    with pytest.raises(RuntimeError), engine.begin() as conn:
        from automation.segments.update import _update

        cur = current_version(conn)
        batch = conn.execute(text("SELECT MAX(id) FROM ingest_batches")).scalar_one()
        _update(conn, cur, int(batch), None, 7.0, (0.65, 0.3))
        raise RuntimeError("roll back")
    with engine.connect() as conn:
        again = load_stored(conn)
    assert again is not None and again.token == written.token and again.version == read.version
    engine.dispose()


def _keys_in(conn: Connection, table: str) -> set[int]:
    keys: set[int] = set()
    for (data,) in conn.execute(text(f"SELECT data FROM {table}")).all():  # noqa: S608
        keys |= set(np.load(io.BytesIO(bytes(data)))["user_keys"].tolist())
    return keys


def test_erasure_removes_the_user_from_the_base_and_every_delta(
    engine: Engine, days_dir: Path
) -> None:
    _warm(engine, days_dir)
    for d in range(WARM, WARM + 3):  # three deltas on the refit's base
        api.ingest(engine, [days_dir / f"d{d}.csv"])
        assert run_update(engine, compaction=Compaction(max_share=2.0)) is not None
    with engine.connect() as conn:
        in_base, in_deltas = (
            _keys_in(conn, "feature_snapshots"),
            _keys_in(conn, "feature_snapshot_deltas"),
        )
        key = min(in_base & in_deltas)
        external = conn.execute(text("SELECT external_id FROM users WHERE id = :u"), {"u": key})
        user_id = str(external.scalar_one())
        cached = load_stored(conn)
    assert cached is not None and key in cached.rows.keys
    erase_user(engine, user_id)
    with engine.connect() as conn:
        assert key not in _keys_in(conn, "feature_snapshots")
        assert key not in _keys_in(conn, "feature_snapshot_deltas")
        assert _count(conn, "feature_snapshot_deltas") == 3
    assert key not in _fresh(engine).raw.index
    # The next update builds on the erased snapshot, and the user does not come back.
    api.ingest(engine, [days_dir / f"d{WARM + 3}.csv"])
    assert run_update(engine) is not None
    snap = _fresh(engine)
    assert key not in snap.raw.index
    assert snap.labels is not None and len(snap.labels) == len(snap.raw)


@pytest.mark.parametrize("with_labels", [True, False])
def test_a_snapshot_written_before_deltas_still_reads(
    days_dir: Path, tmp_path: Path, with_labels: bool
) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'old.db'}")
    _warm(engine, days_dir)
    snap = _fresh(engine)
    assert snap.labels is not None
    arrays: dict[str, Any] = {
        "user_keys": snap.raw.index.to_numpy(dtype=np.int64),
        "values": snap.raw.to_numpy(dtype=np.float32),
        "affinity": np.frombuffer(snap.affinity.to_bytes(), dtype=np.uint8),
    }
    if with_labels:
        arrays["labels"] = snap.labels.to_numpy(dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # the format of a full snapshot per version, without a token
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE feature_snapshots SET data = :d, token = NULL"), {"d": buf.getvalue()}
        )
    old = _fresh(engine)
    np.testing.assert_allclose(old.raw.to_numpy(), snap.raw.to_numpy(), rtol=1e-6)  # float32
    api.ingest(engine, [days_dir / f"d{WARM}.csv"])
    assert run_update(engine) is not None
    with engine.connect() as conn:
        live = resolve(conn, current_version(conn)).set_index("user_key")["segment_id"]
        if not with_labels:  # rewritten in full, with segment ids
            assert _count(conn, "feature_snapshot_deltas") == 0
    new = _fresh(engine)
    assert new.labels is not None
    assert new.labels.sort_index().astype(str).equals(live.sort_index().astype(str))
    engine.dispose()
