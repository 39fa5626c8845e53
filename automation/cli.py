"""``shoal``: a thin command line over :mod:`automation.api`.

Domain errors become one line on stderr (or one JSON object ``{"error", "message"}`` with
``--json``) and exit code 1; usage errors exit 2. Long work shows a progress bar on a terminal and
stays quiet with ``--json`` or when stderr is not a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from tqdm import tqdm

from automation import api
from automation.cli_support import errors
from automation.errors import InputError
from automation.report.text import campaign_text, segment_table

F = TypeVar("F", bound=Callable[..., Any])


def _counter(bar: tqdm) -> Callable[[int], None]:
    def update(n: int) -> None:
        bar.update(n)

    return update


def _interactive(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()


def db_option(f: F) -> F:
    return click.option(
        "--db",
        "db",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL or SQLite path (default: $SHOAL_DATABASE_URL or sqlite:///shoal.db).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shoal")
def main() -> None:
    """Shoal: behavioural customer segments that stay true while customers change."""


@main.command()
@click.argument("files", nargs=-1, required=True)
@db_option
@click.option("--preset", default=None, help="Column preset: online-retail or segment.")
@click.option(
    "--map", "maps", multiple=True, metavar="FIELD=COLUMN", help="Take a field from a column."
)
@click.option(
    "--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Give a field a constant."
)
@json_option
def ingest(
    files: tuple[str, ...],
    db: str | None,
    preset: str | None,
    maps: tuple[str, ...],
    sets: tuple[str, ...],
    as_json: bool,
) -> None:
    """Ingest event files (CSV, CSV.gz, JSON lines, Parquet); bad rows go to quarantine."""
    with errors(as_json):
        for f in files:
            if not Path(f).exists():
                raise InputError(f"{f}: no such file")
        engine = api.connect(db)
        bar = tqdm(
            unit=" rows", unit_scale=True, disable=not _interactive(as_json), file=sys.stderr
        )
        with bar:
            report = api.ingest(engine, files, preset, maps, sets, progress=_counter(bar))
    data = report.to_dict()
    if as_json:
        _print_json(data)
        return
    click.echo(
        f"read {data['read']:,}  accepted {data['accepted']:,}  duplicates {data['duplicates']:,}"
        f"  quarantined {data['quarantined']:,}  ({data['seconds']} s)"
    )
    for reason, n in data["quarantine_reasons"].items():
        click.echo(f"  quarantined {n:,} rows: {reason}")


@main.command()
@db_option
@click.option(
    "--method",
    default="kmeans",
    show_default=True,
    type=click.Choice(["kmeans", "minibatch", "gmm", "ward", "hdbscan"]),
)
@click.option("--k", "k", default="auto", show_default=True, help="'auto' or a number of segments.")
@click.option(
    "--as-of", "as_of", default=None, help="Segment as of this date (default: newest event)."
)
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
def segment(
    db: str | None, method: str, k: str, as_of: str | None, seed: int, as_json: bool
) -> None:
    """Segment every user from their behaviour and store a new segmentation version."""
    with errors(as_json):
        engine = api.connect(db)
        bar = tqdm(total=4, disable=not _interactive(as_json), file=sys.stderr, leave=False)
        with bar:

            def step(msg: str) -> None:
                bar.set_description(msg)
                bar.update(1)

            result = api.segment(engine, method, k, as_of, seed, progress=step)
    data = result.to_dict()
    if as_json:
        _print_json(data)
        return
    click.echo(segment_table(data))
    if result.k_selection:
        click.echo(f"\nK: {result.k_selection['reason']}")


@main.command()
@db_option
@click.option("--as-of", "as_of", default=None, help="The segmentation in force at this date.")
@json_option
def segments(db: str | None, as_of: str | None, as_json: bool) -> None:
    """Show the current segmentation (or the one in force at --as-of)."""
    with errors(as_json):
        data = api.segments(api.connect(db), as_of)
    if as_json:
        _print_json(data)
    else:
        click.echo(segment_table(data))


@main.command()
@click.argument("user_id")
@db_option
@click.option("--as-of", "as_of", default=None, help="The user's segment at this date.")
@json_option
def user(user_id: str, db: str | None, as_of: str | None, as_json: bool) -> None:
    """Show a user's segment (now or at --as-of), customer-service routing, features and
    migration history."""
    with errors(as_json):
        data = api.user(api.connect(db), user_id, as_of)
    if as_json:
        _print_json(data)
        return
    seg = data["segment"]
    click.echo(f"user {data['user_id']} (features as of {data['as_of']})")
    click.echo(
        f"segment: {seg['id']} {seg['name']} (version {seg['version']}, as of {seg['as_of']})"
        if seg
        else "segment: (not segmented then)"
    )
    route = data.get("routing")
    if route:
        click.echo(
            f"routing: queue {route['queue']}, priority {route['priority']} "
            f"({route['campaign']}, since {route['since']})"
        )
        if route["script"]:
            click.echo("  " + route["script"].replace("\n", "\n  "))
    for name, value in data["features"].items():
        click.echo(f"  {name:<20} {value:,.2f}")
    for h in data["history"]:
        click.echo(f"  {h['at']}: {h['from'] or '-'} -> {h['to']} ({h['reason']})")


@main.command()
@click.argument("files", nargs=-1)
@db_option
@click.option("--preset", default=None, help="Column preset: online-retail or segment.")
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE")
@click.option("--no-refit", is_flag=True, help="Do not refit at once when drift is found.")
@json_option
def update(
    files: tuple[str, ...],
    db: str | None,
    preset: str | None,
    maps: tuple[str, ...],
    sets: tuple[str, ...],
    no_refit: bool,
    as_json: bool,
) -> None:
    """Ingest new events and update the segmentation incrementally (no full refit)."""
    with errors(as_json):
        for f in files:
            if not Path(f).exists():
                raise InputError(f"{f}: no such file")
        data = api.update(api.connect(db), files, preset, maps, sets, refit_on_drift=not no_refit)
    if as_json:
        _print_json(data)
        return
    if data.get("version") is None:
        click.echo("nothing new to fold in")
        return
    click.echo(
        f"version {data['version']}: {data['events']:,} events, {data['users_touched']:,} users "
        f"touched, {data['migrations']:,} migrations"
    )
    for t in data["transitions"]:
        click.echo(f"  {t['type']}: {', '.join(t['segments'])}  {json.dumps(t['evidence'])[:120]}")
    if "refit" in data:
        click.echo(f"refit: version {data['refit']['version']} (k={data['refit']['k']})")


@main.command()
@db_option
@click.option("--since", default=None, help="From this time (event time, UTC).")
@click.option("--until", default=None, help="Before this time.")
@click.option("--user", "user_id", default=None, help="One user's migrations.")
@click.option("--limit", default=None, type=int)
@json_option
def migrations(
    db: str | None,
    since: str | None,
    until: str | None,
    user_id: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List recorded migrations: who moved, from where, to where, when, and why."""
    with errors(as_json):
        rows = api.migrations(api.connect(db), since, until, user_id, limit)
    if as_json:
        _print_json({"migrations": rows})
        return
    click.echo(f"{len(rows):,} migrations")
    for r in rows[-50:]:
        changed = ", ".join(c["feature"] for c in (r["explanation"] or {}).get("changed", []))
        click.echo(
            f"  {r['at']}  {r['user_id']}: {r['from'] or '-'} -> {r['to']}  "
            f"({r['reason']}; {changed})"
        )


