"""End to end: the service, a real ``shoal worker``, Redis and PostgreSQL together.

With a broker configured, ``POST /v1/batch`` stores the events and enqueues ``shoal.update``;
the worker folds them into the segmentation (and runs the campaigns); the service's background
loop sees the new version and serves the new user's segment and recommendations.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from automation import api
from automation.config import Settings
from automation.service import create_app
from automation.store.db import open_store
from tests.test_tasks_support import Worker, day_files, private_redis, wait_for, worker_env

pytestmark = pytest.mark.postgres
TOKEN = "e2e-token"


def test_service_worker_redis_postgres(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_store(pg_url)
    files = day_files(tmp_path / "days", n_users=800, days=8)
    api.ingest(engine, files)
    api.segment(engine, k="3")
    with private_redis() as broker:
        app_name = f"shoale_{uuid.uuid4().hex[:10]}"
        env = worker_env(pg_url, broker, app_name)
        monkeypatch.setenv("SHOAL_QUEUE", env["SHOAL_QUEUE"])
        worker = Worker(env, tmp_path / "worker.log")
        worker.start()
        try:
            settings = Settings(
                database_url=pg_url, broker_url=broker, api_token=TOKEN, fold_seconds=0.2
            )
            with TestClient(create_app(settings)) as client:
                wait_for(
                    "the recommender",
                    lambda: client.get("/healthz").json()["recommender_ready"],
                    timeout=60,
                )
                ts = pd.Timestamp("2024-01-09T10:00:00Z")
                batch = [
                    {
                        "userId": "e2e-new",
                        "event": "Order Completed",
                        "messageId": f"e2e-{i}",
                        "timestamp": (ts + pd.Timedelta(minutes=i)).isoformat(),
                        "properties": {
                            "order_id": f"e2e-o{i}",
                            "products": [{"product_id": f"i{i}", "price": 12.0, "quantity": 1}],
                        },
                    }
                    for i in range(3)
                ]
                sent = time.monotonic()
                r = client.post(
                    "/v1/batch", json={"batch": batch}, headers={"Authorization": f"Bearer {TOKEN}"}
                )
                assert r.status_code == 200 and r.json()["accepted"] == 3

                def segmented() -> bool:
                    got = client.get("/v1/users/e2e-new")
                    return got.status_code == 200 and got.json()["segment"] is not None

                wait_for("the worker's update to reach the API", segmented, timeout=60)
                took = time.monotonic() - sent

                def recommended() -> bool:
                    got = client.get("/v1/users/e2e-new/recommendations")
                    return got.status_code == 200 and got.json()["segment"] is not None

                wait_for("recommendations for the new user", recommended, timeout=60)
                print(f"event -> segment through worker and API: {took:.1f} s")
        finally:
            worker.stop()
            if worker.log.exists():
                print(worker.log.read_text(errors="replace")[-4000:])
    with engine.connect() as conn:
        updates = conn.execute(
            text("SELECT COUNT(*) FROM segmentations WHERE kind = 'update'")
        ).scalar()
    engine.dispose()
    assert updates and updates >= 1  # the worker folded the events, not the API process
