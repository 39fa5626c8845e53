"""Jinja2 rendering of campaign messages from ``templates/``, checked when a campaign is loaded.

An e-mail template ``NAME`` is ``templates/email/NAME.html.j2`` plus ``NAME.txt.j2``; a routing
script ``NAME`` is ``templates/routing/NAME.txt.j2`` (or literal text). Templates see:

``user``      ``{"id", "features": {...}}``
``segment``   ``{"id", "name"}`` (the user's segment when the campaign fired)
``items``     recommended items: ``[{"item_id", "name", "price", "score", "reason"}]``
``coupon``    ``{"code", "kind", "value", "expires_at"}`` or ``None``
``campaign``  ``{"name", "description"}``
``trigger``   ``{"kind", "occurrence", "at", "from_segment", "to_segment"}``

Undefined names and attributes are errors (``StrictUndefined``): :func:`check_templates` renders
every template of a campaign against a sample context, so a typo fails at validation, not at
send time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    select_autoescape,
)

from automation.campaigns.spec import CampaignSpec, where
from automation.errors import InputError

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
CONTEXT_NAMES = ("user", "segment", "items", "coupon", "campaign", "trigger")


def environment(root: Path | None = None) -> Environment:
    return Environment(
        loader=FileSystemLoader(str(root or TEMPLATES)),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        keep_trailing_newline=True,
    )


def sample_context(spec: CampaignSpec) -> dict[str, Any]:
    """A context with every field filled, as the checks render against."""
    return {
        "user": {"id": "sample-user", "features": {"recency_days": 12.0, "monetary": 250.0}},
        "segment": {"id": "S1", "name": "Sample segment"},
        "items": [
            {
                "item_id": "I1",
                "name": "Sample item",
                "price": 9.99,
                "score": 1.0,
                "reason": "popular in your segment",
            }
        ],
        "coupon": (
            {"code": "SAMPLE-CODE", "kind": "percent", "value": 10.0, "expires_at": "2030-01-01"}
            if spec.channel.coupon is not None
            else None
        ),
        "campaign": {"name": spec.name, "description": spec.description},
        "trigger": {
            "kind": spec.trigger.kind,
            "occurrence": "sample",
            "at": "2030-01-01T00:00:00+00:00",
            "from_segment": None,
            "to_segment": "S1",
        },
    }


def template_names(spec: CampaignSpec) -> list[str]:
    ch = spec.channel
    if ch.type in ("email", "coupon") and ch.template:
        return [f"email/{ch.template}.html.j2", f"email/{ch.template}.txt.j2"]
    if ch.type == "routing" and ch.script and ch.script.endswith(".j2"):
        return [f"routing/{ch.script}"]
    return []


def _check_source(env: Environment, source: str, where: str, ctx: dict[str, Any]) -> None:
    try:
        unknown = meta.find_undeclared_variables(env.parse(source)) - set(CONTEXT_NAMES)
        if unknown:
            raise InputError(
                f"{where}: unknown variable {', '.join(sorted(unknown))} "
                f"(templates see {', '.join(CONTEXT_NAMES)})"
            )
        env.from_string(source).render(ctx)
    except TemplateSyntaxError as exc:
        raise InputError(f"{where}:{exc.lineno}: template syntax: {exc.message}") from None
    except UndefinedError as exc:
        raise InputError(f"{where}: {exc.message}") from None
    except TemplateError as exc:
        raise InputError(f"{where}: {exc}") from None


def check_templates(
    spec: CampaignSpec,
    source: str,
    root: Path | None = None,
    lines: dict[tuple[Any, ...], int] | None = None,
) -> None:
    """Render every template of ``spec`` against a sample context; raise InputError on a fault.

    ``lines`` (from :func:`~automation.campaigns.spec.field_lines`) puts the campaign file's
    line of the field in the message.
    """
    env = environment(root)
    full = sample_context(spec)
    # Also a user with no recommended items and nothing optional: a template that indexes
    # ``items[0]`` unguarded fails here, not for that user at send time.
    bare = {**full, "items": [], "user": {"id": "sample-user", "features": {}}}
    bare["trigger"] = {**full["trigger"], "from_segment": None}
    base = root or TEMPLATES
    at = lines or {}
    field = "script" if spec.channel.type == "routing" else "template"
    for name in template_names(spec):
        path = base / name
        here = where(source, at, "channel", field)
        try:
            text = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
        except TemplateNotFound:
            raise InputError(f"{here}: no template {path}") from None
        for ctx in (full, bare):
            try:
                _check_source(env, text, str(path), ctx)
            except InputError as exc:
                raise InputError(f"{here}: in {exc}") from None
    for ctx in (full, bare):
        if spec.channel.subject is not None:
            _check_source(env, spec.channel.subject, where(source, at, "channel", "subject"), ctx)
        if spec.channel.script is not None and not spec.channel.script.endswith(".j2"):
            _check_source(env, spec.channel.script, where(source, at, "channel", "script"), ctx)


def render_message(
    spec: CampaignSpec, ctx: dict[str, Any], root: Path | None = None
) -> dict[str, Any]:
    """The channel's rendered content for one user (what a delivery carries)."""
    env = environment(root)
    ch = spec.channel
    if ch.type in ("email", "coupon"):
        return {
            "subject": env.from_string(ch.subject or "").render(ctx).strip(),
            "from": ch.sender,
            "html": env.get_template(f"email/{ch.template}.html.j2").render(ctx),
            "text": env.get_template(f"email/{ch.template}.txt.j2").render(ctx),
        }
    if ch.type == "routing":
        script = ch.script or ""
        if script.endswith(".j2"):
            body = env.get_template(f"routing/{script}").render(ctx)
        else:
            body = env.from_string(script).render(ctx)
        return {"queue": ch.queue, "priority": ch.priority, "script": body.strip()}
    return {}