@main.command()
@click.argument("segment_id")
@db_option
@json_option
def history(segment_id: str, db: str | None, as_json: bool) -> None:
    """Show a segment's life: size per version and the transitions involving it."""
    with errors(as_json):
        data = api.history(api.connect(db), segment_id)
    if as_json:
        _print_json(data)
        return
    click.echo(f"{data['segment_id']} {data['name']} ({data['status']})")
    for v in data["versions"]:
        click.echo(f"  v{v['version']} {v['kind']:<6} {v['as_of']}  {v['size']:>8,}  {v['name']}")
    for t in data["transitions"]:
        click.echo(f"  {t['at']}  {t['type']}: {', '.join(t['segments'])}")


@main.command()
@db_option
@click.option("--as-of", "as_of", default=None, help="Assignments in force at this date.")
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="CSV or Parquet file."
)
@json_option
def assignments(db: str | None, as_of: str | None, out: str, as_json: bool) -> None:
    """Write every user's segment id and name to a CSV or Parquet file."""
    with errors(as_json):
        suffix = Path(out).suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            raise InputError(f"--out {out}: use a .csv or .parquet file name")
        frame = api.assignments(api.connect(db), as_of)
        if suffix == ".csv":
            frame.to_csv(out, index=False)
        else:
            frame.to_parquet(out, index=False)
    summary = {"out": out, "rows": len(frame), "segments": int(frame["segment_id"].nunique())}
    if as_json:
        _print_json(summary)
    else:
        click.echo(f"wrote {summary['rows']:,} users in {summary['segments']} segments to {out}")


@main.command()
@db_option
@click.option("--samples", default=3, show_default=True, type=int)
@json_option
def quarantine(db: str | None, samples: int, as_json: bool) -> None:
    """Show quarantined rows: counts by reason, with samples."""
    with errors(as_json):
        data = api.quarantine(api.connect(db), samples)
    if as_json:
        _print_json(data)
        return
    click.echo(f"{data['total']:,} quarantined rows")
    for r in data["reasons"]:
        click.echo(f"  {r['count']:>10,}  {r['reason']}")
        for s in r["samples"]:
            click.echo(
                f"              {s['source']}:{s['line']}  {s['detail']}  | {str(s['raw'])[:80]}"
            )


