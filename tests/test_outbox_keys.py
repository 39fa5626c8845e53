"""Outbox keys of segment-level events: unique within an update, the same on a retry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

from automation import api
from automation.store.history import write_outbox

NO_MOVES = pd.DataFrame(columns=["user_key", "from_segment", "to_segment", "reason"])


def test_two_changes_of_a_kind_on_one_segment_in_one_update(tmp_path: Path) -> None:
    """seg-1 absorbing two segments in one update (seen in the merge replay): two events."""
    engine = api.connect(f"sqlite:///{tmp_path / 'store.db'}")
    at = pd.Timestamp("2024-02-05", tz="UTC")
    transitions = [
        {"type": "merged", "segments": ["seg-1", "seg-2"], "evidence": {"distance": 1.0}},
        {"type": "merged", "segments": ["seg-1", "seg-3"], "evidence": {"distance": 1.2}},
        {"type": "drifted", "segments": ["seg-1"], "evidence": {}},
    ]
    names = {"seg-1": "Loyal"}
    with engine.begin() as conn:
        assert write_outbox(conn, 7, at, NO_MOVES, transitions, names) == 3
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT key, payload FROM outbox ORDER BY id")).all()
    keys = [r[0] for r in rows]
    assert keys == ["merged:7:-:seg-1", "merged:7:-:seg-1:2", "drifted:7:-:seg-1"]
    # A retry of the same update builds the same keys (idempotency keys, not random ones).
    with pytest.raises(sqlite3.IntegrityError), engine.begin() as conn:
        write_outbox(conn, 7, at, NO_MOVES, transitions, names)
    engine.dispose()
