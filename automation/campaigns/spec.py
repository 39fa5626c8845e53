"""Campaign files: YAML a marketer reads and writes, validated with the file, line and field.

A campaign names one trigger, optional conditions on the user's features, limits (cooldown,
frequency cap, quiet hours), a holdout share, a priority and one channel. Example::

    name: winback-loyal
    trigger: {entered: "High-value loyal"}
    conditions: [{feature: recency_days, op: ">", value: 30}]
    holdout: 0.1
    priority: 10
    limits: {cooldown: 7d, frequency_cap: {max: 2, per: 30d}}
    channel:
      type: email
      template: winback
      subject: "{{ segment.name }}: picked for you"
      recommendations: 4

Errors are :class:`~automation.errors.InputError` with ``FILE:LINE: field: message``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from automation.errors import InputError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
OPS = {">", ">=", "<", "<=", "==", "!="}
CHANNELS = ("email", "coupon", "routing", "webhook", "export")
SEGMENT_EVENTS = ("born", "retired", "split", "merged", "drifted")


def duration(value: str) -> pd.Timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"2w"`` as a timedelta."""
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration like 30m, 12h, 7d or 2w")
    return pd.Timedelta(seconds=float(m.group(1)) * _SECONDS[m.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Condition(_Strict):
    feature: str
    op: str
    value: float

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        if v not in OPS:
            raise ValueError(f"op {v!r} should be one of {', '.join(sorted(OPS))}")
        return v


class Migrated(_Strict):
    from_: str = Field(alias="from")
    to: str


class FeatureTrigger(_Strict):
    segment: str | None = None
    feature: str
    op: str
    value: float

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        return Condition._op(v)


class Schedule(_Strict):
    cron: str
    segment: str | None = None
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _zone(v)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from automation.tasks.cron import crontab_trigger

        try:
            crontab_trigger(v)
        except (ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"cron {v!r} is not a crontab expression: {exc}") from None
        return v


def _zone(v: str) -> str:
    try:
        pd.Timestamp("2024-01-01").tz_localize(v)
    except Exception:  # noqa: BLE001 - pytz and zoneinfo raise different types
        raise ValueError(f"unknown time zone {v!r}") from None
    return v


class SegmentEvent(_Strict):
    type: Literal["born", "retired", "split", "merged", "drifted"]
    segment: str | None = None


class Trigger(_Strict):
    entered: str | None = None
    exited: str | None = None
    migrated: Migrated | None = None
    segment_event: SegmentEvent | None = None
    feature: FeatureTrigger | None = None
    schedule: Schedule | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            names = ", ".join(type(self).model_fields)
            raise ValueError(f"give exactly one of {names} (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)


class FrequencyCap(_Strict):
    max: int = Field(ge=1)
    per: str

    @field_validator("per")
    @classmethod
    def _per(cls, v: str) -> str:
        duration(v)
        return v


class QuietHours(_Strict):
    start: str
    end: str
    timezone: str = "UTC"

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
            raise ValueError(f"{v!r} is not a time like 21:00")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _zone(v)


class Limits(_Strict):
    cooldown: str | None = None
    frequency_cap: FrequencyCap | None = None
    quiet_hours: QuietHours | None = None

    @field_validator("cooldown")
    @classmethod
    def _cooldown(cls, v: str | None) -> str | None:
        if v is not None:
            duration(v)
        return v


class CouponSpec(_Strict):
    kind: Literal["percent", "amount"] = "percent"
    value: float = Field(gt=0)
    expires_in: str = "14d"
    usage_limit: int = Field(default=1, ge=1)

    @field_validator("expires_in")
    @classmethod
    def _expires(cls, v: str) -> str:
        duration(v)
        return v


class Channel(_Strict):
    type: Literal["email", "coupon", "routing", "webhook", "export"]
    template: str | None = None
    subject: str | None = None
    sender: str = Field(default="Shoal <shop@example.com>", alias="from")
    recommendations: int = Field(default=4, ge=0, le=50)
    coupon: CouponSpec | None = None
    queue: str | None = None
    priority: int = Field(default=3, ge=1, le=5)
    script: str | None = None
    url: str | None = None
    secret_env: str = "SHOAL_WEBHOOK_SECRET"
    path: str | None = None
    format: Literal["csv", "parquet"] = "csv"

    @model_validator(mode="after")
    def _needs(self) -> Channel:
        need = {
            "email": ("template", "subject"),
            "coupon": ("template", "subject", "coupon"),
            "routing": ("queue",),
            "webhook": ("url",),
            "export": ("path",),
        }[self.type]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.type} channel needs {', '.join(missing)}")
        if self.type == "export" and self.format == "csv" and not str(self.path).endswith(".csv"):
            raise ValueError(f"path {self.path!r}: a CSV export is a file ending in .csv")
        return self


class CampaignSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$")
    description: str = ""
    active: bool = True
    trigger: Trigger
    conditions: list[Condition] = []
    priority: int = 0
    holdout: float = Field(default=0.1, ge=0.0, le=0.9)
    limits: Limits = Limits()
    channel: Channel

    def digest(self) -> str:
        body = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()


# ----------------------------------------------------------------------------- YAML loading
def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            out[(*path, k)] = key.start_mark.line + 1
            _lines(value, (*path, k), out)
            out[(*path, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


def _line_of(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return 1


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    return ".".join(parts) or "(file)"


def parse_campaign(text: str, source: str = "<campaign>") -> CampaignSpec:
    """Parse and validate one campaign document; errors name ``source``, line and field."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{source}:{line}: (file): not valid YAML: {problem}") from None
    if not isinstance(data, dict) or node is None:
        raise InputError(f"{source}:1: (file): a campaign file is a mapping of fields")
    lines: dict[tuple[Any, ...], int] = {}
    _lines(node, (), lines)
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
            if loc and loc[-1] == "from_":
                loc = (*loc[:-1], "from")
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            msgs.append(f"{source}:{_line_of(loc, lines)}: {_field(loc)}: {msg}")
        raise InputError("\n".join(msgs)) from None


def field_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Line of every field path of a (valid YAML) document, e.g. ``("channel", "subject")``."""
    lines: dict[tuple[Any, ...], int] = {}
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _lines(node, (), lines)
    return lines


def where(source: str, lines: dict[tuple[Any, ...], int], *path: Any) -> str:
    """``FILE:LINE: a.b`` for messages about field ``path``."""
    return f"{source}:{_line_of(path, lines)}: {_field(path)}"


def load_campaign_file(path: str | Path) -> CampaignSpec:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such campaign file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}:1: (file): not valid UTF-8") from None
    return parse_campaign(text, str(p))
