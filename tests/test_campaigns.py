"""Campaigns end to end on a simulated shop: rules, decisions, real SMTP and HTTP delivery.

The shop is refitted on its first 20 days, campaigns are loaded, then the next 10 days arrive
as an update: its segment changes (the outbox) trigger the campaigns. Messages go to a real
SMTP server (aiosmtpd) and a real HTTP server started by the tests.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from automation import api
from automation.campaigns import service as campaigns
from automation.campaigns.dispatch import dispatch
from automation.campaigns.limits import holdout_draw, quiet_until
from automation.campaigns.spec import QuietHours, parse_campaign
from automation.cli import main
from automation.config import Settings
from automation.errors import InputError
from automation.simulate import simulate
from tests.receivers import http_server, smtp_server

START = pd.Timestamp("2024-01-01", tz="UTC")


def write(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


@pytest.fixture
def shop(tmp_path: Path) -> dict[str, Any]:
    sim = simulate(n_users=2000, days=30, seed=3, scenarios=["churn@20"], target_events=50_000)
    days = ((sim.events["timestamp"] - START).dt.days).to_numpy()
    base = tmp_path / "base.csv"
    sim.events[days < 20].to_csv(base, index=False)
    later = tmp_path / "later.csv"
    sim.events[days >= 20].to_csv(later, index=False)
    return {"base": base, "later": later}


def segment_names(engine: Engine) -> list[str]:
    return [s["name"] for s in api.segments(engine)["segments"]]


def campaign_files(tmp_path: Path, seg: str, hook: str, other: str) -> list[Path]:
    return [
        write(
            tmp_path / "email.yaml",
            f"""name: picked
trigger: {{entered: "{seg}"}}
priority: 20
holdout: 0.2
limits: {{frequency_cap: {{max: 5, per: 30d}}}}
channel:
  type: email
  template: picked_for_you
  subject: "{{{{ segment.name }}}}: picked for you"
  recommendations: 3
""",
        ),
        write(
            tmp_path / "coupon.yaml",
            f"""name: coupon
trigger: {{entered: "{other}"}}
priority: 10
holdout: 0.2
channel:
  type: coupon
  template: welcome_back
  subject: "A code for you"
  recommendations: 0
  coupon: {{kind: amount, value: 5, expires_in: 14d}}
""",
        ),
        write(
            tmp_path / "hook.yaml",
            f"""name: crm
trigger: {{entered: "{seg}"}}
holdout: 0.1
channel: {{type: webhook, url: "{hook}"}}
""",
        ),
        write(
            tmp_path / "route.yaml",
            f"""name: route
trigger: {{entered: "{seg}"}}
holdout: 0
channel: {{type: routing, queue: care, priority: 2, script: priority_care.txt.j2}}
""",
        ),
        write(
            tmp_path / "low.yaml",
            f"""name: picked-low
trigger: {{entered: "{seg}"}}
priority: 5
holdout: 0.5
channel:
  type: email
  template: picked_for_you
  subject: "also for you"
  recommendations: 0
""",
        ),
        write(
            tmp_path / "parquet.yaml",
            f"""name: lake
trigger: {{entered: "{seg}"}}
holdout: 0.1
channel: {{type: export, format: parquet, path: "{tmp_path / "lake"}"}}
""",
        ),
        write(
            tmp_path / "export.yaml",
            f"""name: export
