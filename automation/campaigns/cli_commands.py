"""``shoal campaign validate|load|list|run``, ``shoal dispatch``, ``shoal uplift``,
``shoal deliveries`` and ``shoal redeem``: thin shells over :mod:`automation.campaigns.service`."""

from __future__ import annotations

import json
from typing import Any

import click

from automation.cli_support import errors
from automation.config import Settings

_db = click.option(
    "--db",
    "db",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL or SQLite path (default: $SHOAL_DATABASE_URL or sqlite:///shoal.db).",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _engine(db: str | None) -> Any:
    from automation import api

    return api.connect(db)


def _print(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group()
def campaign() -> None:
    """Campaign rules written by marketers: validate, load, list and run them.

    Every subcommand takes --json.
    """


@campaign.command("validate")
@click.argument("files", nargs=-1, required=True)
@_json
def validate_cmd(files: tuple[str, ...], as_json: bool) -> None:
    """Check campaign files (fields, values, templates) without a database."""
    from automation.campaigns import service

    with errors(as_json):
        out = []
        for f in files:
            spec = service.validate(f)
            out.append({"file": f, "name": spec.name, "ok": True})
    if as_json:
        _print({"files": out})
    else:
        for o in out:
            click.echo(f"{o['file']}: ok ({o['name']})")


@campaign.command("load")
@click.argument("files", nargs=-1, required=True)
@_db
@_json
def load_cmd(files: tuple[str, ...], db: str | None, as_json: bool) -> None:
    """Validate and store campaign files; a changed file becomes a new version."""
    from automation.campaigns import service

    with errors(as_json):
        engine = _engine(db)
        out = [service.load(engine, f) for f in files]
    if as_json:
        _print({"loaded": out})
    else:
        for o in out:
            state = "new version" if o["changed"] else "unchanged"
            click.echo(f"{o['name']}: version {o['version']} ({state})")


@campaign.command("list")
@_db
@_json
def list_cmd(db: str | None, as_json: bool) -> None:
    """The loaded campaigns (newest versions), highest priority first."""
    from automation.campaigns import service

    with errors(as_json):
        rows = service.list_campaigns(_engine(db))
    if as_json:
        _print({"campaigns": rows})
        return
    for r in rows:
        click.echo(
            f"{r['name']:<28} v{r['version']:<3} {'on ' if r['active'] else 'off'} "
            f"priority {r['priority']:<4} {r['trigger']:<14} -> {r['channel']:<8} "
            f"holdout {r['holdout']:.0%}"
        )


@campaign.command("run")
@click.option("--campaign", "names", multiple=True, help="Only these campaigns (repeatable).")
@click.option("--dry-run", is_flag=True, help="List who would get what, and why; write nothing.")
@_db
@_json
def run_cmd(names: tuple[str, ...], dry_run: bool, db: str | None, as_json: bool) -> None:
    """Decide every active campaign's new trigger occurrences and queue the deliveries."""
    from automation.campaigns import service

    with errors(as_json):
        report = service.run(_engine(db), list(names) or None, dry_run=dry_run)
    data = report.to_dict()
    if as_json:
        _print(data)
        return
    head = "dry run: nothing written" if dry_run else "decided"
    click.echo(head)
    for c in data["campaigns"]:
        click.echo(
            f"  {c['campaign']:<28} {c['occurrences']:>6} occurrences: {c['treatment']} treated, "
            f"{c['holdout']} held out, {c['suppressed']} suppressed; {c['queued']} queued"
        )
    for d in data["decisions"][:20]:
        click.echo(f"    {d['user_id']:<12} {d['group']:<10} {d['campaign']}: {d['reason']}")


@click.command()
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1))
@_db
@_json
def dispatch(limit: int, db: str | None, as_json: bool) -> None:
    """Send due deliveries (e-mail, webhooks, exports) with retries and a dead-letter table."""
    from automation.campaigns import service

    with errors(as_json):
        settings = Settings.from_env(database_url=db)
        report = service.dispatch_due(_engine(db), settings, limit)
    data = report.to_dict()
    if as_json:
        _print(data)
        return
    click.echo(f"sent {data['sent']}, retrying {data['retried']}, dead {data['dead']}")
    for e in data["errors"][:5]:
        click.echo(f"  {e}")


@click.command()
@click.argument("campaign_name", metavar="CAMPAIGN")
@click.option("--window", default="30d", show_default=True, help="Outcome window after a trigger.")
@_db
@_json
def uplift(campaign_name: str, window: str, db: str | None, as_json: bool) -> None:
    """Conversion and revenue per user, treated against held out, with 95% intervals."""
    from automation.campaigns import service

    with errors(as_json):
        data = service.uplift(_engine(db), campaign_name, window)
    if as_json:
        _print(data)
        return
    click.echo(f"{data['campaign']}: window {data['window']}, incomplete {data['incomplete']}")
    for label, part in [("overall", data["overall"])] + [
        (f"segment {s['segment_id']}", s) for s in data["segments"]
    ]:
        conv = part.get("conversion")
        if conv is None:
            click.echo(
                f"  {label:<14} n/a ({part['treated']} treated, {part['held_out']} held out)"
            )
            continue
        lo, hi = conv["ci95"]
        click.echo(
            f"  {label:<14} conversion {conv['treated']:.3f} vs {conv['held_out']:.3f}: "
            f"uplift {conv['uplift']:+.3f} [{lo:+.3f}, {hi:+.3f}] "
            f"({part['treated']} treated, {part['held_out']} held out)"
        )


@click.command("deliveries")
@click.option("--campaign", "campaign_name", default=None)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0))
@_db
@_json
def deliveries_cmd(campaign_name: str | None, limit: int, db: str | None, as_json: bool) -> None:
    """Deliveries by campaign, channel and status, and the newest ones."""
    from automation.campaigns import service

    with errors(as_json):
        data = service.deliveries(_engine(db), campaign_name, limit)
    if as_json:
        _print(data)
        return
    for c in data["counts"]:
        click.echo(f"{c['campaign']:<28} {c['channel']:<8} {c['status']:<8} {c['n']:>7,}")
    click.echo(f"dead letters: {data['dead_letters']}")


@click.command()
@click.argument("code")
@_db
@_json
def redeem(code: str, db: str | None, as_json: bool) -> None:
    """Record one use of a coupon code (counts as a conversion in `shoal uplift`)."""
    from automation.campaigns import service

    with errors(as_json):
        data = service.redeem(_engine(db), code)
    if as_json:
        _print(data)
    else:
        click.echo(f"{data['code']}: used {data['used']} time(s) ({data['campaign']})")


COMMANDS = [campaign, dispatch, uplift, deliveries_cmd, redeem]
