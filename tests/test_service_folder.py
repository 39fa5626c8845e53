"""The service's background fold under continuous ingest: it folds every few seconds, less often
when folds are slow (folding takes a bounded share of the time), never later than a bound.

The loop's clock is the state's monotonic stamps: the test sets them, it never sleeps or times."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine

from automation import api
from automation.config import Settings
from automation.service.folder import (
    FOLD_EVERY,
    FOLD_LATEST,
    FOLD_SHARE,
    SEGMENT_REFIT_EVERY,
    fold_once,
)
from automation.service.routes_ingest import ingest_messages
from automation.service.state import ServiceState
from automation.simulate import simulate


def _pending(state: ServiceState, i: int) -> None:
    ts = pd.Timestamp("2024-01-20T08:00:00Z") + pd.Timedelta(minutes=i)
    msg = {
        "userId": f"fold-{i}",
        "event": "Order Completed",
        "messageId": f"fold-{i}",
        "timestamp": ts.isoformat(),
        "properties": {"order_id": f"o{i}", "products": [{"product_id": "I0001", "price": 9.0}]},
    }
    assert ingest_messages(state, [msg]).accepted == 1


def _busy(state: ServiceState, since_fold: float, fold_seconds: float) -> bool:
    """Whether a pass with ingest still arriving skips the fold (with a batch pending)."""
    now = time.monotonic()
    state.last_ingest = now
    state.last_fold = now - since_fold
    state.fold_seconds = fold_seconds
    return "update" not in fold_once(state, embedded=True)


def test_slow_folds_are_spaced_under_continuous_ingest(engine: Engine, tmp_path: Path) -> None:
    sim = simulate(n_users=300, days=15, seed=3, target_events=4_000)
    path = tmp_path / "shop.csv"
    sim.events.to_csv(path, index=False)
    api.ingest(engine, [path])
    api.segment(engine, k="3")
    state = ServiceState(engine, Settings(database_url=str(engine.url), api_token="t"))
    _pending(state, 0)
    # A fold this slow waits halfway between FOLD_EVERY and FOLD_LATEST.
    slow = (FOLD_EVERY + FOLD_LATEST) / 2 * FOLD_SHARE
    assert _busy(state, since_fold=FOLD_EVERY + 0.1, fold_seconds=slow)
    assert not _busy(state, since_fold=FOLD_EVERY + 0.1, fold_seconds=0.0)
    assert state.fold_seconds > 0  # measured
    _pending(state, 1)
    assert not _busy(state, since_fold=FOLD_LATEST + 0.1, fold_seconds=slow)
    _pending(state, 2)
    assert not _busy(state, since_fold=FOLD_LATEST + 0.1, fold_seconds=1000.0)


def test_drift_refits_are_held_back_while_ingest_streams(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refit the drift check asks for waits (at most one per SEGMENT_REFIT_EVERY) while ingest
    streams in, and runs on the first fold after: never lost, never at every fold."""
    calls: list[str] = []

    def update(engine: Engine, settings: Settings, refit_on_drift: bool = True) -> dict:
        calls.append(f"update(refit_on_drift={refit_on_drift})")
        out = {"version": len(calls), "refit_recommended": True}
        if refit_on_drift:
            out["refit"] = {"version": 100 + len(calls)}
        return out

    class Refit:
        def to_dict(self) -> dict:
            return {"version": 999}

    def segment(engine: Engine) -> Refit:
        calls.append("segment")
        return Refit()

    monkeypatch.setattr(api, "update", update)
    monkeypatch.setattr(api, "segment", segment)
    state = ServiceState(engine, Settings(database_url=str(engine.url), api_token="t"))
    now = time.monotonic()
    state.last_campaigns = now  # campaigns are not what this test is about
    state.last_segment_refit = now - 1.0  # a refit ran a second ago
    state.last_ingest, state.last_fold = now, now - FOLD_LATEST - 0.1  # streaming, fold due
    fold_once(state, embedded=True)
    assert calls == ["update(refit_on_drift=False)"] and state.refit_pending
    state.last_ingest = time.monotonic() - FOLD_LATEST - 1.0  # the stream stopped
    state.last_fold = 0.0
    fold_once(state, embedded=True)
    assert calls[1:] == ["update(refit_on_drift=True)"] and not state.refit_pending
    # Long after the last refit, a refit asked for runs even while ingest streams in.
    state.last_segment_refit = time.monotonic() - SEGMENT_REFIT_EVERY - 1.0
    state.last_ingest, state.last_fold = time.monotonic(), 0.0
    fold_once(state, embedded=True)
    assert calls[2:] == ["update(refit_on_drift=True)"]
    # Held back, then the next fold finds no new events (no update result to refit from):
    # the pending refit still runs.
    state.last_segment_refit = time.monotonic()
    state.last_ingest, state.last_fold = time.monotonic(), 0.0
    fold_once(state, embedded=True)
    assert state.refit_pending
    monkeypatch.setattr(api, "update", lambda *a, **k: {"version": None})
    state.last_ingest, state.last_fold = time.monotonic() - FOLD_LATEST - 1.0, 0.0
    fold_once(state, embedded=True)
    assert calls[-1] == "segment" and not state.refit_pending
