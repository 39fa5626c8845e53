"""Segment ids are business identifiers (``seg-7``), never raw cluster indices.

Matching a refit to the previous segments is :mod:`automation.segments.lineage`; this module
issues fresh ids that never reuse an old one.
"""

from __future__ import annotations

import re

_ID = re.compile(r"^seg-(\d+)$")


def next_id_number(existing: list[str]) -> int:
    nums = [int(m.group(1)) for s in existing if (m := _ID.match(s))]
    return max(nums, default=0) + 1
