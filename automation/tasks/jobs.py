"""Shoal's background tasks: ingest, incremental update, drift check, refit.

=====================  ===============================================================
``shoal.ingest``       ``(paths, preset=None, maps=(), sets=())``: ingest files the worker
                       can read (absolute paths); idempotent by event ids.
``shoal.update``       ``()``: fold every pending ingest batch into the segmentation;
                       enqueues ``shoal.refit`` at once when drift passes its bound.
``shoal.drift_check``  ``()``: measure drift; enqueues ``shoal.refit`` at once when needed.
``shoal.refit``        ``(method="kmeans", k="auto", seed=0)``: the full refit.
``shoal.campaigns``    ``()``: decide the campaigns' new trigger occurrences (enqueued
                       after every update or refit that moved someone); then enqueues
                       ``shoal.dispatch`` when it queued deliveries.
``shoal.dispatch``     ``(limit=1000)``: send due deliveries from the outbox.
=====================  ===============================================================

Delivery is at least once (late acknowledgement); effects are exactly once: ``update`` and
``refit`` pass their task id as ``task_key``, recorded in ``task_runs`` in the same transaction
as their effects, and a message delivered again (same task id) or retried changes nothing twice.
A refit enqueued by ``update`` or ``drift_check`` gets the id ``drift-refit-<base version>``
(see :func:`drift_refit`), so however many updates and drift checks see the same drift, one
refit runs. ``ingest`` is idempotent by event ids and records its run too (a message
delivered again after it finished reads no file). Transient failures (database or broker
connection, deadlock, serialisation failure) are retried with exponential backoff, at most five
times; domain errors (:class:`~automation.errors.ShoalError`) never are. Every task returns a
JSON-safe dict with ``task_id`` and ``status`` (``done``, ``already_done``, ``nothing_pending``
or ``skipped`` when there is no segmentation yet).

Each process opens one engine per database URL on first use (:mod:`automation.tasks.runtime`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from automation.errors import EmptyStoreError, ShoalError
from automation.tasks.runtime import (
    TRANSIENT,
    engine_for,
    json_safe,
    record_run,
    recorded_result,
    transient_errors,
)

if TYPE_CHECKING:
    from automation.tasks.celery_app import ShoalCelery

INGEST = "shoal.ingest"
UPDATE = "shoal.update"
DRIFT_CHECK = "shoal.drift_check"
REFIT = "shoal.refit"
CAMPAIGNS = "shoal.campaigns"
DISPATCH = "shoal.dispatch"
TASK_NAMES = (INGEST, UPDATE, DRIFT_CHECK, REFIT, CAMPAIGNS, DISPATCH)

log = logging.getLogger("shoal.tasks")


def enqueue(
    app: ShoalCelery,
    name: str,
    kwargs: Mapping[str, Any] | None = None,
    task_id: str | None = None,
    expires: float | None = None,
) -> str:
    """Send task ``name`` (in-process at once when there is no broker); returns its id."""
    result = app.tasks[name].apply_async(
        kwargs=dict(kwargs or {}), task_id=task_id, expires=expires
    )
    if app.eager and result.failed():  # in-process: nobody else will see the failure
        err = result.result
        if isinstance(err, ShoalError):
            log.warning("%s[%s]: %s", name, result.id, err)
        else:
            log.error("%s[%s] failed: %r\n%s", name, result.id, err, result.traceback or "")
    return str(result.id)


def drift_refit(engine: Engine, version: int) -> tuple[str, dict[str, Any]]:
    """The refit that drift found since the refit ``version`` descends from: one task id per
    base refit, so every trigger (each update and drift check that sees it) enqueues the same
    refit, which runs once. It repeats the base's method and seed; K is chosen again unless
    the base fixed it."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT b.id, b.method, b.k, b.seed, b.k_selection FROM segmentations v "
                "JOIN segmentations b ON b.id = COALESCE(v.base_id, v.id) WHERE v.id = :v"
            ),
            {"v": version},
        ).one()
    k: str | int = "auto" if row.k_selection is not None or row.method == "hdbscan" else row.k
    kwargs = {"method": row.method, "k": k, "seed": int(row.seed or 0)}
    return f"drift-refit-{row.id}", kwargs


def _key(request: Any) -> str:
    return str(request.id or uuid.uuid4())