@main.command()
@db_option
@click.option(
    "--report", "report", default="shoal-report.html", show_default=True, help="HTML report path."
)
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
def demo(db: str | None, report: str, seed: int, as_json: bool) -> None:
    """Replay the bundled Online Retail year month by month: segments, migrations, report,
    and one example campaign per channel (e-mail, coupon, routing, webhook, export)."""
    from automation.campaigns.demo import load_examples, run_examples
    from automation.report.html import write_report
    from automation.report.replay import replay_months, replay_text

    def campaigns_before_the_last_months(month: str, left: int) -> None:
        if left == 2:  # the last two months' segment changes trigger the example campaigns
            load_examples(engine)

    with errors(as_json):
        engine = api.connect(db)
        bar = tqdm(
            unit=" rows", unit_scale=True, disable=not _interactive(as_json), file=sys.stderr
        )
        with bar:
            replay = replay_months(
                engine,
                api.BUNDLED_ONLINE_RETAIL,
                seed=seed,
                progress=_counter(bar),
                before_month=campaigns_before_the_last_months,
            )
        current = api.segments(engine)
        write_report(replay.refit, report, replay=replay, current=current)
        camp = run_examples(engine, Path(report).resolve().parent / "demo-campaigns")
    ing = replay.ingest.to_dict()
    if as_json:
        _print_json(
            {
                "ingest": ing,
                "segmentation": current,
                "months": replay.months,
                "campaigns": camp,
                "report": report,
            }
        )
        return
    click.echo(
        f"Online Retail: read {ing['read']:,} lines, accepted {ing['accepted']:,}, duplicates "
        f"{ing['duplicates']:,}, quarantined {ing['quarantined']:,}\n"
    )
    click.echo(segment_table(current))
    if replay.refit.k_selection:
        click.echo(f"\nK at the warm-up refit: {replay.refit.k_selection['reason']}")
    click.echo("\n" + replay_text(replay, replay.names))
    click.echo("\n" + campaign_text(camp))
    click.echo(f"\nreport: {Path(report).resolve()}")


@main.command()
@click.option("--users", "n_users", default=10_000, show_default=True, type=int)
@click.option("--days", default=90, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    metavar="NAME[@DAY]",
    help="promo, churn, emerging, merge or split (repeatable); @DAY sets the shift day.",
)
@click.option("--format", "fmt", default="csv", show_default=True, help="csv, parquet or jsonl.")
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@json_option
def simulate(
    n_users: int,
    days: int,
    seed: int,
    scenarios: tuple[str, ...],
    fmt: str,
    out: str,
    as_json: bool,
) -> None:
    """Generate a seeded shop with known personas and known shifts (events + ground truth)."""
    from automation.simulate import simulate as run_simulation
    from automation.simulate import write_simulation

    with errors(as_json):
        sim = run_simulation(n_users=n_users, days=days, seed=seed, scenarios=scenarios)
        paths = write_simulation(sim, Path(out), fmt=fmt)
    summary = {
        "users": n_users,
        "days": days,
        "seed": seed,
        "events": len(sim.events),
        "scenarios": sim.scenarios,
        "files": {k: str(v) for k, v in paths.items()},
    }
    if as_json:
        _print_json(summary)
        return
    click.echo(f"{len(sim.events):,} events from {n_users:,} users over {days} days")
    for sc in sim.scenarios:
        click.echo(
            f"  scenario {sc.get('name')} from day {sc.get('day')}: {sc.get('description', '')}"
        )
    for kind, path in paths.items():
        click.echo(f"  {kind}: {path}")


from automation.campaigns.cli_commands import COMMANDS as CAMPAIGN_COMMANDS  # noqa: E402
from automation.service.cli_commands import serve  # noqa: E402
from automation.tasks.cli_commands import scheduler, worker  # noqa: E402

main.add_command(worker)
main.add_command(scheduler)
for _command in CAMPAIGN_COMMANDS:
    main.add_command(_command)
main.add_command(serve)


# ---------------------------------------------------------------------------- recommendations
MODEL_CHOICE = click.Choice(
    ["popularity", "segment-popularity", "item-knn", "als", "content", "ease", "hybrid"]
)


def _print_items(items: list[dict[str, Any]]) -> None:
    for rank, it in enumerate(items, 1):
        price = f"{it['price']:>8.2f}" if it["price"] is not None else "       -"
        click.echo(
            f"  {rank:>2}. {it['item_id']:<10} {it['name'][:40]:<40} {price}  "
            f"{it['score']:>8.4f}  {it['reason']}"
        )


