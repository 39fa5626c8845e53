"""A bounded load test on loopback: a real uvicorn server, concurrent clients, every event
accounted for and every lookup answered (figures, never timing asserts: bench/service.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import uvicorn
from sqlalchemy import text

from automation import api
from automation.config import Settings
from automation.service import create_app
from automation.simulate import simulate
from tests.receivers import free_port

TOKEN = "load-token"


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str, list[str]]]:
    sim = simulate(n_users=1000, days=15, seed=8, target_events=20_000)
    path = tmp_path / "shop.csv"
    sim.events.to_csv(path, index=False)
    engine = api.connect(db_url)
    api.ingest(engine, [path])
    api.segment(engine, k="3")
    users = api.assignments(engine)["user_id"].astype(str).tolist()
    engine.dispose()
    app = create_app(Settings(database_url=db_url, api_token=TOKEN, fold_seconds=0.5))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", db_url, users
    finally:
        srv.should_exit = True
        thread.join(timeout=60)


def batch(start: int, n: int, users: list[str]) -> list[dict[str, Any]]:
    ts = pd.Timestamp("2024-01-16T08:00:00Z")
    out = []
    for i in range(start, start + n):
        msg: dict[str, Any] = {
            "userId": users[i % len(users)] if i % 5 else f"load-new-{i % 50}",
            "event": "Product Viewed" if i % 3 else "Order Completed",
            "messageId": f"load-{i}",
            "timestamp": (ts + pd.Timedelta(seconds=i)).isoformat(),
            "properties": {"product_id": f"i{i % 97:05d}", "price": 4.5, "order_id": f"o{i}"},
        }
        if i % 50 == 7:
            msg["event"] = "Teleported"  # a bad event: rejected, reported, not fatal
        out.append(msg)
    return out


def test_concurrent_batches_and_lookups_are_all_accounted(
    server: tuple[str, str, list[str]],
) -> None:
    url, db_url, users = server
    sent = 20 * 500
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    lookups: dict[int, int] = {}
    lock = threading.Lock()

    def post(k: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            for j in range(k, 20, 2):
                body = c.post("/v1/batch", json={"batch": batch(j * 500, 500, users)}, timeout=60)
                body.raise_for_status()
                with lock:
                    for key in totals:
                        totals[key] += body.json()[key]

    def look() -> None:
        with httpx.Client(base_url=url) as c:
            for i in range(200):
                status = c.get(f"/v1/users/{users[i % len(users)]}", timeout=60).status_code
                with lock:
                    lookups[status] = lookups.get(status, 0) + 1

    engine = api.connect(db_url)
    with engine.connect() as conn:
        before = int(conn.execute(text("SELECT COUNT(*) FROM events")).scalar() or 0)
    threads = [threading.Thread(target=post, args=(k,)) for k in range(2)]
    threads.append(threading.Thread(target=look))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        after = int(conn.execute(text("SELECT COUNT(*) FROM events")).scalar() or 0)
    engine.dispose()
    assert totals["accepted"] + totals["duplicates"] + totals["rejected"] == sent
    assert totals["rejected"] == sent // 50 and totals["duplicates"] == 0
    assert after - before == totals["accepted"]
    assert lookups == {200: 200}
