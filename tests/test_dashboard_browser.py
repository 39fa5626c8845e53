"""The dashboard in real headless Chromium (Debian's, driven by Playwright) on a seeded store.

The store has a refit and updates with an emerging customer type (so sizes move, migrations
flow and transitions happen) and a campaign with treated and held-out users who responded (so
there is an uplift). The page is served by uvicorn on loopback; every chart must render with
data points, and a screenshot is saved (``SHOAL_SCREENSHOT`` names where, else the test's
temporary folder).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import uvicorn

from automation import api
from automation.campaigns import service as campaigns
from automation.campaigns.experiment import DEFAULT_MODEL
from automation.config import Settings
from automation.service import create_app
from automation.simulate import simulate
from automation.simulate.response import respond
from tests.receivers import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHARTS = ("sizes", "flows", "profiles", "timeline", "campaigns")
START = pd.Timestamp("2024-01-01", tz="UTC")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium here (Debian's chromium package; .ci/run installs it)"
)


def seeded_store(tmp: Path) -> str:
    url = f"sqlite:///{tmp / 'shop.db'}"
    engine = api.connect(url)
    # 6,000 users: with 3,000 the warm-up finds two broad segments and the newcomers (a few
    # hundred) raise no alarm in twelve days. Since the basket features (units per line, price
    # index) the emerging type alone raises none at 6,000 either: the loyal customers' churn
    # on day 28 (a week of updates as reference) is the alert the table must list.
    sim = simulate(
        n_users=6000,
        days=36,
        seed=2,
        scenarios=["emerging@24", "churn@28"],
        target_events=180_000,
    )
    days = ((sim.events["timestamp"] - START).dt.days).to_numpy()
    for lo, hi in ((0, 20), *((d, d + 1) for d in range(20, 36))):
        part = tmp / f"d{lo}.csv"
        sim.events[(days >= lo) & (days < hi)].to_csv(part, index=False)
        api.update(engine, [part], refit_on_drift=False)
    spec = tmp / "offer.yaml"
    spec.write_text(
        "name: weekly-offer\ntrigger: {schedule: {cron: '0 9 * * *'}}\nholdout: 0.5\n"
        f"channel: {{type: export, path: '{tmp / 'audience.csv'}'}}\n"
    )
    campaigns.load(engine, spec)
    now = START + pd.Timedelta(days=36, hours=9, minutes=30)
    campaigns.run(engine, now=now)
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT u.external_id, d.group_name, d.segment_id, d.triggered_at FROM "
                "campaign_decisions d JOIN users u ON u.id = d.user_key"
            )
        ).all()
    decisions = pd.DataFrame(rows, columns=["user_id", "group", "segment_id", "triggered_at"])
    personas = sim.persona_on(35)
    response = respond(decisions, personas, DEFAULT_MODEL, sim.items, seed=2, campaign="w")
    path = tmp / "response.csv"
    response.to_csv(path, index=False)
    api.ingest(engine, [path])
    engine.dispose()
    return url


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    url = seeded_store(tmp_path)
    app = create_app(Settings(database_url=url, api_token="t"), background=False)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def test_every_chart_renders_with_data(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    shot = Path(os.environ.get("SHOAL_SCREENSHOT", tmp_path / "dashboard.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.wait_for_timeout(800)  # let the charts' entry animations finish
        for name in CHARTS:
            el = page.locator(f"#{name}")
            points = int(el.get_attribute("data-points") or 0)
            assert points > 0, f"chart {name} has no data"
            assert el.locator("canvas").count() >= 1, f"chart {name} did not render"
        assert page.locator("#alerts tbody tr").count() > 0, "no drift alerts listed"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
