"""The background lease: one background process per store works, a standby takes over when the
holder is gone (``shoal serve --workers N``)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine

from automation.service.leader import Lease
from automation.store.db import open_store


def test_one_holder_and_a_standby_takes_over(db_url: str) -> None:
    engines: list[Engine] = [open_store(db_url), open_store(db_url)]
    first, second = Lease(engines[0]), Lease(engines[1])
    try:
        assert first.held()
        assert not second.held(), "two processes would do the same background work"
        assert first.held()  # still held on the next tick
        first.release()  # the holder ends
        assert second.held()
        assert not first.held()
    finally:
        first.release()
        second.release()
        for e in engines:
            e.dispose()


def test_a_holder_whose_session_is_gone_takes_it_again(pg_url: str) -> None:
    engine = open_store(pg_url)
    lease = Lease(engine)
    try:
        assert lease.held()
        assert lease.conn is not None
        lease.conn.invalidate()  # as a server restart or a dropped connection would
        # Noticed, and taken again on a new session once the server has ended the old one (the
        # background loop asks at every tick).
        deadline = time.monotonic() + 10
        while not lease.held():
            assert time.monotonic() < deadline, "the lease was not taken again"
            time.sleep(0.05)
    finally:
        lease.release()
        engine.dispose()


def test_an_in_memory_store_has_no_lease() -> None:
    engine = open_store("sqlite://")
    try:
        assert Lease(engine).held() and Lease(engine).held()
    finally:
        engine.dispose()


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
