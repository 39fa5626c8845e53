"""Schemathesis against the service's OpenAPI spec: generated requests for every operation,
checked for server errors and for responses that do not match the documented schemas."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from automation import api
from automation.config import Settings
from automation.service import create_app
from automation.simulate import simulate
from automation.store.db import open_store

TOKEN = "schema-token"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    tmp = tmp_path_factory.mktemp("schema")
    url = f"sqlite:///{tmp / 'shop.db'}"
    sim = simulate(n_users=600, days=20, seed=5, target_events=12_000)
    path = Path(tmp) / "shop.csv"
    sim.events.to_csv(path, index=False)
    engine = open_store(url)
    api.ingest(engine, [path])
    api.segment(engine, k="3")
    engine.dispose()
    application = create_app(Settings(database_url=url, api_token=TOKEN, fold_seconds=0.2))
    from fastapi.testclient import TestClient

    with TestClient(application) as client:  # runs the lifespan and the background loop
        deadline = time.monotonic() + 60
        while not client.get("/healthz").json()["recommender_ready"]:
            assert time.monotonic() < deadline, "the recommender never became ready"
            time.sleep(0.1)
        yield application


def test_every_operation_conforms(app: object) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # type: ignore[arg-type]
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})

        check()
        checked.append(operation.label)
    assert len(checked) >= 14, checked
