"""The Celery application: ``make_celery(settings)`` builds it, nothing is opened at import.

With ``SHOAL_BROKER_URL`` set, tasks go through the broker to ``shoal worker`` processes and are
acknowledged only after they finish (``acks_late``), so a worker killed mid-task leaves its
message to be delivered again; the tasks are idempotent by their task id (see
:mod:`automation.tasks.jobs`). Without a broker the same tasks run in-process
(``task_always_eager``), which is the embedded default.

Environment (read when the app is made, never at import):

``SHOAL_BROKER_URL``
    Broker URL (``redis://host:6379/0``, ``amqp://...``). Empty: tasks run in-process.
``SHOAL_RESULT_BACKEND``
    Where task results are kept; default the broker URL for a Redis broker, ``rpc://``
    otherwise; ``off`` disables results.
``SHOAL_QUEUE``
    Name of the queue tasks are sent to and workers consume (default ``shoal``).
``SHOAL_VISIBILITY_TIMEOUT``
    Seconds a Redis (or SQS) broker waits for an unacknowledged message before it delivers it
    again (default 3600). It must exceed the longest task (a large refit), or a running task is
    delivered a second time (harmlessly: the duplicate finds its task id done).

``celery -A automation.tasks.celery_app worker`` works as well as ``shoal worker``: the module
attribute ``app`` is made on first access (from the environment) and cached.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery

from automation.config import Settings
from automation.errors import ConfigError

DEFAULT_QUEUE = "shoal"
DEFAULT_VISIBILITY_TIMEOUT = 3600


@dataclass(frozen=True)
class TaskSettings:
    """What the task layer reads from the environment beyond :class:`Settings`."""

    queue: str = DEFAULT_QUEUE
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    result_backend: str | None = None

    @classmethod
    def from_env(cls, broker_url: str, env: Mapping[str, str] | None = None) -> TaskSettings:
        e = os.environ if env is None else env
        queue = (e.get("SHOAL_QUEUE") or DEFAULT_QUEUE).strip()
        raw = (e.get("SHOAL_VISIBILITY_TIMEOUT") or "").strip()
        try:
            timeout = int(raw) if raw else DEFAULT_VISIBILITY_TIMEOUT
        except ValueError:
            raise ConfigError(f"SHOAL_VISIBILITY_TIMEOUT={raw!r} should be seconds") from None
        if timeout < 1:
            raise ConfigError(f"SHOAL_VISIBILITY_TIMEOUT={raw!r} should be at least 1 second")
        backend = (e.get("SHOAL_RESULT_BACKEND") or "").strip()
        if not backend:
            backend = broker_url if broker_url.startswith(("redis://", "rediss://")) else "rpc://"
        if backend.lower() in ("off", "none", "disabled") or not broker_url:
            backend = ""
        return cls(queue=queue, visibility_timeout=timeout, result_backend=backend or None)


class ShoalCelery(Celery):  # Celery ships no type information: a subclass of Any
    """A Celery app that carries the :class:`Settings` its tasks open the store with."""

    settings: Settings
    task_settings: TaskSettings

    @property
    def eager(self) -> bool:
        """True when there is no broker and tasks run in the calling process."""
        return bool(self.conf.task_always_eager)


def celery_config(settings: Settings, ts: TaskSettings) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (exposed for tests and documentation)."""
    conf: dict[str, Any] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_default_queue": ts.queue,
        "task_default_exchange": ts.queue,
        "task_default_routing_key": ts.queue,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": True,
    }
    if not settings.broker_url:
        conf.update(
            task_always_eager=True,
            # Errors stay in the EagerResult (``.get()`` raises them): propagating at once
            # would turn an eager retry into a raised ``Retry`` instead of running it again.
            task_eager_propagates=False,
            task_store_eager_result=False,
            broker_url="memory://localhost/",  # never used: tasks run eagerly
        )
        return conf
    vt = ts.visibility_timeout
    conf.update(
        broker_url=settings.broker_url,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A task whose broker connection dropped cannot be acknowledged any more: stop it and
        # let the message be delivered again (the tasks are idempotent).
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={
            "visibility_timeout": vt,
            # Sweep for messages of dead workers about five times per visibility timeout.
            "unacked_restore_interval": max(1, min(10, vt // 5)),
            "unacked_restore_throttle": max(1, min(10, vt // 60)),
        },
        result_backend=ts.result_backend,
        result_expires=86_400,
        result_backend_transport_options={"visibility_timeout": vt},
        task_ignore_result=ts.result_backend is None,
        worker_send_task_events=False,
    )
    return conf


def make_celery(settings: Settings, env: Mapping[str, str] | None = None) -> ShoalCelery:
    """A Celery app for ``settings`` with Shoal's tasks registered (opens no connection)."""
    from automation.tasks.jobs import register_tasks

    ts = TaskSettings.from_env(settings.broker_url, env)
    app = ShoalCelery("shoal", set_as_current=False)
    app.settings = settings
    app.task_settings = ts
    app.conf.update(celery_config(settings, ts))
    register_tasks(app)
    return app


@functools.cache
def default_app() -> ShoalCelery:
    """The app of this process, from the environment (made on first use, then cached)."""
    return make_celery(Settings.from_env())


def __getattr__(name: str) -> Any:
    # ``celery -A automation.tasks.celery_app`` looks up ``app`` (or ``celery``): build it then.
    if name in ("app", "celery"):
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
