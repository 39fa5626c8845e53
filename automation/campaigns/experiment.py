"""A campaign experiment on the simulated shop with a known effect (tests and bench/uplift.py).

A scheduled campaign (``holdout`` held out) fires for every segmented user; the response model
(:mod:`automation.simulate.response`) makes each persona buy with a known probability, plus a
known lift when treated; :func:`simulated_experiment` returns the measured uplift beside the
true one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text

from automation import api
from automation.campaigns import service as campaigns
from automation.simulate import simulate
from automation.simulate.response import ResponseModel, respond, true_uplift

DEFAULT_MODEL = ResponseModel(
    base={
        "loyal_high_spender": 0.30,
        "bargain_hunter": 0.15,
        "browser": 0.05,
        "new_customer": 0.12,
        "dormant": 0.04,
        "refunder": 0.10,
    },
    lift={
        "loyal_high_spender": 0.02,
        "bargain_hunter": 0.12,
        "browser": 0.03,
        "new_customer": 0.10,
        "dormant": 0.06,
        "refunder": 0.0,
    },
)


def simulated_experiment(
    engine: Engine,
    tmp_path: Path,
    seed: int,
    model: ResponseModel = DEFAULT_MODEL,
    n_users: int = 10_000,
    holdout: float = 0.5,
    k: int = 4,
) -> tuple[dict[str, Any], dict[str, float], pd.DataFrame]:
    """``(measured uplift, true uplift, decisions)`` of one seeded experiment."""
    sim = simulate(n_users=n_users, days=21, seed=seed, target_events=12 * n_users)
    path = tmp_path / "events.csv"
    sim.events.to_csv(path, index=False)
    api.ingest(engine, [path])
    api.segment(engine, k=str(k), seed=seed)
    spec = tmp_path / "daily.yaml"
    spec.write_text(
        "name: daily-offer\ntrigger: {schedule: {cron: '0 9 * * *'}}\n"
        f"holdout: {holdout}\n"
        f"channel: {{type: export, path: '{tmp_path / 'audience.csv'}'}}\n"
    )
    campaigns.load(engine, spec)
    last = pd.Timestamp(sim.events["timestamp"].max())
    now = (last.normalize() + pd.Timedelta(days=1, hours=9, minutes=30)).tz_convert("UTC")
    report = campaigns.run(engine, now=now)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT u.external_id AS user_id, d.group_name AS grp, d.segment_id, "
                "d.triggered_at FROM campaign_decisions d JOIN users u ON u.id = d.user_key"
            )
        ).all()
    decisions = pd.DataFrame(
        [
            {
                "user_id": r.user_id,
                "group": r.grp,
                "segment_id": r.segment_id,
                "triggered_at": r.triggered_at,
            }
            for r in rows
        ]
    )
    personas = sim.persona_on(int((last - sim.events["timestamp"].min()).days))
    response = respond(decisions, personas, model, sim.items, seed=seed, campaign="daily")
    out = tmp_path / "response.csv"
    response.to_csv(out, index=False)
    api.ingest(engine, [out])
    measured = campaigns.uplift(engine, "daily-offer", "14d")
    measured["run"] = report.campaigns[0]
    return measured, true_uplift(decisions, personas, model), decisions
