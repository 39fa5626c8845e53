"""One background process per store: the others stand by.

``shoal serve --workers N`` runs N API processes, and each starts a background process
(:mod:`automation.service.background`). Without this, all N folded, refitted the recommender
and ran the campaigns on the same store: the same work N times over on the same cores (the
locks kept it correct, not cheap). The background process now works only while it holds the
store's *background lease*:

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection the
  process keeps open for its life; the server releases it when that connection ends, so a
  killed process gives the lease up at once.
- SQLite: an exclusive ``flock`` on a file beside the database (``<db>.background``), released
  by the kernel when the process ends.

A standby tries again at each tick and takes over when the holder is gone. An in-memory SQLite
store (no file) or a platform without ``flock`` has no lease: every process works, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from automation.store.locks import lock_id

log = logging.getLogger("shoal.service.leader")
LEASE = "background"


class Lease:
    """The store's background lease, for one process. :meth:`held` tries (non-blocking) to
    take it when not held yet and tells whether this process holds it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None
        self.fd: int | None = None
        self.holding = False

    def held(self) -> bool:
        if self.holding and self.conn is not None:  # PostgreSQL: is the session still there?
            try:
                self.conn.execute(text("SELECT 1"))
            except SQLAlchemyError:
                log.warning("background lease: its connection is gone; taking it again")
                self._drop_conn()
                self.holding = False
        if self.holding:
            return True
        try:
            self.holding = self._take()
        except (SQLAlchemyError, OSError) as exc:  # a failed try is a "not now"
            log.warning("background lease: could not try (%s); standing by", exc)
            self._drop_conn()
            self.holding = False
        if self.holding:
            log.info("background lease taken (pid %s): this process does the work", os.getpid())
        return self.holding

    def _take(self) -> bool:
        if self.engine.dialect.name == "postgresql":
            if self.conn is None:
                self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            schema = self.conn.execute(text("SELECT current_schema()")).scalar() or ""
            got = self.conn.execute(
                text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id(f"{schema}.{LEASE}")}
            ).scalar()
            return bool(got)
        path = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not path or path == ":memory:":
            return True  # nothing to share the store with
        try:
            import fcntl
        except ImportError:  # not on this platform
            return True
        if self.fd is None:
            self.fd = os.open(f"{path}.{LEASE}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _drop_conn(self) -> None:
        """Close the lease's session for real: returned to the pool, it would keep the lock."""
        if self.conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self.conn.invalidate()
                self.conn.close()
            self.conn = None

    def release(self) -> None:
        """Give the lease up (process end does the same, once the server notices)."""
        if self.holding and self.conn is not None:  # at once, not when the session ends
            with contextlib.suppress(SQLAlchemyError):
                self.conn.execute(text("SELECT pg_advisory_unlock_all()"))
        self._drop_conn()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        self.holding = False
