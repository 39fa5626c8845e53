"""Column mapping and presets: from a file's columns to the canonical event.

``--map user_id=CustomerID`` takes a canonical field from a source column (repeatable);
``--set type=purchase`` gives a field a constant. Without a ``--map``, canonical names and common
aliases (:data:`automation.ingest.schema.COLUMN_ALIASES`) are recognised case-insensitively.
Presets bundle a mapping, constants, a time zone for naive timestamps and a transform.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from automation.errors import InputError
from automation.ingest.schema import CANONICAL_FIELDS, COLUMN_ALIASES

Transform = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    mapping: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    timezone: str = "UTC"
    non_product: str | None = None
    transform: Transform | None = None


def _online_retail(frame: pd.DataFrame) -> pd.DataFrame:
    """Cancellations (invoice starting with "C") become refunds of the positive quantity."""
    order = frame["order_id"].astype("str").fillna("")
    is_cancel = order.str.startswith("C").to_numpy()
    frame["type"] = np.where(is_cancel, "refund", "purchase")
    qty = frame["quantity"].astype("str")
    frame["quantity"] = qty.where(~is_cancel, qty.str.removeprefix("-"))
    user = frame["user_id"].astype("str")
    frame["user_id"] = user.str.removesuffix(".0")
    return frame


PRESETS: dict[str, Preset] = {
    "online-retail": Preset(
        name="online-retail",
        description="UCI Online Retail: invoices are orders, cancellations become refunds",
        mapping={
            "user_id": "CustomerID",
            "item_id": "StockCode",
            "item_name": "Description",
            "quantity": "Quantity",
            "timestamp": "InvoiceDate",
            "price": "UnitPrice",
            "order_id": "InvoiceNo",
        },
        timezone="Europe/London",
        non_product=r"^(POST|DOT|D|M|m|C2|CRUK|PADS|S|B|BANK CHARGES|AMAZONFEE|gift_.*)$",
        transform=_online_retail,
    ),
    "segment": Preset(
        name="segment",
        description="Segment track/batch payloads (E-commerce Spec v2 event names)",
    ),
}


def preset_named(name: str | None) -> Preset | None:
    if name is None:
        return None
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r} (choose from: {', '.join(PRESETS)})") from None


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, str]:
    """Parse ``FIELD=VALUE`` pairs of ``--map`` / ``--set``; the field must be canonical."""
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"{option} {pair!r}: expected FIELD=VALUE")
        key, value = (s.strip() for s in pair.split("=", 1))
        if key not in CANONICAL_FIELDS:
            raise InputError(
                f"{option} {pair!r}: unknown field {key!r} (fields: {', '.join(CANONICAL_FIELDS)})"
            )
        out[key] = value
    return out


@dataclass
class ColumnPlan:
    """Where each canonical field comes from in one file."""

    sources: dict[str, str]
    constants: dict[str, str]
    timezone: str
    non_product: re.Pattern[str] | None
    transform: Transform | None

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.is_identity(frame):
            return frame  # already canonical (the HTTP batch path): nothing to copy
        n = len(frame)
        out = pd.DataFrame(index=frame.index)
        for name in CANONICAL_FIELDS:
            if name in self.constants:
                out[name] = pd.Series([self.constants[name]] * n, index=frame.index, dtype="str")
            elif name in self.sources and self.sources[name] in frame.columns:
                out[name] = frame[self.sources[name]]
            else:
                out[name] = pd.Series([None] * n, index=frame.index, dtype="object")
        if self.transform is not None and n:
            out = self.transform(out)
        return out

    def is_identity(self, frame: pd.DataFrame) -> bool:
        """Whether ``frame`` already has the canonical columns, each mapped onto itself."""
        return (
            not self.constants
            and self.transform is None
            and tuple(frame.columns) == CANONICAL_FIELDS
            and all(self.sources.get(name) == name for name in CANONICAL_FIELDS)
        )


def plan_columns(
    columns: Sequence[str],
    source: str,
    preset: Preset | None = None,
    maps: dict[str, str] | None = None,
    sets: dict[str, str] | None = None,
) -> ColumnPlan:
    """Resolve the mapping for a file with ``columns``; unknown columns are a one-line error."""
    maps = dict(maps or {})
    sets = dict(sets or {})
    present = {str(c).lower(): str(c) for c in columns}
    sources: dict[str, str] = {}
    if preset is not None:
        for fld, col in preset.mapping.items():
            if col in columns:
                sources[fld] = col
            elif fld not in maps and fld not in sets and columns:
                raise InputError(
                    f"{source}: preset {preset.name!r} expects a column {col!r}, "
                    f"not found (columns: {', '.join(map(str, columns))})"
                )
    for fld in CANONICAL_FIELDS:
        if fld in sources or fld in maps:
            continue
        for alias in COLUMN_ALIASES.get(fld, ()):
            if alias in present and present[alias] not in sources.values():
                sources[fld] = present[alias]
                break
    for fld, col in maps.items():
        if col not in columns and columns:
            raise InputError(
                f"--map {fld}={col}: no column {col!r} in {source} "
                f"(columns: {', '.join(map(str, columns))})"
            )
        sources[fld] = col
    constants = {**(preset.constants if preset else {}), **sets}
    for fld in constants:
        sources.pop(fld, None)
    non_product = preset.non_product if preset else None
    return ColumnPlan(
        sources=sources,
        constants=constants,
        timezone=preset.timezone if preset else "UTC",
        non_product=re.compile(non_product) if non_product else None,
        transform=preset.transform if preset else None,
    )