trigger: {{entered: "{seg}"}}
holdout: 0.1
channel: {{type: export, path: "{tmp_path / "out" / "{campaign}.csv"}"}}
""",
        ),
    ]


def largest_segment(engine: Engine, rank: int = 0) -> str:
    """The biggest segment (``rank`` 0; 1 the next): newcomers of the next days enter them."""
    segs = sorted(api.segments(engine)["segments"], key=lambda s: -s["size"])
    return str(segs[min(rank, len(segs) - 1)]["id"])


def test_a_campaign_file_error_names_file_line_and_field(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        "name: bad\ntrigger:\n  entered: X\nholdout: 2\nchannel:\n  type: email\n  templat: x\n",
    )
    with pytest.raises(InputError) as err:
        campaigns.validate(bad)
    msg = str(err.value)
    assert f"{bad}:4: holdout:" in msg
    assert f"{bad}:7: channel.templat: unknown field" in msg
    typo = write(
        tmp_path / "typo.yaml",
        "name: typo\ntrigger: {entered: X}\nchannel:\n  type: email\n  template: picked_for_you\n"
        '  subject: "{{ segmnt.name }}"\n',
    )
    with pytest.raises(InputError, match=r"typo.yaml:6: channel.subject: unknown variable segmnt"):
        campaigns.validate(typo)
    result = CliRunner().invoke(main, ["campaign", "validate", str(typo), "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["error"] == "input_error"
    with pytest.raises(InputError, match=r"x.yaml:2: \(file\): not valid YAML"):
        parse_campaign("name: [unclosed\n", "x.yaml")


def test_examples_validate() -> None:
    files = sorted(Path("examples/campaigns").glob("*.yaml"))
    assert {campaigns.validate(f).channel.type for f in files} == {
        "email",
        "coupon",
        "routing",
        "webhook",
        "export",
    }


def test_holdout_share_within_one_point_over_10000_users() -> None:
    ids = pd.Series([f"user-{i}" for i in range(10_000)])
    for share in (0.05, 0.1, 0.3, 0.5):
        held = holdout_draw("spring-sale", ids) < share
        assert abs(held.mean() - share) < 0.01, (share, held.mean())
    # fixed per (campaign, user); another campaign draws independently
    again = holdout_draw("spring-sale", ids)
    assert np.array_equal(again, holdout_draw("spring-sale", ids))
    other = holdout_draw("winter-sale", ids) < 0.1
    assert abs((other & (again < 0.1)).mean() - 0.01) < 0.005


def test_quiet_hours_postpone_to_their_end() -> None:
    q = QuietHours(start="21:00", end="08:00", timezone="Europe/London")
    late = pd.Timestamp("2024-06-01 22:30", tz="Europe/London").tz_convert("UTC")
    assert quiet_until(q, late) == pd.Timestamp("2024-06-02 08:00", tz="Europe/London")
    noon = pd.Timestamp("2024-06-01 12:00", tz="UTC")
    assert quiet_until(q, noon) == noon


def test_campaigns_end_to_end(
    engine: Engine, shop: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.update(engine, [shop["base"]])
    monkeypatch.setenv("SHOAL_WEBHOOK_SECRET", "s3cret")
    seg = largest_segment(engine)
    with smtp_server() as (smtp_url, mailbox), http_server(fail_first=1) as (hook, inbox):
        for f in campaign_files(tmp_path, seg, hook, largest_segment(engine, 1)):
            assert campaigns.load(engine, f)["changed"]
        assert not campaigns.load(engine, tmp_path / "email.yaml")["changed"]
        assert campaigns.run(engine).to_dict()["n_decisions"] == 0  # nothing happened yet
        out = api.update(engine, [shop["later"]], refit_on_drift=False)  # users move
        assert out["migrations"] > 0

        dry = campaigns.run(engine, dry_run=True).to_dict()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM campaign_decisions")).scalar() == 0
        report = campaigns.run(engine).to_dict()
        by = {c["campaign"]: c for c in report["campaigns"]}
        assert {c["campaign"]: c["occurrences"] for c in dry["campaigns"]} == {
            c: by[c]["occurrences"] for c in by
        }
        email, coupon = by["picked"], by["coupon"]
        assert email["treatment"] > 0 and email["holdout"] > 0
        # one medium: the higher-priority e-mail campaign takes each user (treated or held out)
        low = by["picked-low"]
        assert low["occurrences"] == email["occurrences"] > 0
        assert low["treatment"] == low["holdout"] == 0
        assert coupon["treatment"] > 0  # its own segment's newcomers
        again = campaigns.run(engine).to_dict()
        assert all(c["occurrences"] == 0 for c in again["campaigns"])  # exactly once

        settings = Settings(smtp_url=smtp_url)
        first = dispatch(engine, settings)
        assert first.retried == 1  # the webhook answered 503 once
        assert (
            dispatch(
                engine, settings, now=pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=5)
            ).sent
            >= 1
        )
        assert dispatch(engine, settings).sent == 0  # nothing twice
        with engine.connect() as conn:
            pending = conn.execute(
                text("SELECT COUNT(*) FROM deliveries WHERE status <> 'sent'")
            ).scalar()
            n_mail = conn.execute(
                text("SELECT COUNT(*) FROM deliveries WHERE channel IN ('email', 'coupon')")
            ).scalar()
            coupon_codes = [r[0] for r in conn.execute(text("SELECT code FROM coupons"))]
        assert pending == 0
        keys = mailbox.keys()
        assert len(keys) == n_mail == len(set(keys))
        msg = mailbox.messages[0]
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "Picked for you" in html or "We kept something" in html
        assert msg["Message-ID"].endswith("@shoal>")
        for r in inbox.requests:
            sig = hmac.new(b"s3cret", r["raw"], hashlib.sha256).hexdigest()
            assert r["headers"]["X-Shoal-Signature"] == f"sha256={sig}"
            assert r["json"]["campaign"] == "crm" and r["headers"]["Idempotency-Key"]
        lake = pd.read_parquet(tmp_path / "lake")
        assert len(lake) == by["lake"]["treatment"] and lake["key"].is_unique
        rows = list(csv.DictReader((tmp_path / "out" / "export.csv").open()))
        assert len(rows) == by["export"]["treatment"] and len({r["key"] for r in rows}) == len(rows)

    # coupons: unique, redeemable once, then a conversion in the uplift
    assert len(coupon_codes) == len(set(coupon_codes))
    assert len(coupon_codes) >= 2
    assert campaigns.redeem(engine, coupon_codes[0])["used"] == 1
    with pytest.raises(InputError, match="used up"):
        campaigns.redeem(engine, coupon_codes[0])
    # a redemption that comes back as an event: a purchase carrying the code
    code = coupon_codes[1]
    with engine.connect() as conn:
        owner = conn.execute(
            text(
                "SELECT u.external_id FROM coupons c JOIN users u ON u.id = c.user_key "
                "WHERE c.code = :c"
            ),
            {"c": code},
        ).scalar()
    at = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)  # before the coupon expires
    redemption = write(
        tmp_path / "redeem.csv",
        "user_id,type,timestamp,item_id,quantity,price,order_id,coupon\n"
        f"{owner},purchase,{at.isoformat()},i-1,1,9.5,o-r1,{code}\n"
        f"{owner},purchase,{at.isoformat()},i-2,1,3.5,o-r1,{code}\n",
    )
    assert api.ingest(engine, [redemption]).accepted == 2
    api.ingest(engine, [redemption])  # again: duplicates, no second redemption
    with engine.connect() as conn:
        used = conn.execute(text("SELECT used FROM coupons WHERE code = :c"), {"c": code})
        assert used.scalar() == 1
    up = campaigns.uplift(engine, "picked", "30d")
    assert up["overall"]["treated"] == email["treatment"]
    # routing: the support lookup answers with the queue and the rendered script
    with engine.connect() as conn:
        routed = conn.execute(
            text("SELECT u.external_id FROM routing r JOIN users u ON u.id = r.user_key")
        ).scalar()
    assert routed is not None
    info = api.user(engine, str(routed))
    assert info["routing"]["queue"] == "care" and "Caller is in" in info["routing"]["script"]
    listed = campaigns.deliveries(engine)
    assert listed["dead_letters"] == 0 and listed["counts"]


def test_failing_channel_backs_off_then_dead_letters(
    engine: Engine, shop: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.update(engine, [shop["base"]])
    monkeypatch.setenv("SHOAL_WEBHOOK_SECRET", "s3cret")
    seg = largest_segment(engine)
    campaigns.load(
        engine,
        write(
            tmp_path / "hook.yaml",
            f'name: down\ntrigger: {{entered: "{seg}"}}\nholdout: 0\n'
            f'channel: {{type: webhook, url: "http://127.0.0.1:9/closed"}}\n',
        ),
    )
    api.update(engine, [shop["later"]], refit_on_drift=False)
    assert campaigns.run(engine).campaigns[0]["queued"] > 0
    now = pd.Timestamp.now(tz="UTC")
    waits = []
    for attempt in range(5):
        rep = dispatch(engine, Settings(), limit=1, now=now, max_attempts=5, backoff_seconds=10)
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT attempts, status, next_attempt_at FROM deliveries ORDER BY id LIMIT 1")
            ).one()
        assert row.attempts == attempt + 1
        if attempt < 4:
            assert rep.retried == 1 and row.status == "pending"
            nxt = pd.Timestamp(row.next_attempt_at)
            nxt = nxt.tz_localize("UTC") if nxt.tzinfo is None else nxt
            waits.append((nxt - now).total_seconds())
            now = nxt
        else:
            assert rep.dead == 1 and row.status == "dead"
    assert waits == pytest.approx([10, 20, 40, 80], abs=1)
    with engine.connect() as conn:
        dead = conn.execute(text("SELECT attempts, error FROM dead_letters")).one()
    assert dead.attempts == 5 and "127.0.0.1:9" in dead.error


def test_campaign_commands(shop: dict[str, Any], tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'cli.db'}"]
    runner = CliRunner()
    assert runner.invoke(main, ["update", str(shop["base"]), *db]).exit_code == 0
    example = "examples/campaigns/picked_for_you_email.yaml"
    out = runner.invoke(main, ["campaign", "load", example, *db, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["loaded"][0]["version"] == 1
    listed = json.loads(runner.invoke(main, ["campaign", "list", *db, "--json"]).output)
    assert listed["campaigns"][0]["name"] == "picked-for-you"
    dry = runner.invoke(main, ["campaign", "run", "--dry-run", *db, "--json"])
    assert dry.exit_code == 0 and json.loads(dry.output)["dry_run"] is True
    up = runner.invoke(main, ["uplift", "picked-for-you", *db, "--json"])
    assert up.exit_code == 0 and json.loads(up.output)["overall"]["treated"] == 0
    missing = runner.invoke(main, ["uplift", "nope", *db])
    assert missing.exit_code == 1 and "no campaign 'nope'" in missing.output
    d = runner.invoke(main, ["dispatch", *db, "--json"])
    assert d.exit_code == 0 and json.loads(d.output)["sent"] == 0
    assert runner.invoke(main, ["deliveries", *db, "--json"]).exit_code == 0
    bad = runner.invoke(main, ["redeem", "NOPE", *db])
    assert bad.exit_code == 1 and "no coupon" in bad.output


def test_feature_migrated_and_schedule_triggers_with_cooldown(
    engine: Engine, shop: dict[str, Any], tmp_path: Path
) -> None:
    api.update(engine, [shop["base"]])
    segs = [s["id"] for s in api.segments(engine)["segments"]]
    export = tmp_path / "x.csv"
    for a in segs:  # every ordered pair of segments: the update's moves decide which fire
        for b in segs:
            if a != b:
                campaigns.load(
                    engine,
                    write(
                        tmp_path / f"mig-{a}-{b}.yaml",
                        f"name: mig-{a}-{b}\ntrigger: {{migrated: {{from: {a}, to: {b}}}}}\n"
                        f"holdout: 0\nchannel: {{type: export, path: '{export}'}}\n",
                    ),
                )
    campaigns.load(
        engine,
        write(
            tmp_path / "quiet.yaml",
            f"name: quiet\ntrigger: {{feature: {{segment: {segs[0]}, feature: recency_days, "
            f"op: '>', value: 3}}}}\nholdout: 0\nchannel: {{type: export, path: '{export}'}}\n",
        ),
    )
    campaigns.load(
        engine,
        write(
            tmp_path / "hourly.yaml",
            "name: hourly\ntrigger: {schedule: {cron: '0 * * * *'}}\nholdout: 0\n"
            f"limits: {{cooldown: 2h}}\nchannel: {{type: export, path: '{export}'}}\n",
        ),
    )
    api.update(engine, [shop["later"]], refit_on_drift=False)
    with engine.connect() as conn:
        moves = conn.execute(
            text(
                "SELECT COUNT(*) FROM segment_migrations WHERE from_segment IS NOT NULL "
                "AND from_segment <> to_segment"
            )
        ).scalar()
    when = pd.Timestamp("2024-01-31 09:30", tz="UTC")  # a replay clock, before loading
    first = {c["campaign"]: c for c in campaigns.run(engine, now=when).campaigns}
    migrated = sum(c["occurrences"] for n, c in first.items() if n.startswith("mig-"))
    assert moves and migrated == moves  # each move between segments fires its pair once
    assert first["quiet"]["occurrences"] > 0
    assert first["hourly"]["treatment"] > 0
    later = pd.Timestamp("2024-01-31 10:30", tz="UTC")
    second = {c["campaign"]: c for c in campaigns.run(engine, now=later).campaigns}
    assert second["quiet"]["occurrences"] == 0  # the same quiet spell does not fire again
    assert second["hourly"]["occurrences"] == first["hourly"]["occurrences"]  # a new slot...
    assert second["hourly"]["suppressed"] == second["hourly"]["occurrences"]  # ...in cooldown
    third = {
        c["campaign"]: c for c in campaigns.run(engine, now=later + pd.Timedelta(hours=2)).campaigns
    }
    assert third["hourly"]["treatment"] == first["hourly"]["treatment"]  # cooldown over


def test_a_failing_campaign_is_skipped_and_rolled_back(
    engine: Engine, shop: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jinja2 import TemplateError

    import automation.campaigns.engine as eng

    api.update(engine, [shop["base"]])
    seg = largest_segment(engine)
    for name in ("good", "bad"):
        campaigns.load(
            engine,
            write(
                tmp_path / f"{name}.yaml",
                f'name: {name}\ntrigger: {{entered: "{seg}"}}\nholdout: 0\n'
                "channel: {type: email, template: picked_for_you, subject: hi, "
                "recommendations: 0}\n",
            ),
        )
    api.update(engine, [shop["later"]], refit_on_drift=False)
    real = eng.render_message

    def render(spec: Any, ctx: Any, root: Any = None) -> Any:
        if spec.name == "bad":
            raise TemplateError("a broken template")
        return real(spec, ctx, root)

    monkeypatch.setattr(eng, "render_message", render)
    # "bad" sorts first (same priority): it is decided first and fails after its decisions
    with engine.connect() as conn:
        before = conn.execute(
            text("SELECT outbox_id FROM campaign_cursors WHERE name = 'bad'")
        ).scalar()
    out = {c["campaign"]: c for c in campaigns.run(engine, with_items=False).campaigns}
    assert "a broken template" in out["bad"]["error"]
    assert out["good"]["treatment"] > 0
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                text("SELECT campaign, COUNT(*) FROM campaign_decisions GROUP BY campaign")
            ).all()
        )
        cursor = conn.execute(
            text("SELECT outbox_id FROM campaign_cursors WHERE name = 'bad'")
        ).scalar()
    assert "bad" not in rows and rows["good"] == out["good"]["occurrences"]
    assert cursor == before  # kept where it was: its occurrences are retried next run
    monkeypatch.setattr(eng, "render_message", real)
    again = {c["campaign"]: c for c in campaigns.run(engine, with_items=False).campaigns}
    assert again["bad"]["treatment"] == out["good"]["treatment"]  # decided once it works
    assert again["good"]["occurrences"] == 0


def test_a_deactivated_campaign_sends_nothing_more(
    engine: Engine, shop: dict[str, Any], tmp_path: Path
) -> None:
    api.update(engine, [shop["base"]])
    seg = largest_segment(engine)
    body = (
        f'name: paused\ntrigger: {{entered: "{seg}"}}\nholdout: 0\n'
        f"channel: {{type: export, path: '{tmp_path / 'x.csv'}'}}\n"
    )
    campaigns.load(engine, write(tmp_path / "paused.yaml", body))
    api.update(engine, [shop["later"]], refit_on_drift=False)
    queued = campaigns.run(engine).campaigns[0]["queued"]
    assert queued > 0
    campaigns.load(engine, write(tmp_path / "paused.yaml", body + "active: false\n"))
    report = dispatch(engine, Settings())
    assert (report.sent, report.cancelled) == (0, queued)
    assert not (tmp_path / "x.csv").exists()
