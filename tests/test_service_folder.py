"""The service's background fold under continuous ingest: it folds every few seconds, less often
when folds are slow (folding takes a bounded share of the time), never later than a bound; and
what the API process loads of the background process's results.

The loop's clock is the state's monotonic stamps: the test sets them, it never sleeps or times."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine

from automation import api
from automation.config import Settings
from automation.service.folder import (
    FOLD_EVERY,
    FOLD_LATEST,
    FOLD_SHARE,
    QUIET_SECONDS,
    REFIT_EVERY,
    fold_once,
    publish_once,
)
from automation.service.routes_ingest import ingest_messages
from automation.service.state import ServiceState
from automation.simulate import simulate
from automation.store.erase import erase_user
from automation.store.segmentations import current_version


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


def _shop(engine: Engine, tmp_path: Path, seed: int) -> Any:
    """A small simulated shop ingested into ``engine`` (the simulation returned)."""
    sim = simulate(n_users=300, days=15, seed=seed, target_events=4_000)
    path = tmp_path / "shop.csv"
    sim.events.to_csv(path, index=False)
    api.ingest(engine, [path])
    return sim


def _busy(state: ServiceState, since_fold: float, fold_seconds: float) -> bool:
    """Whether a pass with ingest still arriving skips the fold (with a batch pending)."""
    now = time.monotonic()
    state.last_ingest = now
    state.last_fold = now - since_fold
    state.fold_seconds = fold_seconds
    return "update" not in fold_once(state, embedded=True)


def test_slow_folds_are_spaced_under_continuous_ingest(engine: Engine, tmp_path: Path) -> None:
    _shop(engine, tmp_path, seed=3)
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


def test_the_api_loads_what_the_background_stores_and_nothing_from_before_an_erasure(
    engine: Engine, tmp_path: Path
) -> None:
    """Two states on one store, as the API process and its background process hold them: the
    background's fold and refit reach the API only through the store."""
    sim = _shop(engine, tmp_path, seed=5)
    version = api.segment(engine, k="3").version
    settings = Settings(database_url=str(engine.url), api_token="t")
    background, served = ServiceState(engine, settings), ServiceState(engine, settings)
    assert publish_once(served) == {"snapshot": version}  # no recommender stored yet
    assert served.recommender is None and served.snapshot.version == version
    fitted = fold_once(background, embedded=True)["recommender"]
    assert publish_once(served) == {"recommender": fitted}
    assert served.recommender[2] == fitted and publish_once(served) == {}
    _pending(served, 0)  # a new user: folded into a new version in the background
    did = fold_once(background, embedded=True)
    assert did["update"] > version and did["recommender"][1] == did["update"]
    assert publish_once(served) == {"snapshot": did["update"], "recommender": did["recommender"]}
    user = str(sim.events["user_id"].iloc[0])
    erase_user(engine, user)
    served.recommender = served.snapshot = None  # as the erasure route drops them
    assert publish_once(served) == {"snapshot": did["update"]}  # the stored model holds the user
    assert served.recommender is None and served.snapshot.erasures == 1
    background.force_refit.set()
    refitted = fold_once(background, embedded=True)["recommender"]
    assert refitted[2] == 1 and publish_once(served) == {"recommender": refitted}


def test_under_a_stream_the_recommender_waits_until_it_has_been_behind_long_enough(
    engine: Engine, tmp_path: Path
) -> None:
    """A stream of ingest after a quiet spell: no refit at its first requests, however long ago
    the last one was, but once the model has been behind the store for REFIT_EVERY seconds."""
    _shop(engine, tmp_path, seed=6)
    api.segment(engine, k="3")
    state = ServiceState(engine, Settings(database_url=str(engine.url), api_token="t"))
    assert "recommender" in fold_once(state, embedded=True)  # the first model
    for i in range(3):  # the stream: each pass sees a new batch with ingest still arriving
        _pending(state, i)
        state.last_ingest = time.monotonic()
        assert "recommender" not in fold_once(state, embedded=True)
    assert state.stale_since is not None
    state.stale_since -= REFIT_EVERY + 1  # behind the store for longer than REFIT_EVERY
    _pending(state, 3)
    state.last_ingest = time.monotonic()
    assert "recommender" in fold_once(state, embedded=True)
    assert state.stale_since is None


def test_a_fold_as_long_as_the_quiet_spell_does_not_make_a_stream_look_quiet(
    engine: Engine, tmp_path: Path
) -> None:
    """The background process copies the API's last ingest time before a pass; a fold takes
    seconds, so the refit decision after it reads the time anew (here: ingest still arriving)."""
    _shop(engine, tmp_path, seed=7)
    api.segment(engine, k="3")
    state = ServiceState(engine, Settings(database_url=str(engine.url), api_token="t"))
    assert "recommender" in fold_once(state, embedded=True)  # the first model
    _pending(state, 0)  # the model is behind the store now
    state.ingest_clock = time.monotonic  # requests keep arriving, during the fold too
    state.last_ingest = time.monotonic() - 10 * QUIET_SECONDS  # the copy taken before the fold
    state.last_fold = 0.0
    assert "recommender" not in fold_once(state, embedded=True)
    state.ingest_clock = None  # the stream has stopped: quiet, refit
    state.last_ingest = time.monotonic() - 10 * QUIET_SECONDS
    assert "recommender" in fold_once(state, embedded=True)


def test_a_refit_the_update_calls_for_waits_for_a_pause_in_the_stream(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drift found under a stream: the incremental updates go on, the segmentation refit (K
    selected anew, the heaviest background work) runs once ingest pauses, or once it has been
    due for REFIT_EVERY seconds. The folds are real; only the update's verdict is forced."""
    _shop(engine, tmp_path, seed=8)
    api.segment(engine, k="3")
    real = api.update

    def drifting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        assert kwargs.get("refit_on_drift") is False  # the service decides when to refit
        out = real(*args, **kwargs)
        return {**out, "refit_recommended": bool(out.get("version"))}

    monkeypatch.setattr(api, "update", drifting)
    state = ServiceState(engine, Settings(database_url=str(engine.url), api_token="t"))
    state.ingest_clock = time.monotonic  # requests keep arriving
    for i in range(2):
        _pending(state, i)
        state.last_fold = 0.0
        did = fold_once(state, embedded=True)
        assert "update" in did and "refit" not in did  # folded, not refitted
    assert state.refit_due is not None
    state.refit_due -= REFIT_EVERY + 1  # due for longer than REFIT_EVERY: refit in the stream
    _pending(state, 2)
    state.last_fold = 0.0
    refitted = fold_once(state, embedded=True)["refit"]
    with engine.connect() as conn:
        current = current_version(conn)
    assert (current.id, current.kind) == (refitted, "refit")
    assert state.refit_due is None
    _pending(state, 3)  # due again; the stream stops: refit once it has been quiet
    state.last_fold = 0.0
    assert "refit" not in fold_once(state, embedded=True)
    state.ingest_clock = None
    state.last_ingest = time.monotonic() - 10 * QUIET_SECONDS
    assert "refit" in fold_once(state, embedded=True)
