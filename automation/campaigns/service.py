"""The campaigns' Python API, mirroring ``shoal campaign ...``, ``dispatch``, ``uplift``,
``deliveries`` and ``redeem``.

Examples
--------
>>> from automation import api
>>> from automation.campaigns import service as campaigns
>>> engine = api.connect("sqlite:///shop.db")  # doctest: +SKIP
>>> campaigns.load(engine, "examples/campaigns/winback_email.yaml")  # doctest: +SKIP
>>> campaigns.run(engine, dry_run=True).to_dict()  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text

from automation.campaigns.dispatch import DispatchReport, deliveries, dispatch
from automation.campaigns.engine import Recommend, RunReport, run_campaigns
from automation.campaigns.spec import CampaignSpec
from automation.campaigns.store import latest_campaigns, load_file, validate_file
from automation.campaigns.uplift import uplift
from automation.config import Settings
from automation.errors import InputError, NotFoundError
from automation.features.build import as_utc

__all__ = [
    "deliveries",
    "dispatch_due",
    "list_campaigns",
    "load",
    "recommender",
    "redeem",
    "run",
    "uplift",
    "validate",
]


def validate(path: str | Path, templates: Path | None = None) -> CampaignSpec:
    return validate_file(path, templates)


def load(engine: Engine, path: str | Path, templates: Path | None = None) -> dict[str, Any]:
    return load_file(engine, path, templates)


def list_campaigns(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        camps = latest_campaigns(conn)
    return [
        {
            "name": c.name,
            "version": c.version,
            "active": c.active,
            "priority": c.spec.priority,
            "trigger": c.spec.trigger.kind,
            "channel": c.spec.channel.type,
            "holdout": c.spec.holdout,
        }
        for c in camps
    ]


def recommender(engine: Engine, model: str = "hybrid") -> Recommend:
    """Recommendations for templates: the store's current model, asked for a batch of users."""
    from automation.recommend.persist import current_model

    rec, _ = current_model(engine, model)

    def recommend(user_ids: list[str], n: int) -> dict[str, list[dict[str, Any]]]:
        if not user_ids:
            return {}
        lists = rec.recommend(user_ids, n=n)
        return {u: [r.to_dict() for r in items] for u, items in zip(user_ids, lists, strict=True)}

    return recommend


def run(
    engine: Engine,
    names: list[str] | None = None,
    dry_run: bool = False,
    now: pd.Timestamp | None = None,
    with_items: bool = True,
) -> RunReport:
    """Decide the active campaigns; fits a recommender first when a message shows items."""
    recommend = None
    if with_items and not dry_run:
        with engine.connect() as conn:
            needs = any(
                c.active
                and c.spec.channel.type in ("email", "coupon")
                and c.spec.channel.recommendations > 0
                for c in latest_campaigns(conn, names)
            )
        if needs:
            recommend = recommender(engine)
    return run_campaigns(engine, names, dry_run, now, recommend)


def dispatch_due(engine: Engine, settings: Settings, limit: int = 1000) -> DispatchReport:
    return dispatch(engine, settings, limit)


def redeem(engine: Engine, code: str, at: pd.Timestamp | None = None) -> dict[str, Any]:
    """Record one use of a coupon: refused when unknown, expired or used up."""
    when = pd.Timestamp.now(tz="UTC") if at is None else pd.Timestamp(at)
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT code, campaign, expires_at, usage_limit, used FROM coupons WHERE code = :c"
            ),
            {"c": code},
        ).first()
        if row is None:
            raise NotFoundError(f"no coupon {code!r}")
        if as_utc(row.expires_at) < as_utc(when):
            raise InputError(f"coupon {code!r} expired at {row.expires_at}")
        done = conn.execute(
            text("UPDATE coupons SET used = used + 1 WHERE code = :c AND used < usage_limit"),
            {"c": code},
        ).rowcount
        if not done:
            raise InputError(f"coupon {code!r} is used up ({row.usage_limit} use(s))")
    return {"code": code, "campaign": row.campaign, "used": int(row.used) + 1}
