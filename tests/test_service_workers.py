"""``shoal serve --workers 2`` on a store that does not exist yet: both server processes start
(the store is created once, before them) and stay up; one background process works."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from automation.service.background import STANDBY_SECONDS
from tests.receivers import free_port


def test_two_workers_start_on_a_new_store(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "new.db"
    env = {**os.environ, "SHOAL_API_TOKEN": "t"}
    env.pop("SHOAL_BROKER_URL", None)
    shoal = str(Path(sys.executable).with_name("shoal"))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [shoal, "serve", "--db", f"sqlite:///{db}", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 120
            started = 0
            while started < 2:
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                started = log_path.read_text().count("Application startup complete")
                time.sleep(0.2)
            answers = [
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code
                for _ in range(20)
            ]
            assert answers == [200] * 20
            # One background process takes the store's lease; the other stands by.
            while "background lease taken" not in log_path.read_text():
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            time.sleep(3 * STANDBY_SECONDS)
        finally:
            server.terminate()
            server.wait(timeout=60)
    text = log_path.read_text()
    assert "died" not in text and "already exists" not in text, text
    assert text.count("Started server process") == 2, text
    assert text.count("background lease taken") == 1, text