@main.command()
@click.argument("user_id", required=False)
@click.option("--segment", "segment_id", default=None, help="A segment's list instead of a user's.")
@click.option("--n", "n", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--model", default="hybrid", show_default=True, type=MODEL_CHOICE)
@click.option(
    "--include-seen", is_flag=True, help="Allow items bought before (not in the last 30 days)."
)
@db_option
@json_option
def recommend(
    user_id: str | None,
    segment_id: str | None,
    n: int,
    model: str,
    include_seen: bool,
    db: str | None,
    as_json: bool,
) -> None:
    """Recommend items for a user (or, with --segment, for a segment's newcomers)."""
    from automation.recommend.service import recommend_segment, recommend_user

    if (user_id is None) == (segment_id is None):
        raise click.UsageError("give either USER_ID or --segment SEGMENT_ID")
    with errors(as_json):
        engine = api.connect(db)
        if segment_id is not None:
            data = recommend_segment(engine, segment_id, n=n, model=model)
        else:
            assert user_id is not None
            data = recommend_user(engine, user_id, n=n, model=model, filter_seen=not include_seen)
    if as_json:
        _print_json(data)
        return
    seg = data["segment"]
    seg_text = f"{seg['id']} {seg['name']}" + (" (provisional)" if seg["provisional"] else "")
    who = f"user {data['user_id']}" if "user_id" in data else "newcomers"
    click.echo(f"{who} in segment {seg_text}" if seg else f"{who} (no segmentation yet)")
    _print_items(data["items"])


@main.command()
@click.argument("item_id")
@click.option("--n", "n", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--model", default="hybrid", show_default=True, type=MODEL_CHOICE)
@click.option("--include-buyers", is_flag=True, help="Keep users who bought the item before.")
@db_option
@json_option
def audience(
    item_id: str, n: int, model: str, include_buyers: bool, db: str | None, as_json: bool
) -> None:
    """The users most likely to buy an item (a campaign audience), best first."""
    from automation.recommend.service import audience as item_audience

    with errors(as_json):
        data = item_audience(
            api.connect(db), item_id, n=n, model=model, filter_seen=not include_buyers
        )
    if as_json:
        _print_json(data)
        return
    click.echo(f"{data['item_id']} {data['name']}: {len(data['users']):,} users")
    for u in data["users"][:50]:
        click.echo(f"  {u['user_id']:<12} {u['segment'] or '-':<10} {u['score']:.4f}")
    if len(data["users"]) > 50:
        click.echo(f"  ... {len(data['users']) - 50:,} more (use --json)")


@main.command()
@click.option("--split-at", "split_at", required=True, help="Train before this date, test after.")
@click.option("--k", "k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--models",
    default="popularity,segment-popularity,item-knn,als,hybrid",
    show_default=True,
    help="Comma-separated backends.",
)
@click.option(
    "--val-days",
    "val_days",
    default=None,
    type=float,
    help="Validation window before the split (default: the test window's length, 14-90 days).",
)
@click.option("--segment-k", "segment_k", default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@db_option
@json_option
def evaluate(
    split_at: str,
    k: int,
    models: str,
    val_days: float | None,
    segment_k: str,
    seed: int,
    db: str | None,
    as_json: bool,
) -> None:
    """Evaluate the recommenders on a time split, each tuned on a validation window before it."""
    from automation.recommend.evaluate import evaluate as run_evaluation

    names = [m.strip() for m in models.split(",") if m.strip()]
    with errors(as_json):
        engine = api.connect(db)
        bar = tqdm(disable=not _interactive(as_json), file=sys.stderr, leave=False)
        with bar:

            def step(msg: str) -> None:
                bar.set_description(msg[:70])
                bar.update(1)

            report = run_evaluation(
                engine, split_at, k, names, val_days, segment_k, seed, progress=step
            )
    data = report.to_dict()
    if as_json:
        _print_json(data)
        return
    val = data["validation"]
    click.echo(
        f"split at {data['split_at']}, K={k}; tuned on {val['split_at'][:10]} .. "
        f"{val['end'][:10]} ({val['days']:g} days)"
    )
    click.echo(
        f"{'model':<20} {'protocol':<10} {'users':<5} {'n':>6} {'ndcg':>7} {'recall':>7} "
        f"{'map':>7} {'hit':>7} {'cover':>7} {'novel':>6}"
    )
    for r in data["results"]:
        click.echo(
            f"{r['model']:<20} {r['protocol']:<10} {r['users']:<5} {r['n_users']:>6,} "
            f"{r['ndcg'] or 0:>7.4f} {r['recall'] or 0:>7.4f} {r['map'] or 0:>7.4f} "
            f"{r['hit_rate'] or 0:>7.4f} {r['coverage'] or 0:>7.4f} {r['novelty'] or 0:>6.2f}"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
