"""The service's background work: fold accepted events in, keep the recommender current.

Two halves, in two processes (:mod:`automation.service.background` starts the second):

:func:`fold_once`, in the background process, every ``SHOAL_FOLD_MS`` (default 1 s) or at once
when an ingest request wakes it:

- with the embedded default (no broker), pending ingest batches are folded into the live
  segmentation (``run_update``; the first fit when there is none yet, a refit with K selected
  anew when drift calls for one), then the campaigns run (under continuous ingest every
  ``FOLD_EVERY`` seconds, less often when folds are slow, so that folding takes at most
  ``FOLD_SHARE`` of the time, and at least every ``FOLD_LATEST``); a refit the update calls
  for (drift) runs once ingest pauses, or at the latest ``REFIT_EVERY`` seconds after it was
  called for; with a broker, the API enqueues ``shoal.update`` instead and the workers do it;
- when the store changed (a new ingest batch or segmentation version), the recommender is
  refitted from the store and stored (once ingest has been quiet for a moment, or at least
  every minute under continuous load).

:func:`publish_once`, in the API process, when the background process says it stored something
(or every ``SHOAL_FOLD_MS``): the newest version's feature snapshot is loaded for the support
lookup's fast path, and the newest stored recommender is swapped in. Requests never fold nor
train, and the API process's CPU stays with them.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from sqlalchemy import text

from automation.errors import EmptyStoreError, ShoalError
from automation.service.background import BackgroundProcess, Channels
from automation.service.state import ServiceState

log = logging.getLogger("shoal.service.folder")
FOLD_QUIET = 0.5  # fold once ingest has been quiet this long
FOLD_EVERY = 3.0  # ... or at least this often under continuous ingest,
FOLD_SHARE = 0.25  # ... but then folding takes at most this share of the time,
FOLD_LATEST = 4.0  # ... and a fold waits no longer than this (API freshness within 5 s)
CAMPAIGNS_EVERY = 30.0  # embedded: campaigns and dispatch at least this often
QUIET_SECONDS = 1.5  # refit the recommender once ingest has been quiet this long
REFIT_EVERY = 60.0  # ... or once it has been behind the store this long under continuous ingest
MODEL = "hybrid"  # the recommender the service fits, stores and serves


def store_mark(state: ServiceState) -> tuple[int, int, int]:
    """(newest finished ingest batch, newest segmentation version, erasures)."""
    from automation.recommend.persist import store_mark as mark_of

    with state.engine.connect() as conn:
        return mark_of(conn)


def fold_once(state: ServiceState, embedded: bool) -> dict[str, Any]:
    """One pass; returns what it did (for tests and logs)."""
    from automation import api
    from automation.campaigns import service as campaigns

    did: dict[str, Any] = {}
    now = time.monotonic()
    # Under a stream of ingest requests, fold every FOLD_EVERY seconds, or less often when a
    # fold is slow, so that folding takes at most FOLD_SHARE of the time: a fold and an ingest
    # share the CPU and both write (on SQLite they take turns). Freshness stays within seconds.
    every = min(max(FOLD_EVERY, state.fold_seconds / FOLD_SHARE), FOLD_LATEST)
    busy = now - state.last_ingest < FOLD_QUIET and now - state.last_fold < every
    if embedded and not busy:
        state.last_fold = now
        try:
            # A refit the update calls for (drift) waits for a pause in the stream, as the
            # recommender's does: the incremental update keeps the segments current meanwhile.
            out = api.update(state.engine, settings=state.settings, refit_on_drift=False)
        except EmptyStoreError:
            out = {}
        if out.get("refit_recommended") and state.refit_due is None:
            state.refit_due = now
        if state.refit_due is not None and _may_refit(state, state.refit_due):
            log.info("segmentation refit (drift, %.0f s after it was found)", now - state.refit_due)
            out["refit"] = api.segment(state.engine).to_dict()
            state.refit_due = None
        state.fold_seconds = time.monotonic() - now
        if out.get("version") or out.get("refit"):
            did["update"] = out.get("version") or out["refit"]["version"]
            state.last_campaigns = 0.0  # segment changes: decide at once
        if out.get("refit"):
            did["refit"] = out["refit"]["version"]
    if embedded and now - state.last_campaigns > CAMPAIGNS_EVERY:
        # Without workers, this loop is the worker: campaigns (segment-change, schedule and
        # feature triggers) and then the deliveries they queued.
        from automation.campaigns.dispatch import dispatch

        state.last_campaigns = now
        try:
            did["campaigns"] = [c["queued"] for c in campaigns.run(state.engine).campaigns]
            did["dispatched"] = dispatch(state.engine, state.settings).to_dict()["sent"]
        except ShoalError as err:
            log.warning("campaigns: %s", err)
    mark = store_mark(state)
    current = state.recommender
    now = time.monotonic()
    # Refit when the store changed, but not while ingest requests keep arriving: then only once
    # the model has been behind the store for REFIT_EVERY seconds (a refit takes CPU the
    # requests need). Counted from when it fell behind, not from the last refit: after a quiet
    # spell the first requests of a stream would otherwise set one off at once.
    stale = current is not None and current[2] != mark
    if not stale:
        state.stale_since = None
    elif state.stale_since is None:
        state.stale_since = now
    quiet = state.stale_since is not None and _may_refit(state, state.stale_since)
    forced = state.force_refit.is_set()
    if mark[1] and (current is None or forced or (stale and quiet)):
        log.info("recommender refit: %s", _reason(current, forced, now - state.last_ingest))
        state.force_refit.clear()
        from automation.recommend.persist import current_model

        rec, mark = current_model(state.engine, MODEL)  # stored for the API process
        with state.lock:
            state.recommender = (rec, None, mark)
        state.stale_since = None
        did["recommender"] = mark
    return did


def _may_refit(state: ServiceState, due: float) -> bool:
    """Whether a refit due since ``due`` may run now: once ingest has been quiet for
    ``QUIET_SECONDS``, or once it has been due for ``REFIT_EVERY`` under continuous ingest (a
    refit takes the CPU the requests need)."""
    if state.ingest_clock is not None:  # requests went on arriving while this pass folded
        state.last_ingest = state.ingest_clock()
    now = time.monotonic()
    return now - state.last_ingest > QUIET_SECONDS or now - due > REFIT_EVERY


def _reason(current: Any, forced: bool, since_ingest: float) -> str:
    if current is None:
        return "first"
    if forced:
        return "forced"
    return "quiet" if since_ingest > QUIET_SECONDS else "behind the store for long"


def publish_once(state: ServiceState) -> dict[str, Any]:
    """In the API process: load what the background process stored (the newest version's
    feature snapshot, the newest recommender); returns what it loaded.

    Neither is taken when it predates an erasure: the erasure route drops both, and this
    checks the store's erasure count again under the state's lock before swapping one in."""
    did: dict[str, Any] = {}
    mark = store_mark(state)
    snap = state.snapshot
    if mark[1] and (snap is None or (snap.version, snap.erasures) != (mark[1], mark[2])):
        from automation.service import lookup

        with state.engine.connect() as conn:
            fresh = lookup.load(conn)
        if fresh is not None:
            fresh.erasures = mark[2]
        if _install(state, "snapshot", fresh, mark[2]):
            did["snapshot"] = mark[1]
    current = state.recommender
    stored = stored_mark(state)
    if stored is not None and stored[2] == mark[2] and (current is None or current[2] != stored):
        from automation.recommend.persist import load_model

        loaded = load_model(state.engine, MODEL)
        if loaded is not None and _install(
            state, "recommender", (loaded[0], None, loaded[1]), loaded[1][2]
        ):
            did["recommender"] = loaded[1]
    return did


def stored_mark(state: ServiceState) -> tuple[int, int, int] | None:
    """What the stored recommender reflects (None when none is stored)."""
    with state.engine.connect() as conn:
        row = conn.execute(
            text("SELECT batch_id, version_id, erasures FROM recommender_models WHERE name = :n"),
            {"n": MODEL},
        ).first()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def _install(state: ServiceState, name: str, value: Any, erasures: int) -> bool:
    with state.lock:  # the erasure route commits, then drops both under this lock
        if store_mark(state)[2] != erasures:
            return False
        setattr(state, name, value)
        return True


def freeze_heap() -> None:
    """Take what the process holds so far (modules, caches: some 250,000 objects) out of the
    cyclic garbage collector's sight (``gc.freeze``). A full collection walks every tracked
    object with the GIL held: 100-400 ms here, during which no request moves, which put the
    support lookup's p99 at hundreds of milliseconds; with them frozen it takes under a
    millisecond. Reference counting still frees them. Called once the app is set up and again
    after the first model and snapshot are loaded (their imports)."""
    gc.collect()
    gc.freeze()


class Folder:
    """The API side: starts the background process and loads what it stores."""

    def __init__(self, state: ServiceState, embedded: bool) -> None:
        self.state = state
        self.stopping = threading.Event()
        self.channels = state.channels or Channels.make()
        state.channels = self.channels
        self.process = BackgroundProcess(state.settings, embedded, self.channels)
        self.thread = threading.Thread(target=self._run, name="shoal-publish", daemon=True)
        self.counted = (0, 0)

    def start(self) -> None:
        self.process.start()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.channels.published.ring()
        self.thread.join(timeout=60)
        self.process.stop()

    def _run(self) -> None:
        channels = self.channels
        frozen = False
        while not self.stopping.is_set():
            try:
                did = publish_once(self.state)
                if not frozen and "recommender" in did:  # its modules are imported now
                    freeze_heap()
                    frozen = True
            except Exception:  # noqa: BLE001 - the loop must survive a failed pass
                log.exception("loading the background's results failed; retrying")
            folds, errors = channels.folds.value, channels.errors.value
            self.state.metrics.folds.inc(folds - self.counted[0])
            self.state.metrics.fold_errors.inc(errors - self.counted[1])
            self.counted = (folds, errors)
            self.process.check()
            channels.published.wait(self.state.settings.fold_seconds)
