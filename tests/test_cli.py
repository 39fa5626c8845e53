"""The command line: JSON output shapes, one-line errors, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from automation.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def shop_csv(tmp_path: Path) -> Path:
    """A small shop with three behaviours, enough to segment."""
    rng = np.random.default_rng(0)
    rows = []
    start = pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(150):
        kind = u % 3
        n_orders = [1, 6, 2][kind]
        last_day = [10, 88, 40][kind]
        for o in range(n_orders):
            day = max(0, last_day - o * 7 - int(rng.integers(0, 3)))
            for line in range(1 + kind):
                price = [5.0, 40.0, 12.0][kind] * (1 + 0.1 * rng.standard_normal())
                rows.append(
                    {
                        "user_id": f"u{u}",
                        "type": "purchase",
                        "timestamp": (start + pd.Timedelta(days=day, hours=line)).isoformat(),
                        "item_id": f"i{(u + line) % 20}",
                        "quantity": 1 + line,
                        "price": round(abs(price), 2),
                        "order_id": f"o{u}-{o}",
                    }
                )
    path = tmp_path / "shop.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_ingest_segment_and_reads_as_json(shop_csv: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    out = run("ingest", str(shop_csv), "--db", db, "--json")
    assert out.exit_code == 0, out.output
    counts = json.loads(out.output)
    assert {"read", "accepted", "duplicates", "quarantined"} <= set(counts)
    assert counts["read"] == counts["accepted"] > 0

    out = run("segment", "--db", db, "--k", "3", "--json")
    assert out.exit_code == 0, out.output
    seg = json.loads(out.output)
    assert {"version", "method", "k", "as_of", "quality", "segments"} <= set(seg)
    assert set(seg["quality"]) == {
        "silhouette",
        "davies_bouldin",
        "calinski_harabasz",
        "stability_ari",
    }
    assert seg["k"] == 3 and seg["method"] == "kmeans"
    for s in seg["segments"]:
        assert {"id", "name", "size", "share", "profile"} <= set(s)

    listed = json.loads(run("segments", "--db", db, "--json").output)
    assert [s["id"] for s in listed["segments"]] == [s["id"] for s in seg["segments"]]
    plain = run("segments", "--db", db)
    assert plain.exit_code == 0 and "silhouette" in plain.output

    who = json.loads(run("user", "u1", "--db", db, "--json").output)
    assert who["user_id"] == "u1" and who["segment"]["id"].startswith("seg-")
    assert run("user", "u1", "--db", db).exit_code == 0

    target = tmp_path / "assign.csv"
    out = run("assignments", "--db", db, "--out", str(target), "--json")
    assert out.exit_code == 0, out.output
    frame = pd.read_csv(target)
    assert list(frame.columns[:3]) == ["user_id", "segment_id", "segment_name"]
    assert len(frame) == 150

    q = json.loads(run("quarantine", "--db", db, "--json").output)
    assert q["total"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "missing.csv"], "missing.csv: no such file"),
        (["ingest", "{csv}", "--preset", "nope"], "unknown preset 'nope'"),
        (["ingest", "{csv}", "--map", "user_id=Nobody"], "no column 'Nobody'"),
        (["ingest", "{empty}"], "file is empty"),
        (["segment"], "no events yet"),
        (["segments"], "no segmentation yet"),
        (["user", "ghost"], "no user 'ghost'"),
        (["segment", "--k", "1"], "k=1 should be >= 2"),
        (["assignments", "--out", "x.xlsx"], "use a .csv or .parquet"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(
    args: list[str], message: str, shop_csv: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    argv = [a.format(csv=shop_csv, empty=empty) for a in args]
    db = ["--db", f"sqlite:///{tmp_path / 'e.db'}"]
    result = CliRunner().invoke(main, argv + db)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("shoal: error: ")
    assert message in lines[0]
    as_json = CliRunner().invoke(main, [*argv, *db, "--json"])
    assert as_json.exit_code == 1
    err = json.loads(as_json.output)
    assert set(err) == {"error", "message"} and message in err["message"]


def test_usage_errors_exit_2() -> None:
    assert CliRunner().invoke(main, ["segment", "--method", "magic"]).exit_code == 2
    assert CliRunner().invoke(main, ["ingest"]).exit_code == 2


def test_demo_on_the_bundled_data(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    out = run("demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}", "--report", str(report))
    assert out.exit_code == 0, out.output
    assert "read 541,909 lines" in out.output
    assert "silhouette" in out.output and "seg-1" in out.output
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "Choosing the number of segments" in html


def test_simulate_writes_events_and_truth(tmp_path: Path) -> None:
    out = run(
        "simulate",
        "--users",
        "500",
        "--days",
        "20",
        "--scenario",
        "churn",
        "--out",
        str(tmp_path / "sim"),
        "--json",
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["events"] > 0 and summary["scenarios"][0]["name"] == "churn"
    truth = pd.read_csv(summary["files"]["truth"])
    assert {"user_id", "day", "persona"} <= set(truth.columns)
    db = f"sqlite:///{tmp_path / 's.db'}"
    ing = json.loads(run("ingest", summary["files"]["events"], "--db", db, "--json").output)
    assert ing["accepted"] == summary["events"] and ing["quarantined"] == 0
