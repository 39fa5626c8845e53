"""``shoal recommend``, ``shoal audience`` and ``shoal evaluate``: JSON shapes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from automation.cli import main
from tests.test_recommend_contract import shop_events, shop_items


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def shop_db(db_url: str, tmp_path: Path) -> str:
    """A small shop, ingested and segmented."""
    events = shop_events(n_users=90, seed=3).merge(shop_items(), on="item_id", how="left")
    path = tmp_path / "shop.csv"
    events.rename(columns={"name": "item_name"}).drop(columns=["is_product"]).to_csv(
        path, index=False
    )
    assert run("ingest", str(path), "--db", db_url, "--json").exit_code == 0
    out = run("segment", "--db", db_url, "--k", "2", "--json")
    assert out.exit_code == 0, out.output
    return db_url


def test_recommend_user_json(shop_db: str) -> None:
    out = run("recommend", "u2", "--n", "4", "--db", shop_db, "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert set(data) >= {"user_id", "segment", "items"}
    assert data["user_id"] == "u2" and data["segment"]["id"].startswith("seg-")
    assert len(data["items"]) == 4
    for it in data["items"]:
        assert set(it) >= {"item_id", "name", "price", "score", "reason"}


def test_recommend_unknown_user_is_cold_start(shop_db: str) -> None:
    out = run("recommend", "new-visitor", "--n", "3", "--db", shop_db, "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["segment"]["provisional"] is True and data["history"]["known"] is False
    assert len(data["items"]) == 3


def test_recommend_segment_and_text_output(shop_db: str) -> None:
    out = run("recommend", "--segment", "seg-1", "--n", "3", "--db", shop_db, "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["segment"]["id"] == "seg-1" and len(data["items"]) == 3
    text = run("recommend", "u1", "--n", "2", "--db", shop_db)
    assert text.exit_code == 0 and "segment" in text.output and " 2. " in text.output


def test_audience_json(shop_db: str) -> None:
    out = run("audience", "l2", "--n", "5", "--db", shop_db, "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["item_id"] == "l2" and data["name"]
    assert 0 < len(data["users"]) <= 5
    assert set(data["users"][0]) == {"user_id", "segment", "score"}


def test_errors_are_one_line(shop_db: str) -> None:
    out = run("recommend", "--segment", "seg-99", "--db", shop_db, "--json")
    assert out.exit_code == 1
    err = json.loads(out.output)
    assert err["error"] == "not_found" and "seg-99" in err["message"]
    out = run("audience", "nope", "--db", shop_db)
    assert out.exit_code == 1 and out.output.count("\n") == 1
    assert out.output.startswith("shoal: error: no item 'nope'")
    out = run("recommend", "u1", "--model", "hybrid", "--n", "0", "--db", shop_db)
    assert out.exit_code == 2  # a usage error
    out = run("evaluate", "--split-at", "someday", "--db", shop_db, "--json")
    assert out.exit_code == 1 and json.loads(out.output)["error"] == "invalid_parameter"
    usage = run("recommend", "--db", shop_db)
    assert usage.exit_code == 2


def test_empty_store_errors(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    out = run("recommend", "u1", "--db", db)
    assert out.exit_code == 1 and out.output.startswith("shoal: error: ")
    out = run("evaluate", "--split-at", "2024-01-01", "--db", db, "--json")
    assert json.loads(out.output)["error"] == "empty_store"


def test_evaluate_json_shape(shop_db: str) -> None:
    out = run(
        "evaluate",
        "--split-at",
        "2024-02-15",
        "--k",
        "5",
        "--models",
        "popularity,als",
        "--val-days",
        "14",
        "--segment-k",
        "2",
        "--db",
        shop_db,
        "--json",
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["k"] == 5 and data["split_at"].startswith("2024-02-15")
    assert len(data["results"]) == 2 * 2 * 2
    row = data["results"][0]
    assert set(row) == {
        "model",
        "protocol",
        "users",
        "n_users",
        "ndcg",
        "recall",
        "map",
        "hit_rate",
        "coverage",
        "novelty",
    }
    assert {r["protocol"] for r in data["results"]} == {"repeat", "new-items"}
    assert {r["users"] for r in data["results"]} == {"all", "cold"}
