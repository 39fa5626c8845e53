"""Schemathesis against the service's OpenAPI spec: generated requests for every operation,
checked for server errors and for responses that do not match the documented schemas.

The service runs as a real ``shoal serve`` process on loopback and schemathesis talks HTTP to it.
(In-process, through the ASGI test client, the app's threads and hypothesis's own source parsing
share CPython 3.11.7's global AST-conversion state, and ``ast.parse`` then fails now and then with
"SystemError: AST constructor recursion depth mismatch".)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from automation import api
from automation.simulate import simulate
from automation.store.db import open_store
from tests.receivers import free_port

TOKEN = "schema-token"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("schema")
    url = f"sqlite:///{tmp / 'shop.db'}"
    sim = simulate(n_users=600, days=20, seed=5, target_events=12_000)
    path = Path(tmp) / "shop.csv"
    sim.events.to_csv(path, index=False)
    engine = open_store(url)
    api.ingest(engine, [path])
    api.segment(engine, k="3")
    engine.dispose()
    port = free_port()
    env = {**os.environ, "SHOAL_API_TOKEN": TOKEN, "SHOAL_FOLD_MS": "200"}
    shoal = str(Path(sys.executable).with_name("shoal"))
    log = (tmp / "serve.log").open("wb")
    server = subprocess.Popen(
        [shoal, "serve", "--db", url, "--port", str(port)], env=env, stdout=log, stderr=log
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp / "serve.log").read_text()
            try:
                if httpx.get(f"{root}/healthz", timeout=2).json()["recommender_ready"]:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service's recommender never became ready"
            time.sleep(0.2)
        yield root
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_every_operation_conforms(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
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
