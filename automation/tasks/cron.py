"""Crontab expressions (``MIN HOUR DOM MON DOW``, 0 and 7 are Sunday) as APScheduler 3 triggers.

Used by the scheduler's ``cron:`` schedules and by campaigns' ``schedule`` triggers.
"""

from __future__ import annotations

import re

from apscheduler.triggers.cron import CronTrigger

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_weekday(field: str) -> str:
    """A crontab day-of-week field (0 and 7 are Sunday) as APScheduler 3 day names.

    APScheduler 3 numbers days from Monday, so numbers, ranges and steps are spelled out as
    names: ``1-5`` -> ``mon,tue,wed,thu,fri``, ``0-6`` and ``*/2`` keep their crontab meaning.
    Parts already written with names pass through.
    """
    days: list[str] = []
    for part in field.split(","):
        base, _, step = part.partition("/")
        if base == "*" and not step:
            return "*"
        numbers = re.fullmatch(r"(\d+)(?:-(\d+))?", "0-6" if base == "*" else base)
        if numbers is None:
            if any(ch.isdigit() for ch in base):
                raise ValueError(f"day of week {part!r} is not a crontab value")
            days.append(part)  # names such as mon-fri: APScheduler reads them as crontab does
            continue
        first = int(numbers[1])
        last = int(numbers[2]) if numbers[2] else (7 if step else first)
        if not 0 <= first <= last <= 7 or (step and int(step) < 1):
            raise ValueError(f"day of week {part!r} is out of 0-7")
        days += [_WEEKDAYS[d] for d in range(first, last + 1, int(step or 1))]
    return ",".join(dict.fromkeys(days))


def crontab_trigger(expr: str, timezone: str = "UTC") -> CronTrigger:
    """A crontab expression as a trigger in ``timezone``; ValueError when it is not one."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r} has {len(fields)} fields, a crontab expression has 5")
    minute, hour, day, month, dow = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=cron_weekday(dow),
        timezone=timezone,
    )
