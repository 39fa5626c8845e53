"""The key cache: users and items upserted once per ingest, and never a stale key in ``events``.

A :class:`~automation.ingest.keys.KeyCache` shared across transactions (as the service shares one
across requests) must give the same store as no cache at all: an erased user who comes back gets
a new key, keys learnt in a transaction that rolled back are forgotten, and an item's changed
name, category or price still reaches ``items``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, text

from automation.config import Settings
from automation.ingest.keys import KeyCache
from automation.ingest.mapping import plan_columns, preset_named
from automation.ingest.readers import read_file
from automation.ingest.run import BatchSource, commit_block, prepare_block
from automation.store.db import open_store
from automation.store.erase import erase_user

HEAD = "user_id,type,timestamp,item_id,item_name,category,price,quantity,order_id\n"


def _block(tmp_path: Path, name: str, lines: list[str], binary: bool) -> tuple[object, BatchSource]:
    path = tmp_path / name
    path.write_text(HEAD + "".join(f"{line}\n" for line in lines))
    raw = next(read_file(path))
    plan = plan_columns(list(raw.frame.columns), str(path), preset_named(None), {}, {})
    origin = BatchSource(str(path), None, {}, "csv")
    return prepare_block(raw, plan, origin, Settings(), binary), origin


def _commit(engine: Engine, tmp_path: Path, name: str, lines: list[str], keys: KeyCache) -> int:
    binary = engine.dialect.name == "postgresql"
    block, origin = _block(tmp_path, name, lines, binary)
    return commit_block(engine, block, origin, keys).accepted  # type: ignore[arg-type]


def _orphans(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT COUNT(*) FROM events e WHERE NOT EXISTS "
                    "(SELECT 1 FROM users u WHERE u.id = e.user_key) OR (e.item_key IS NOT NULL "
                    "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.id = e.item_key))"
                )
            ).scalar_one()
        )


def test_cached_keys_skip_known_users_and_items(engine: Engine, tmp_path: Path) -> None:
    keys = KeyCache()
    assert _commit(engine, tmp_path, "a.csv", ["u1,view,1700000000,i1,,c,2.0,,"], keys) == 1
    assert set(keys.users.known) == {"u1"} and set(keys.items.known) == {"i1"}
    # Known user and item, same attributes: nothing needs the database to learn a key.
    sent: list[int] = []
    original = keys.users.keys

    def spy(conn, attrs, marks=None):  # type: ignore[no-untyped-def]
        before = len(keys.users.known)
        out = original(conn, attrs, marks)
        sent.append(len(keys.users.known) - before)
        return out

    keys.users.keys = spy  # type: ignore[method-assign]
    assert _commit(engine, tmp_path, "b.csv", ["u1,cart,1700000100,i1,,c,2.0,,"], keys) == 1
    assert sent == [0]
    assert _orphans(engine) == 0


def test_erased_user_coming_back_gets_a_fresh_key(engine: Engine, tmp_path: Path) -> None:
    keys = KeyCache()
    _commit(engine, tmp_path, "a.csv", ["u1,purchase,1700000000,i1,,c,2.0,1,o1"], keys)
    seen = keys.erasures
    erase_user(engine, "u1")
    assert _commit(engine, tmp_path, "b.csv", ["u1,purchase,1700000500,i1,,c,2.0,1,o2"], keys)
    with engine.connect() as conn:
        new = conn.execute(text("SELECT id FROM users WHERE external_id = 'u1'")).scalar_one()
        stats = conn.execute(text("SELECT user_key, n_events FROM user_stats")).all()
    # SQLite may hand the freed id out again; PostgreSQL's sequence never does: either way the
    # cache was dropped at the erasure and holds the key the store has now.
    assert keys.erasures != seen and keys.users.known["u1"] == new
    assert [tuple(r) for r in stats] == [(new, 1)]
    assert _orphans(engine) == 0


def test_keys_of_a_rolled_back_transaction_are_forgotten(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyCache()
    _commit(engine, tmp_path, "a.csv", ["u1,view,1700000000,i1,,c,2.0,,"], keys)
    import automation.ingest.run as run

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected failure after the keys were learnt")

    monkeypatch.setattr(run, "store_quarantine", fail)
    with pytest.raises(RuntimeError, match="injected"):
        _commit(engine, tmp_path, "b.csv", ["u2,view,1700000100,i2,,c,3.0,,"], keys)
    assert "u2" not in keys.users.known and "i2" not in keys.items.known
    assert "u1" in keys.users.known  # committed before: still true
    monkeypatch.undo()
    assert _commit(engine, tmp_path, "c.csv", ["u2,view,1700000200,i2,,c,3.0,,"], keys) == 1
    assert _orphans(engine) == 0


def test_changed_item_attributes_reach_the_store(engine: Engine, tmp_path: Path) -> None:
    keys = KeyCache()
    _commit(engine, tmp_path, "a.csv", ["u1,view,1700000000,i1,,toys,2.0,,"], keys)
    _commit(engine, tmp_path, "b.csv", ["u1,view,1700000100,i1,Red ball,,2.5,,"], keys)
    _commit(engine, tmp_path, "c.csv", ["u2,view,1700000200,i1,,,,,"], keys)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT name, category, price FROM items")).one()
    assert tuple(row) == ("Red ball", "toys", 2.5)
    with engine.connect() as conn:
        events = pd.read_sql(text("SELECT item_key FROM events"), conn)
    assert events["item_key"].nunique() == 1


def test_a_full_cache_starts_over(engine: Engine, tmp_path: Path) -> None:
    keys = KeyCache(max_keys=3)
    _commit(
        engine,
        tmp_path,
        "a.csv",
        [f"u{i},view,{1700000000 + i},i{i},,c,2.0,," for i in range(3)],
        keys,
    )
    assert len(keys.users.known) == 3  # 6 keys held: more than 3
    _commit(engine, tmp_path, "b.csv", ["u9,view,1700000100,i1,,c,2.0,,"], keys)
    assert set(keys.users.known) == {"u9"} and set(keys.items.known) == {"i1"}
    assert _orphans(engine) == 0


def _user_keys(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT external_id, id FROM users")).all()
    return {str(r[0]): int(r[1]) for r in rows}


def test_new_users_of_a_complete_cache_are_copied_in(engine: Engine, tmp_path: Path) -> None:
    keys = KeyCache()
    order = [3, 0, 4, 1, 2]  # not in id order: the copy sorts them, the keys must follow
    lines = [f"u{i},view,{1700000000 + i},i1,,c,2.0,," for i in order]
    assert _commit(engine, tmp_path, "a.csv", lines, keys) == 5
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT u.external_id, e.ts FROM events e JOIN users u ON u.id = e.user_key")
        ).all()
    # Every event names the user of its line (each user's line has its own time).
    assert {str(u): pd.Timestamp(ts).timestamp() - 1700000000 for u, ts in rows} == {
        f"u{i}": i for i in range(5)
    }
    # Started on an empty table and alone since: complete (the copy path on PostgreSQL).
    assert keys.users.complete
    assert _commit(engine, tmp_path, "b.csv", ["u5,view,1700000100,i1,,c,2.0,,"], keys) == 1
    stored = _user_keys(engine)
    assert keys.users.known == stored and keys.users.top == max(stored.values())
    assert len(set(stored.values())) == 6
    assert _orphans(engine) == 0


def test_a_row_added_behind_the_cache_makes_it_incomplete(engine: Engine, tmp_path: Path) -> None:
    keys = KeyCache()
    _commit(engine, tmp_path, "a.csv", ["u1,view,1700000000,i1,,c,2.0,,"], keys)
    with engine.begin() as conn:  # another writer (another process's ingest)
        conn.execute(text("INSERT INTO users (external_id) VALUES ('u2')"))
    assert _commit(engine, tmp_path, "b.csv", ["u2,view,1700000100,i1,,c,2.0,,"], keys) == 1
    assert not keys.users.complete
    stored = _user_keys(engine)
    assert len(stored) == 2 and keys.users.known == stored
    assert _orphans(engine) == 0


@pytest.mark.postgres
def test_a_unique_violation_falls_back_to_the_upsert(pg_url: str, tmp_path: Path) -> None:
    """A row that exists after all (a writer that broke the rule, mid-transaction) rolls the
    copy back to its savepoint; the upsert then finds the row's key and nothing else is lost."""
    pg_engine = open_store(pg_url)
    keys = KeyCache()
    _commit(pg_engine, tmp_path, "a.csv", ["u1,view,1700000000,i1,,c,2.0,,"], keys)
    with pg_engine.begin() as conn:
        conn.execute(text("INSERT INTO users (external_id) VALUES ('u3')"))
    keys.users.top = max(_user_keys(pg_engine).values())  # the cache believes it saw that row
    lines = ["u2,view,1700000100,i1,,c,2.0,,", "u3,view,1700000200,i1,,c,2.0,,"]
    assert _commit(pg_engine, tmp_path, "b.csv", lines, keys) == 2
    assert not keys.users.complete
    stored = _user_keys(pg_engine)
    assert set(stored) == {"u1", "u2", "u3"} and keys.users.known == stored
    assert _orphans(pg_engine) == 0
    pg_engine.dispose()


def test_a_primed_cache_knows_every_user_and_stays_true(engine: Engine, tmp_path: Path) -> None:
    """A service primes its cache at start: the store's users are known, new ones take the
    copy path, and an erasure after the priming still empties the cache."""
    _commit(engine, tmp_path, "a.csv", ["u1,view,1700000000,i1,,c,2.0,,"], KeyCache())
    keys = KeyCache()
    with engine.connect() as conn:
        assert keys.prime(conn)
    assert keys.users.known == _user_keys(engine) and keys.users.complete
    assert _commit(engine, tmp_path, "b.csv", ["u2,view,1700000100,i1,,c,2.0,,"], keys) == 1
    assert keys.users.complete and keys.users.known == _user_keys(engine)
    erase_user(engine, "u1")
    assert _commit(engine, tmp_path, "c.csv", ["u3,view,1700000200,i1,,c,2.0,,"], keys) == 1
    assert "u1" not in keys.users.known and keys.users.known["u3"] == _user_keys(engine)["u3"]
    assert _orphans(engine) == 0
    with engine.connect() as conn:
        assert not KeyCache(max_keys=3).prime(conn)  # 2 users: more than half of 3
