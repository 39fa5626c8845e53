"""``POST /v1/track`` and ``POST /v1/batch``: Segment-compatible ingest.

Each request's events are validated and stored in one transaction through the same pipeline as
``shoal ingest`` (duplicates by ``messageId`` are skipped by the event-id key); a batch with bad
events stores the good ones and answers with one error per bad event (its index in the batch).
The background loop (or, with a broker, a worker) folds them into the segments within seconds.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pandas.arrays import ArrowStringArray

from automation.ingest.mapping import plan_columns
from automation.ingest.readers import RawBatch, Reject
from automation.ingest.run import BatchSource, prepare_block
from automation.ingest.schema import CANONICAL_FIELDS, NUMERIC_FIELDS
from automation.ingest.segment_spec import flatten_batch
from automation.service.deps import write_access
from automation.service.schemas import ERRORS, BatchIn, EventError, IngestOut, TrackIn
from automation.service.state import ServiceState

MAX_BATCH = 10_000
router = APIRouter(prefix="/v1", tags=["ingest"], responses=ERRORS)


def _raw(messages: list[dict[str, Any]], source: str) -> RawBatch:
    """The batch as a canonical frame: text columns Arrow-backed (validation's string work is
    vectorised), numeric fields as numbers when they are all numbers (else text, as the CSV
    reader gives)."""
    flat = flatten_batch(messages)
    frame = pd.DataFrame(
        {
            name: _column(name, values)
            for name, values in zip(CANONICAL_FIELDS, flat.columns, strict=True)
        },
        copy=False,
    )
    rejects = [Reject(i, code, detail, str(rec)[:2000]) for i, rec, (code, detail) in flat.rejects]
    return RawBatch(source, frame, np.asarray(flat.lines, dtype=np.int64), rejects)


_NUMBERS = {int, float, type(None)}
_TEXTS = {str, type(None)}
_TEXT_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)


def _column(name: str, values: tuple[Any, ...]) -> Any:
    """One column as validation reads it (an array, so the frame is built without aligning)."""
    types = set(map(type, values))
    if name in NUMERIC_FIELDS and types <= _NUMBERS:
        try:
            return pa.array(values, type=pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # an integer beyond float precision: read as text
            pass
    elif types <= _TEXTS:
        text = pa.array(values, pa.string())
        return ArrowStringArray(text, dtype=_TEXT_DTYPE)  # type: ignore[call-arg]  # stubs lag
    return pd.Series(values, dtype=object).astype("str").array


def ingest_messages(state: ServiceState, messages: list[dict[str, Any]]) -> IngestOut:
    source = f"api:{uuid.uuid4().hex[:12]}"
    raw = _raw(messages, source)
    plan = plan_columns(list(CANONICAL_FIELDS), source)
    origin = BatchSource(source, None, {}, "jsonl")
    binary = state.engine.dialect.name == "postgresql"
    block = prepare_block(raw, plan, origin, state.settings, binary)
    report = state.commits.submit(block, origin)
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
    state.ingested()
    return IngestOut(
        received=len(messages),
        accepted=report.accepted,
        duplicates=report.duplicates,
        rejected=report.quarantined,
        errors=errors,
    )


_LONG_NUMBER = re.compile(rb"\d{20}")


def _decode(body: bytes) -> Any:
    """The body's JSON: ``orjson`` (a quarter of ``json``'s CPU on a 2,000-message batch), or
    ``json`` where the two differ: ``orjson`` rejects ``NaN``, ``Infinity`` and lone surrogates
    (``json`` reads them, and validation reports the event) and reads an integer beyond 64 bits
    as a float (an id such as ``userId: 123...`` of 20 digits would change)."""
    if not _LONG_NUMBER.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


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
        body = _decode(await request.body())
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
