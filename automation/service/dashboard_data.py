"""The numbers behind the dashboard, read set-wise from the store (one call per page load)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text

from automation.campaigns import service as campaigns
from automation.features.build import as_utc, ts_param
from automation.store.bulk import read_frame


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def dashboard_data(
    engine: Engine, since: object | None = None, until: object | None = None
) -> dict[str, Any]:
    """Sizes over time, migration flows between two dates, profiles, transitions, alerts,
    campaign results."""
    with engine.connect() as conn:
        sizes = read_frame(
            conn,
            "SELECT g.id AS version, g.as_of, g.kind, s.segment_id, s.name, s.size "
            "FROM segments s JOIN segmentations g ON g.id = s.segmentation_id ORDER BY g.as_of, g.id",
        )
        latest = conn.execute(text("SELECT MAX(as_of) FROM segmentations")).scalar()
        end = as_utc(until) if until else (as_utc(latest) if latest is not None else None)
        start = as_utc(since) if since else (end - pd.Timedelta(days=30) if end else None)
        flows = pd.DataFrame(columns=["from_segment", "to_segment", "n"])
        if start is not None and end is not None:
            flows = read_frame(
                conn,
                "SELECT COALESCE(from_segment, '(new)') AS from_segment, to_segment, "
                "COUNT(*) AS n FROM segment_migrations WHERE at >= :a AND at <= :b "
                "GROUP BY COALESCE(from_segment, '(new)'), to_segment",
                {"a": ts_param(conn, start), "b": ts_param(conn, end)},
            )
        trans = conn.execute(
            text(
                "SELECT version_id, at, type, segments, evidence FROM segment_transitions "
                "ORDER BY at, id"
            )
        ).all()
        current = conn.execute(
            text(
                "SELECT segment_id, name, size, profile FROM segments WHERE segmentation_id = "
                "(SELECT MAX(id) FROM segmentations)"
            )
        ).all()
    names = dict(zip(sizes["segment_id"].astype(str), sizes["name"].astype(str), strict=False))
    series: dict[str, list[list[Any]]] = {}
    stamps = pd.to_datetime(sizes["as_of"], utc=True).map(lambda t: t.isoformat())
    for seg_id, at, size in zip(
        sizes["segment_id"].astype(str), stamps, sizes["size"].astype(int), strict=True
    ):
        series.setdefault(seg_id, []).append([at, int(size)])
    profiles = []
    for seg in current:
        prof = _json(seg.profile) or {}
        profiles.append(
            {"id": seg.segment_id, "name": seg.name, "size": int(seg.size), "profile": prof}
        )
    timeline = [
        {
            "at": pd.Timestamp(t.at).isoformat(),
            "type": t.type,
            "segments": _json(t.segments),
            "version": t.version_id,
        }
        for t in trans
    ]
    alerts = [
        t for t in timeline if t["type"] in ("born", "drifted", "split", "merged", "retired")
    ][-20:]
    results = []
    for c in campaigns.list_campaigns(engine):
        up = campaigns.uplift(engine, c["name"], "30d")["overall"]
        results.append({"name": c["name"], "channel": c["channel"], **up})
    return {
        "names": names,
        "sizes": series,
        "flows": {
            "since": None if start is None else start.isoformat(),
            "until": None if end is None else end.isoformat(),
            "links": [
                {"source": str(f.from_segment), "target": str(f.to_segment), "value": int(f.n)}  # type: ignore[arg-type]
                for f in flows.itertuples(index=False)
                if str(f.from_segment) != str(f.to_segment)
            ],
        },
        "profiles": profiles,
        "transitions": timeline,
        "alerts": alerts,
        "campaigns": results,
    }
