"""The service's background process: folds, campaigns and recommender refits off the API's CPU.

The heavy background work (:func:`automation.service.folder.fold_once`: the incremental update
with its drift-triggered refit, the embedded campaigns and dispatch, the recommender's fit) runs
in a process of its own, started in the app's lifespan (``spawn``: nothing of the server's
threads is inherited), so that ingest requests keep the API process's CPU and GIL. It writes its
results to the store (segmentation versions with their feature snapshots, the fitted
recommender in ``recommender_models``) and says so; the API process then loads them
(:func:`automation.service.folder.publish_once`). The two share a few flags and numbers:

- API -> background: ``wake`` (events arrived, or a refresh), ``last_ingest`` (the monotonic
  time of the newest ingest request, so folds keep yielding under a stream of requests, as they
  did in process), ``force`` (refit the recommender now: a refresh or an erasure), ``stopping``;
- background -> API: ``published`` (a fold or a recommender was stored), and the counts of
  folds and failed passes for ``/metrics``.

The background process runs at a lower CPU priority (``NICE``), and ends when asked, or by
itself when the API process that started it is gone. With several API processes
(``--workers N``), one background process works and the others stand by
(:mod:`automation.service.leader`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

from automation.config import Settings
from automation.errors import ShoalError

log = logging.getLogger("shoal.service.background")
NICE = 5  # the background process yields CPU to requests (weight ~1/3 of the API's)
_SPAWN = mp.get_context("spawn")
STANDBY_SECONDS = 2.0  # a standby (another server process's holds the lease) retries this often


class Doorbell:
    """A wake-up from one process to another that a killed process cannot jam: one byte into a
    non-blocking pipe (a full pipe already rings); the other side waits on it and drains it.
    (A ``multiprocessing.Event`` would not do: a process killed while it holds the event's lock
    leaves every later ``set`` blocked, the API's ingest requests included.)"""

    def __init__(self) -> None:
        self.reader, self.writer = _SPAWN.Pipe(duplex=False)
        os.set_blocking(self.writer.fileno(), False)
        os.set_blocking(self.reader.fileno(), False)

    def __setstate__(self, state: dict[str, Any]) -> None:  # in the other process
        self.__dict__.update(state)
        os.set_blocking(self.writer.fileno(), False)
        os.set_blocking(self.reader.fileno(), False)

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.writer.fileno(), b"!")

    def wait(self, timeout: float) -> None:
        """Until rung (or ``timeout`` seconds); then forget the rings so far."""
        if self.reader.poll(timeout):
            with contextlib.suppress(BlockingIOError):
                while os.read(self.reader.fileno(), 4096):
                    pass


@dataclass
class Channels:
    """What the API process and its background process share: doorbells, and numbers without
    locks (one writer each)."""

    wake: Doorbell  # API -> background
    published: Doorbell  # background -> API
    last_ingest: Any  # c_double: time.monotonic() of the newest ingest request
    force: Any  # c_longlong: refits asked for (the background refits when it changes)
    stopping: Any  # c_int: 1 when the background process should end
    folds: Any  # c_longlong: updates folded in by the background process
    errors: Any  # c_longlong: background passes that failed

    @classmethod
    def make(cls) -> Channels:
        return cls(
            wake=Doorbell(),
            published=Doorbell(),
            last_ingest=_SPAWN.RawValue("d", 0.0),
            force=_SPAWN.RawValue("q", 0),
            stopping=_SPAWN.RawValue("i", 0),
            folds=_SPAWN.RawValue("q", 0),
            errors=_SPAWN.RawValue("q", 0),
        )

    def ingested(self) -> None:
        """An ingest request stored events: fold them in (yielding while more arrive)."""
        self.last_ingest.value = time.monotonic()
        self.wake.ring()

    def refit(self) -> None:
        """Refit the recommender now (an erasure: the stored one holds the erased user)."""
        self.force.value += 1
        self.wake.ring()

    def refresh(self) -> None:
        """Fold pending events and refit the recommender now, even under a stream of ingest."""
        self.last_ingest.value = 0.0
        self.refit()


class BackgroundProcess:
    """The API side: starts the background process, restarts it if it died, stops it."""

    def __init__(self, settings: Settings, embedded: bool, channels: Channels) -> None:
        self.settings = settings
        self.embedded = embedded
        self.channels = channels
        self.process: Any = None
        self.restarts = 0

    def start(self) -> None:
        self.channels.stopping.value = 0
        self.process = _SPAWN.Process(
            target=run,
            args=(self.settings, self.embedded, self.channels, os.getpid()),
            name="shoal-background",
            daemon=True,  # ended with the server process even if its lifespan never closes
        )
        self.process.start()

    def check(self) -> None:
        """Start it again if it ended (a crash, an out-of-memory kill) while the API runs."""
        if self.process is not None and not self.process.is_alive():
            if self.channels.stopping.value:
                return
            self.restarts += 1
            log.error("background process ended (exit %s); restarting", self.process.exitcode)
            self.start()

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is None:
            return
        self.channels.stopping.value = 1
        self.channels.wake.ring()
        self.process.join(timeout)
        if self.process.is_alive():  # a long refit: it holds nothing the store cannot undo
            self.process.terminate()
            self.process.join(10)
        self.process = None


def run(settings: Settings, embedded: bool, channels: Channels, parent: int) -> None:
    """The background process's loop (the target of :class:`BackgroundProcess`)."""
    from automation.service.folder import fold_once, freeze_heap
    from automation.service.leader import Lease
    from automation.service.state import ServiceState
    from automation.store.db import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(OSError):  # not permitted: run at the server's priority
        os.nice(NICE)
    state = ServiceState(open_store(settings.database_url), settings)
    state.ingest_clock = lambda: float(channels.last_ingest.value)
    freeze_heap()  # modules out of the cyclic GC's walks (see freeze_heap)
    forced = channels.force.value
    frozen = False
    lease = Lease(state.engine)  # one background process per store works (--workers N)
    try:
        while not channels.stopping.value and os.getppid() == parent:
            if not lease.held():
                channels.wake.wait(STANDBY_SECONDS)
                continue
            state.last_ingest = channels.last_ingest.value
            if channels.force.value != forced:
                forced = channels.force.value
                state.force_refit.set()
                state.last_fold = 0.0
            try:
                did = fold_once(state, embedded)
            except ShoalError as err:
                log.warning("fold: %s", err)
                did = {}
            except Exception:  # noqa: BLE001 - the loop must survive a failed pass
                channels.errors.value += 1
                log.exception("background pass failed; retrying at the next tick")
                did = {}
            if "update" in did:
                channels.folds.value += 1
            if did:
                channels.published.ring()
                if not frozen:  # the fold's and the fit's modules are imported now
                    freeze_heap()
                    frozen = True
            channels.wake.wait(settings.fold_seconds)
    finally:
        lease.release()
        state.engine.dispose()
