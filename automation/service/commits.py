"""Group commit: ingest requests that arrive together are stored in one transaction.

Requests commit under the store's ingest lock, one transaction at a time. While one commits,
the requests that arrive queue here; the first of them to find the store free commits all that
are queued (up to ``max_events``) in one transaction (:func:`automation.ingest.run.commit_group`):
the aggregates' upsert, the lock and the commit are paid once per group, not per request. Each
block keeps its own ``ingest_batches`` row and report. A group whose transaction fails is
retried one block per transaction, so a failure is reported to the request that caused it
only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from automation.ingest.keys import KeyCache
from automation.ingest.run import BatchSource, IngestReport, PreparedBlock, commit_group


@dataclass(eq=False)
class _Job:
    block: PreparedBlock
    origin: BatchSource
    report: IngestReport | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.report is not None or self.error is not None

    @property
    def events(self) -> int:
        return int(self.block.raw.read)


class GroupCommit:
    """Commit prepared blocks, grouping those that wait for the same turn.

    Parameters
    ----------
    engine : Engine
        The store.
    keys : KeyCache
        The user and item keys known to this process (shared with other writers in it).
    max_events : int, default 20000
        A group is closed once it holds this many events (a request's block is never split).

    Examples
    --------
    One per server process (``ServiceState.commits``); each request thread prepares its block
    (:func:`automation.ingest.run.prepare_block`) and submits it:

    >>> from automation.store.db import open_store
    >>> commits = GroupCommit(open_store("sqlite://"), KeyCache())
    >>> commits.submit(block, origin).accepted  # doctest: +SKIP
    2000
    """

    def __init__(self, engine: Engine, keys: KeyCache, max_events: int = 20_000) -> None:
        self.engine = engine
        self.keys = keys
        self.max_events = max_events
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._busy = False
        self.groups = 0  # transactions run (for tests and metrics)

    def submit(self, block: PreparedBlock, origin: BatchSource) -> IngestReport:
        """Store one block (in a group with others waiting); returns its report or raises the
        error its own transaction raised."""
        job = _Job(block, origin)
        with self._cond:
            self._queue.append(job)
        try:
            while True:
                with self._cond:
                    while self._busy and not job.done:
                        self._cond.wait()
                    if job.done:
                        return _outcome(job)
                    self._busy = True
                    group = self._take()  # the queue's head: this job or ones queued before it
                try:
                    self._commit(group)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        except BaseException:  # interrupted: a request that failed is never stored later
            with self._cond:
                self._queue = [j for j in self._queue if j is not job]
            raise

    def _take(self) -> list[_Job]:
        """The queue's head up to ``max_events`` (at least one job); the caller holds the lock."""
        n, events = 0, 0
        while n < len(self._queue) and (
            n == 0 or events + self._queue[n].events <= self.max_events
        ):
            events += self._queue[n].events
            n += 1
        group, self._queue = self._queue[:n], self._queue[n:]
        return group

    def _commit(self, group: list[_Job]) -> None:
        self.groups += 1
        try:
            reports = commit_group(
                self.engine, [(j.block, j.origin) for j in group], keys=self.keys
            )
        except Exception as exc:  # noqa: BLE001  (each request raises its own error)
            if len(group) == 1:
                group[0].error = exc
            else:  # find the block at fault: one transaction each
                for j in group:
                    self._commit([j])
            return
        except BaseException as exc:  # interrupted: nobody waits for ever
            for j in group:
                j.error = exc
            raise
        for j, report in zip(group, reports, strict=True):
            j.report = report


def _outcome(job: _Job) -> IngestReport:
    if job.error is not None:
        raise job.error
    assert job.report is not None
    return job.report
