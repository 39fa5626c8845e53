"""Group commit: ingest requests queued behind a commit are stored together in one transaction.

The store must be the same as when each request commits alone (events, per-user aggregates,
one ``ingest_batches`` row per request), each request gets its own report, and a request whose
block cannot be stored fails alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from automation.config import Settings
from automation.ingest.keys import KeyCache
from automation.ingest.mapping import plan_columns, preset_named
from automation.ingest.readers import read_file
from automation.ingest.run import (
    BatchSource,
    IngestReport,
    PreparedBlock,
    commit_block,
    prepare_block,
)
from automation.service.commits import GroupCommit
from automation.store.db import open_store
from tests.conftest import _pg_store

HEAD = "user_id,type,timestamp,item_id,item_name,category,price,quantity,order_id\n"
REQUESTS = {
    "r1": ["u1,view,1700000000,i1,,c,2.0,,", "u2,purchase,1700000100,i2,,d,3.0,2,o1"],
    # u1 again, a duplicate of r1's view, a new user and a bad row (quarantined)
    "r2": [
        "u1,view,1700000000,i1,,c,2.0,,",
        "u1,purchase,1700000200,i1,,c,2.0,1,o2",
        "u3,cart,1700000300,i3,,c,5.0,1,",
        "u4,fly,1700000400,i1,,c,2.0,,",
    ],  # fmt: skip
    "r3": ["u2,refund,1700000500,i2,,d,3.0,1,o1", "u5,view,1700000600,i2,,d,3.0,,"],
}


@pytest.fixture
def reference(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    """A second empty store on the same database as ``engine``."""
    urls = (
        iter([f"sqlite:///{tmp_path / 'ref.db'}"]) if db_url.startswith("sqlite") else _pg_store()
    )
    eng = open_store(next(urls))
    yield eng
    eng.dispose()
    next(urls, None)  # drops the PostgreSQL schema


def _block(engine: Engine, tmp_path: Path, name: str) -> tuple[PreparedBlock, BatchSource]:
    path = tmp_path / f"{name}.csv"
    path.write_text(HEAD + "".join(f"{line}\n" for line in REQUESTS[name]))
    raw = next(read_file(path))
    plan = plan_columns(list(raw.frame.columns), str(path), preset_named(None), {}, {})
    origin = BatchSource(f"api:{name}", None, {}, "csv")
    binary = engine.dialect.name == "postgresql"
    return prepare_block(raw, plan, origin, Settings(), binary), origin


def _queued(commits: GroupCommit, jobs: dict[str, tuple[PreparedBlock, BatchSource]]) -> dict:
    """Submit every job from its own thread while the store is busy, then free it."""
    out: dict[str, IngestReport | BaseException] = {}

    def run(name: str) -> None:
        try:
            out[name] = commits.submit(*jobs[name])
        except Exception as exc:  # noqa: BLE001  (the test looks at it)
            out[name] = exc

    with commits._cond:
        commits._busy = True  # as if another request were committing
    threads = [threading.Thread(target=run, args=(n,)) for n in jobs]
    for i, t in enumerate(threads):  # one at a time: the queue keeps the jobs' order
        t.start()
        deadline = time.monotonic() + 10
        while len(commits._queue) <= i and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [j.origin.source for j in commits._queue] == [jobs[n][1].source for n in jobs]
    with commits._cond:
        commits._busy = False
        commits._cond.notify_all()
    for t in threads:
        t.join(10)
    return out


def _dump(engine: Engine) -> dict[str, list[tuple]]:
    queries = {
        "events": "SELECT u.external_id, e.type, e.ts, e.quantity FROM events e "
        "JOIN users u ON u.id = e.user_key ORDER BY 1, 2, 3",
        "user_stats": "SELECT u.external_id, s.* FROM user_stats s "
        "JOIN users u ON u.id = s.user_key ORDER BY 1",
        "batches": "SELECT source, read, accepted, duplicates, quarantined FROM ingest_batches "
        "ORDER BY source",
        "quarantine": "SELECT source, reason FROM quarantine ORDER BY source, reason",
    }
    with engine.connect() as conn:
        dump = {k: [tuple(r) for r in conn.execute(text(q))] for k, q in queries.items()}
    # surrogate keys may differ between the stores; the external ids identify the rows
    dump["user_stats"] = [r[:1] + r[2:] for r in dump["user_stats"]]
    return dump


def test_queued_requests_commit_together_as_if_alone(
    engine: Engine, reference: Engine, tmp_path: Path
) -> None:
    commits = GroupCommit(engine, KeyCache())
    jobs = {name: _block(engine, tmp_path, name) for name in REQUESTS}
    reports = _queued(commits, jobs)
    assert commits.groups == 1  # one transaction for the three requests

    alone = {}
    for name in REQUESTS:
        block, origin = _block(reference, tmp_path, name)
        alone[name] = commit_block(reference, block, origin, KeyCache())
    for name in REQUESTS:
        got = reports[name]
        assert isinstance(got, IngestReport), got
        assert got.to_dict() == alone[name].to_dict(), name
    assert reports["r2"].duplicates == 1 and reports["r2"].quarantined == 1
    assert _dump(engine) == _dump(reference)


def test_a_failing_block_fails_its_own_request_only(engine: Engine, tmp_path: Path) -> None:
    commits = GroupCommit(engine, KeyCache())
    jobs = {name: _block(engine, tmp_path, name) for name in REQUESTS}
    block, origin = jobs["r2"]
    # a mapping that cannot be recorded on its ingest_batches row: the transaction fails
    jobs["r2"] = (block, BatchSource(origin.source, None, {"x": object()}, "csv"))  # type: ignore[dict-item]
    reports = _queued(commits, jobs)
    assert isinstance(reports["r2"], TypeError)
    assert isinstance(reports["r1"], IngestReport) and reports["r1"].accepted == 2
    assert isinstance(reports["r3"], IngestReport) and reports["r3"].accepted == 2
    assert commits.groups == 4  # the group, then one transaction per request
    with engine.connect() as conn:
        sources = {r[0] for r in conn.execute(text("SELECT source FROM ingest_batches"))}
    assert sources == {"api:r1", "api:r3"}


def test_groups_are_bounded(engine: Engine, tmp_path: Path) -> None:
    commits = GroupCommit(engine, KeyCache(), max_events=5)
    jobs = {name: _block(engine, tmp_path, name) for name in REQUESTS}
    reports = _queued(commits, jobs)
    assert all(isinstance(r, IngestReport) for r in reports.values()), reports
    # 2 + 4 + 2 events: r1 and r2 would be 6 > 5, so no two requests share a transaction
    assert commits.groups == 3
