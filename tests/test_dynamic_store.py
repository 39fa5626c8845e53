"""Incremental updates against the store, on SQLite and PostgreSQL: exactly once, time travel,
stable ids, recorded migrations, the outbox and the commands that read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from automation import api
from automation.cli import main
from automation.segments.update import check_drift, run_update
from automation.simulate import simulate

START = pd.Timestamp("2024-01-01", tz="UTC")


@pytest.fixture
def shop(tmp_path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    sim = simulate(n_users=3000, days=36, seed=2, scenarios=["emerging@24"], target_events=90_000)
    days = ((sim.events["timestamp"] - START).dt.days).to_numpy()
    return sim.events, days


def write_day(events: pd.DataFrame, mask: np.ndarray, path: Path) -> Path:
    events[mask].to_csv(path, index=False)
    return path


def test_daily_updates_exactly_once_with_time_travel(
    engine: Engine, shop: tuple[pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    events, days = shop
    first = api.update(engine, [write_day(events, days < 20, tmp_path / "base.csv")])
    assert "refit" in first and first["refit"]["k"] >= 2  # the first update fits
    refit_ids = {s["id"] for s in first["refit"]["segments"]}
    seen: dict[int, pd.Series] = {}
    as_of: dict[int, str] = {}
    transitions: list[dict[str, Any]] = []
    for d in range(20, 36):
        out = api.update(
            engine, [write_day(events, days == d, tmp_path / f"d{d}.csv")], refit_on_drift=False
        )
        assert out["version"] is not None and out["users_touched"] > 0
        assert set(out) >= {
            "version",
            "events",
            "users_touched",
            "migrations",
            "transitions",
            "quality",
        }
        transitions += out["transitions"]
        frame = api.assignments(engine)
        seen[out["version"]] = frame.set_index("user_id")["segment_id"]
        as_of[out["version"]] = frame["as_of"].iloc[0]
    # Nothing pending: no new version.
    assert run_update(engine) is None
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, parent_id, last_batch_id, kind FROM segmentations ORDER BY id")
        ).all()
        batches = [b for (b,) in conn.execute(text("SELECT id FROM ingest_batches ORDER BY id"))]
    updates = [r for r in rows if r.kind == "update"]
    assert [r.last_batch_id for r in updates] == batches[1:]  # each batch folded in exactly once
    # Time travel: every past version answers what was current then.
    for version, expected in seen.items():
        got = api.assignments(engine, as_of=as_of[version]).set_index("user_id")["segment_id"]
        assert got.sort_index().equals(expected.sort_index())
    # Surviving ids keep their meaning: an id leaves only through a recorded transition.
    final = set(api.assignments(engine)["segment_id"])
    ended = {s for t in transitions if t["type"] in ("retired", "merged") for s in t["segments"]}
    assert refit_ids - ended <= final | ended
    born = [t for t in transitions if t["type"] == "born"]
    assert all(t["segments"][0] not in refit_ids for t in born)
    # Every migration is recorded with an explanation and an outbox event.
    moves = api.migrations(engine)
    assert moves and all(m["explanation"]["distance_to_new"] is not None for m in moves)
    caused = [m for m in moves if m["reason"] == "events"]
    assert caused and all(m["events"] > 0 and len(m["explanation"]["batches"]) == 2 for m in caused)
    assert {m["reason"] for m in moves} <= {
        "events",
        "time",
        "new_user",
        "born",
        "split",
        "merged",
        "retired",
        "refit",
    }
    with engine.connect() as conn:
        entered = conn.execute(
            text("SELECT COUNT(*), COUNT(DISTINCT key) FROM outbox WHERE event = 'Segment Entered'")
        ).one()
    assert entered[0] == entered[1] == len(moves)
    assert isinstance(check_drift(engine).refit_needed, bool)


def test_a_task_key_applies_an_update_once(
    engine: Engine, shop: tuple[pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    events, days = shop
    api.update(engine, [write_day(events, days < 20, tmp_path / "base.csv")])
    api.ingest(engine, [write_day(events, days == 20, tmp_path / "d20.csv")])
    done = run_update(engine, task_key="task-1")
    assert done is not None
    assert run_update(engine, task_key="task-1") is None
    api.ingest(engine, [write_day(events, days == 21, tmp_path / "d21.csv")])
    assert run_update(engine, task_key="task-1") is None  # a redelivery does not apply again
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM task_runs")).scalar() == 1
        n = conn.execute(text("SELECT COUNT(*) FROM segmentations WHERE kind = 'update'"))
        assert n.scalar() == 1


def test_dynamic_commands(shop: tuple[pd.DataFrame, np.ndarray], tmp_path: Path) -> None:
    events, days = shop
    db = ["--db", f"sqlite:///{tmp_path / 'cli.db'}"]
    runner = CliRunner()
    base = write_day(events, days < 20, tmp_path / "base.csv")
    assert runner.invoke(main, ["update", str(base), *db]).exit_code == 0
    out = runner.invoke(
        main, ["update", str(write_day(events, days == 20, tmp_path / "d.csv")), *db, "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert {"version", "events", "users_touched", "migrations", "transitions", "quality"} <= set(
        data
    )
    moves = json.loads(runner.invoke(main, ["migrations", *db, "--json"]).output)["migrations"]
    assert {"user_id", "from", "to", "at", "explanation"} <= set(moves[0])
    user = moves[0]["user_id"]
    mine = json.loads(runner.invoke(main, ["migrations", "--user", user, *db, "--json"]).output)
    assert all(m["user_id"] == user for m in mine["migrations"])
    hist = json.loads(runner.invoke(main, ["history", "seg-1", *db, "--json"]).output)
    assert hist["segment_id"] == "seg-1" and len(hist["versions"]) == 2
    then = json.loads(
        runner.invoke(main, ["user", user, "--as-of", "2024-01-21T12:00:00Z", *db, "--json"]).output
    )
    assert then["segment"] is None or then["segment"]["version"] == 1
    assert runner.invoke(main, ["segments", "--as-of", "2024-01-21", *db]).exit_code == 0
    bad = runner.invoke(main, ["history", "seg-99", *db])
    assert bad.exit_code == 1 and "no segment 'seg-99'" in bad.output
