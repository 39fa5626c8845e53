"""``POST /v1/track`` and ``POST /v1/batch``: Segment-compatible ingest.

Each request's events are validated and stored in one transaction through the same pipeline as
``shoal ingest`` (duplicates by ``messageId`` are skipped by the event-id key); a batch with bad
events stores the good ones and answers with one error per bad event (its index in the batch).
The background loop (or, with a broker, a worker) folds them into the segments within seconds.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from automation.ingest.mapping import plan_columns
from automation.ingest.readers import RawBatch, Reject
from automation.ingest.run import BatchSource, commit_block, prepare_block
from automation.ingest.schema import CANONICAL_FIELDS
from automation.ingest.segment_spec import flatten_message
from automation.service.deps import write_access
from automation.service.schemas import ERRORS, BatchIn, EventError, IngestOut, TrackIn
from automation.service.state import ServiceState

MAX_BATCH = 10_000
router = APIRouter(prefix="/v1", tags=["ingest"], responses=ERRORS)


def _raw(messages: list[dict[str, Any]], source: str) -> RawBatch:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    for i, msg in enumerate(messages, start=1):
        msg = {"type": "track", **msg}
        for rec, reason in flatten_message(msg):
            if reason is not None:
                rejects.append(Reject(i, reason[0], reason[1], str(rec)[:2000]))
            else:
                rows.append(rec)
                lines.append(i)
    frame = pd.DataFrame.from_records(rows, columns=list(CANONICAL_FIELDS)) if rows else None
    if frame is None:
        frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in CANONICAL_FIELDS})
    # Arrow-backed text columns, as the CSV reader gives: validation's string work is vectorised.
    frame = frame.astype("str")
    return RawBatch(source, frame, np.asarray(lines, dtype=np.int64), rejects)


def ingest_messages(state: ServiceState, messages: list[dict[str, Any]]) -> IngestOut:
    source = f"api:{uuid.uuid4().hex[:12]}"
    raw = _raw(messages, source)
    plan = plan_columns(list(CANONICAL_FIELDS), source)
    origin = BatchSource(source, None, {}, "jsonl")
    binary = state.engine.dialect.name == "postgresql"
    block = prepare_block(raw, plan, origin, state.settings, binary)
    report = commit_block(state.engine, block, origin)
    q = block.quarantine
    errors = sorted(
        (
            EventError(index=int(line) - 1, error=str(reason), message=str(detail))
            for line, reason, detail in zip(q["line"], q["reason"], q["detail"], strict=True)
            if not pd.isna(line)
        ),
        key=lambda e: e.index,
    )
    state.metrics.events.labels("accepted").inc(report.accepted)
    state.metrics.events.labels("duplicate").inc(report.duplicates)
    state.metrics.events.labels("rejected").inc(report.quarantined)
    _notify(state)
    return IngestOut(
        received=len(messages),
        accepted=report.accepted,
        duplicates=report.duplicates,
        rejected=report.quarantined,
        errors=errors,
    )


def _notify(state: ServiceState) -> None:
    """Wake the background loop; with a broker, also enqueue the workers' update."""
    state.last_ingest = time.monotonic()
    state.wake.set()
    state.enqueue_update()


@router.post("/track", response_model=IngestOut)
def track(body: TrackIn, state: ServiceState = Depends(write_access)) -> IngestOut:
    """One Segment ``track`` message."""
    return ingest_messages(state, [body.model_dump(exclude_none=True)])


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": BatchIn.model_json_schema()}},
    }
}


@router.post("/batch", response_model=IngestOut, openapi_extra=_BATCH_BODY)
async def batch(request: Request, state: ServiceState = Depends(write_access)) -> IngestOut:
    """A Segment ``batch`` payload; the good events are stored, the bad ones listed.

    The body is decoded with ``json.loads`` and its shape checked here (an object whose
    ``batch`` is a list of at most 10,000 objects): generic model validation of thousands of
    free-form messages cost more than the ingest itself. Each message is then validated as an
    event, and a bad one is reported, not fatal.
    """
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"not valid JSON: {exc}", "type": "json_invalid"}]
        ) from None
    messages = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RequestValidationError(
            [{"loc": ("body", "batch"), "msg": "a list of message objects", "type": "list_type"}]
        )
    if len(messages) > MAX_BATCH:
        raise RequestValidationError(
            [{"loc": ("body", "batch"), "msg": f"at most {MAX_BATCH} messages", "type": "too_long"}]
        )
    return await run_in_threadpool(ingest_messages, state, messages)