def register_tasks(app: ShoalCelery) -> None:
    """Register the four tasks on ``app``; they open the store at ``app.settings``."""
    options: dict[str, Any] = {
        "bind": True,
        "shared": False,  # each app keeps its own tasks (bound to its settings)
        "autoretry_for": TRANSIENT,
        "dont_autoretry_for": (ShoalError,),
        "retry_backoff": True,
        "retry_backoff_max": 300,
        "retry_jitter": True,
        "max_retries": 5,
    }

    def engine() -> Engine:
        return engine_for(app.settings.database_url)

    def follow_up_refit(eng: Engine, version: int) -> str:
        task_id, kwargs = drift_refit(eng, version)
        return enqueue(app, REFIT, kwargs, task_id=task_id)

    @app.task(name=INGEST, **options)
    def ingest(
        self: Any,
        paths: Sequence[str],
        preset: str | None = None,
        maps: Sequence[str] = (),
        sets: Sequence[str] = (),
    ) -> dict[str, Any]:
        from automation import api

        key = _key(self.request)
        with transient_errors():
            eng = engine()
            done = recorded_result(eng, key)
            if done is not None:
                return {**done, "status": "already_done"}
            report = api.ingest(
                eng, list(paths), preset, list(maps), list(sets), settings=app.settings
            )
            data = json_safe({"task_id": key, "status": "done", **report.to_dict()})
            record_run(eng, key, "ingest", data)
        return dict(data)

    @app.task(name=UPDATE, **options)
    def update(self: Any) -> dict[str, Any]:
        from automation.segments.update import run_update

        key = _key(self.request)
        with transient_errors():
            eng = engine()
            done = recorded_result(eng, key)
            if done is not None:
                data: dict[str, Any] = {**done, "status": "already_done"}
            else:
                try:
                    result = run_update(eng, app.settings, task_key=key)
                except EmptyStoreError as err:
                    return {"task_id": key, "status": "skipped", "reason": str(err)}
                if result is not None:
                    data = {**result.to_dict(), "status": "done"}
                else:  # nothing pending (recorded as version None), or done meanwhile
                    done = recorded_result(eng, key) or {}
                    status = "already_done" if done.get("version") else "nothing_pending"
                    data = {**done, "status": status}
            data["task_id"] = key
            if data.get("refit_recommended") and data.get("version"):
                data["refit_task_id"] = follow_up_refit(eng, int(data["version"]))
            if data.get("status") == "done" and data.get("migrations"):
                data["campaigns_task_id"] = enqueue(app, CAMPAIGNS)
        return dict(json_safe(data))

    @app.task(name=DRIFT_CHECK, **options)
    def drift_check(self: Any) -> dict[str, Any]:
        from automation.segments.update import check_drift

        key = _key(self.request)
        with transient_errors():
            eng = engine()
            try:
                report = check_drift(eng)
            except EmptyStoreError as err:
                return {"task_id": key, "status": "skipped", "reason": str(err)}
            data: dict[str, Any] = {"task_id": key, "status": "done", **report.to_dict()}
            if report.refit_needed:
                data["refit_task_id"] = follow_up_refit(eng, report.since_version)
        return dict(json_safe(data))

    @app.task(name=REFIT, **options)
    def refit(
        self: Any, method: str = "kmeans", k: str | int = "auto", seed: int = 0
    ) -> dict[str, Any]:
        from automation.segments.pipeline import run_segmentation

        key = _key(self.request)
        with transient_errors():
            eng = engine()
            # Fast path for a message delivered again after its refit committed; the refit
            # checks the key again under its lock, which is what makes it exactly once.
            done = recorded_result(eng, key)
            if done is not None:
                return dict(json_safe({**done, "task_id": key, "status": "already_done"}))
            result = run_segmentation(eng, method, k, None, seed, None, task_key=key)
        data = {**result.to_dict(), "task_id": key, "status": "done"}
        data.pop("k_selection", None)
        data["campaigns_task_id"] = enqueue(app, CAMPAIGNS)
        return dict(json_safe(data))

    @app.task(name=CAMPAIGNS, **options)
    def campaigns(self: Any) -> dict[str, Any]:
        """Idempotent without a task record: decisions are unique per occurrence."""
        from automation.campaigns import service

        key = _key(self.request)
        with transient_errors():
            eng = engine()
            try:
                report = service.run(eng)
            except EmptyStoreError as err:
                return {"task_id": key, "status": "skipped", "reason": str(err)}
            data: dict[str, Any] = {"task_id": key, "status": "done", **report.to_dict(limit=0)}
            if any(c["queued"] for c in report.campaigns):
                data["dispatch_task_id"] = enqueue(app, DISPATCH)
        return dict(json_safe(data))

    @app.task(name=DISPATCH, **options)
    def dispatch(self: Any, limit: int = 1000) -> dict[str, Any]:
        """Each delivery is marked sent in the transaction holding its row lock."""
        from automation.campaigns.dispatch import dispatch as send_due

        key = _key(self.request)
        with transient_errors():
            report = send_due(engine(), app.settings, limit)
        return dict(json_safe({"task_id": key, "status": "done", **report.to_dict()}))
