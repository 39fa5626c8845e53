"""Fitted recommenders kept in the store, so answers do not wait for a refit.

``current_model(engine)`` returns the stored model when it reflects the store (same newest ingest
batch and segmentation version). When only new events arrived since (same segmentation), it
folds the touched users' histories in without a refit (``Recommender.update_users``: their
purchases, profiles and, for ALS, factors are recomputed) and stores the result; when the
segmentation changed, or nothing is stored yet, it fits from the store and stores that. The model
is written as the ``.npz`` arrays of ``Recommender.save`` (no pickles).
"""

from __future__ import annotations

import io
from typing import Any

from sqlalchemy import Connection, Engine, text

from automation.recommend.base import Recommender

Mark = tuple[int, int, int]  # (newest finished ingest batch, newest version, erasures)


def store_mark(conn: Connection) -> Mark:
    """What a model reflects: the newest ingest batch and segmentation version, and how many
    erasures happened (a model fitted before an erasure still holds the erased user)."""
    batch = conn.execute(
        text("SELECT COALESCE(MAX(id), 0) FROM ingest_batches WHERE finished_at IS NOT NULL")
    ).scalar()
    version = conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM segmentations")).scalar()
    erased = conn.execute(text("SELECT count FROM locks WHERE name = 'erasure'")).scalar()
    return int(batch or 0), int(version or 0), int(erased or 0)


def save_model(engine: Engine, name: str, model: Recommender, mark: Mark) -> None:
    buf = io.BytesIO()
    model.save(buf)  # type: ignore[arg-type]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM recommender_models WHERE name = :n"), {"n": name})
        conn.execute(
            text(
                "INSERT INTO recommender_models (name, batch_id, version_id, erasures, data) "
                "VALUES (:n, :b, :v, :e, :d)"
            ),
            {"n": name, "b": mark[0], "v": mark[1], "e": mark[2], "d": buf.getvalue()},
        )


def load_model(engine: Engine, name: str) -> tuple[Recommender, Mark] | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT batch_id, version_id, erasures, data FROM recommender_models "
                "WHERE name = :n"
            ),
            {"n": name},
        ).first()
    if row is None:
        return None
    model = Recommender.load(io.BytesIO(bytes(row.data)))  # type: ignore[arg-type]
    return model, (int(row.batch_id), int(row.version_id), int(row.erasures))


def _touched_users(conn: Connection, after_batch: int) -> list[str]:
    rows = conn.execute(
        text(
            "SELECT DISTINCT u.external_id FROM batch_users b JOIN users u ON u.id = b.user_key "
            "WHERE b.batch_id > :b"
        ),
        {"b": after_batch},
    ).all()
    return [str(r[0]) for r in rows]


def current_model(engine: Engine, name: str = "hybrid", **params: Any) -> tuple[Recommender, Mark]:
    """The model for the store as it is now; see the module docstring."""
    from automation.recommend.service import fit_from_store
    from automation.recommend.store import current_segments, load_interactions

    with engine.connect() as conn:
        mark = store_mark(conn)
    stored = load_model(engine, name) if not params else None
    if stored is not None and stored[1] == mark:
        return stored
    same = stored is not None and stored[1][1:] == mark[1:]  # same segmentation, no erasure
    if stored is not None and same and stored[1][0] < mark[0]:
        model, old = stored
        with engine.connect() as conn:
            users = _touched_users(conn, old[0])
        if users:
            inter = load_interactions(engine, segments=current_segments(engine), user_ids=users)
            model.update_users(inter)
        save_model(engine, name, model, mark)
        return model, mark
    model, _ = fit_from_store(engine, name, **params)
    if not params:
        save_model(engine, name, model, mark)
    return model, mark
