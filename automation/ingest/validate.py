"""Vectorised validation of canonical rows: typed accepted rows, and rejects with their reasons.

Reasons (stable codes): ``missing_user_id``, ``missing_type``, ``unknown_type``,
``missing_timestamp``, ``unparseable_timestamp``, ``ambiguous_local_time``,
``timestamp_in_future``, ``timestamp_out_of_range``, ``non_numeric_<field>``,
``negative_<field>``, ``zero_quantity``, ``rating_out_of_range``, ``missing_rating``,
``value_too_long``; readers add ``wrong_column_count``, ``invalid_utf8``, ``malformed_csv``,
``malformed_json`` and ``unsupported_message_type``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from automation.ingest.schema import MAX_TEXT, NUMERIC_FIELDS, TYPE_ALIASES
from models.events import EVENT_TYPES

TEXT_FIELDS = ("event_id", "user_id", "item_id", "category", "session_id", "order_id", "coupon")
MIN_TIME = pd.Timestamp("1990-01-01", tz="UTC")
_OFFSET = r"(?:[zZ]|[+-]\d\d(?::?\d\d)?)$"
_NUMBER = r"-?\d+(?:\.\d+)?"


@dataclass
class Checked:
    accepted: pd.DataFrame
    rejected: pd.DataFrame  # columns: row (position in input), reason, detail


# What a blank cell looks like once trimmed: nothing, or a "nan"/"None" written by a program.
_BLANKS = pa.array(
    ["", "None", *("".join(c) for c in itertools.product(*zip("nan", "NAN", strict=True)))]
)


def text(col: pd.Series) -> pd.Series:
    """Strings with blanks as missing (``NA``)."""
    s = col.astype("str") if col.dtype != "str" else col
    if not s.notna().any():  # an absent column: nothing to clean
        return s
    chunks = getattr(s.array, "_pa_array", None)
    if not isinstance(chunks, pa.ChunkedArray):
        s = s.str.strip()
        return s.where(s.notna() & (s != "") & (s.str.lower() != "nan") & (s != "None"))
    trimmed = pc.utf8_trim_whitespace(chunks)
    blank = pc.is_in(trimmed, value_set=_BLANKS.cast(trimmed.type))
    cleaned = pc.if_else(blank, pa.scalar(None, trimmed.type), trimmed)
    return pd.Series(cleaned, index=col.index, dtype=s.dtype)


def to_float(t: pd.Series) -> pd.Series:
    """Numbers from cleaned text (:func:`text`); ``NaN`` where missing or not a number.

    Arrow's cast parses a column of valid numbers ~10x faster than ``pd.to_numeric``; a column
    with any value it refuses goes through ``pd.to_numeric(errors="coerce")`` instead, which
    marks just those values.
    """
    chunks = getattr(t.array, "_pa_array", None)
    if isinstance(chunks, pa.ChunkedArray) and (
        pa.types.is_string(chunks.type) or pa.types.is_large_string(chunks.type)
    ):
        try:
            cast = pc.cast(chunks, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        else:
            values = cast.to_numpy(zero_copy_only=False)
            return pd.Series(values, index=t.index, dtype="float64")
    return pd.to_numeric(t, errors="coerce").astype("float64")


def parse_timestamps(col: pd.Series, timezone: str) -> tuple[pd.Series, np.ndarray]:
    """UTC timestamps from datetimes, ISO 8601 text or epoch seconds/milliseconds/microseconds.

    Naive values are read in ``timezone``. Returns the parsed series (``NaT`` where unparseable)
    and a mask of local times that are ambiguous (the hour repeated when clocks go back).
    """
    n = len(col)
    ambiguous = np.zeros(n, dtype=bool)
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC").astype("datetime64[us, UTC]"), ambiguous
    if pd.api.types.is_datetime64_dtype(col):
        return _localise(col, timezone, ambiguous)
    if pd.api.types.is_numeric_dtype(col):
        return _epoch(pd.to_numeric(col, errors="coerce")), ambiguous
    s = text(col)
    chunks = getattr(s.array, "_pa_array", None)
    if isinstance(chunks, pa.ChunkedArray) and chunks.null_count == 0:
        # Fast path: every value ISO 8601 with an offset ("...Z", "+02:00"), parsed by Arrow.
        # Anything else (epoch numbers, local times, unparseable text) takes the general path.
        try:
            parsed = pc.cast(chunks, pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            parsed = None
        if parsed is not None:
            values = parsed.to_pandas().astype("datetime64[us, UTC]")
            return values.set_axis(col.index), ambiguous
    out = pd.Series(pd.NaT, index=col.index, dtype="datetime64[us, UTC]")
    is_num = s.str.fullmatch(_NUMBER).fillna(False).to_numpy(dtype=bool)
    if is_num.any():
        out[is_num] = _epoch(pd.to_numeric(s[is_num], errors="coerce"))
    rest = ~is_num & s.notna().to_numpy()
    if rest.any():
        r = s[rest]
        aware = r.str.contains(_OFFSET, regex=True).to_numpy(dtype=bool)
        if aware.any():
            parsed = pd.to_datetime(r[aware], format="ISO8601", errors="coerce", utc=True)
            out[np.flatnonzero(rest)[aware]] = parsed.astype("datetime64[us, UTC]")
        if (~aware).any():
            naive = pd.to_datetime(r[~aware], format="ISO8601", errors="coerce")
            local, amb = _localise(naive, timezone, np.zeros(int((~aware).sum()), dtype=bool))
            idx = np.flatnonzero(rest)[~aware]
            out[idx] = local
            ambiguous[idx] = amb
    return out, ambiguous


def _localise(col: pd.Series, timezone: str, ambiguous: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    col = pd.to_datetime(col, errors="coerce")
    if timezone == "UTC":
        return col.dt.tz_localize("UTC").astype("datetime64[us, UTC]"), ambiguous
    local = col.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="shift_forward")
    ambiguous = (local.isna() & col.notna()).to_numpy()
    return local.dt.tz_convert("UTC").astype("datetime64[us, UTC]"), ambiguous


def _epoch(v: pd.Series) -> pd.Series:
    """Epoch numbers by magnitude: seconds, milliseconds (>= 1e11) or microseconds (>= 1e14)."""
    a = v.to_numpy(dtype="float64", na_value=np.nan)
    scale = np.where(np.abs(a) >= 1e14, 1.0, np.where(np.abs(a) >= 1e11, 1e3, 1e6))
    us = a * scale
    ok = np.isfinite(us) & (np.abs(us) < 9e15)  # within datetime64[us] range used here
    vals = np.where(ok, us, 0).astype("int64").astype("datetime64[us]")
    res = pd.Series(vals, index=v.index).dt.tz_localize("UTC")
    return res.where(ok).astype("datetime64[us, UTC]")


def _said(name: str, values: pd.Series, what: str) -> Callable[[], pd.Series]:
    return lambda: name + " " + values.astype("str").map(repr) + what


class _Flags:
    def __init__(self, n: int) -> None:
        self.reason = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)

    def flag(
        self, mask: np.ndarray | pd.Series, code: str, detail: str | Callable[[], pd.Series]
    ) -> None:
        """Give ``code`` to rows in ``mask`` not already flagged; ``detail`` built only if needed."""
        m = np.asarray(mask, dtype=bool) & pd.isna(self.reason)
        if not m.any():
            return
        self.reason[m] = code
        self.detail[m] = detail if isinstance(detail, str) else detail().to_numpy()[m]


def validate(
    frame: pd.DataFrame, timezone: str, now: pd.Timestamp, future_tolerance: pd.Timedelta
) -> Checked:
    """Check every canonical row; return typed accepted rows and the rejects with reasons."""
    n = len(frame)
    f = _Flags(n)

    user = text(frame["user_id"])
    f.flag(user.isna(), "missing_user_id", "user_id is empty")
    raw_type = text(frame["type"])
    f.flag(raw_type.isna(), "missing_type", "type is empty")
    canon = raw_type.str.lower().map(TYPE_ALIASES)
    f.flag(
        canon.isna() & raw_type.notna(),
        "unknown_type",
        lambda: (
            "type " + raw_type.fillna("").map(repr) + f" is not one of {', '.join(EVENT_TYPES)}"
        ),
    )

    raw_ts = frame["timestamp"]
    missing_ts = raw_ts.isna().to_numpy() | (
        text(raw_ts).isna().to_numpy() if raw_ts.dtype in (object, "str") else False
    )
    ts, ambiguous = parse_timestamps(raw_ts, timezone)
    f.flag(missing_ts, "missing_timestamp", "timestamp is empty")
    f.flag(ambiguous, "ambiguous_local_time", f"local time is ambiguous in {timezone}")
    shown = raw_ts.astype("str")
    f.flag(
        ts.isna().to_numpy() & ~missing_ts,
        "unparseable_timestamp",
        lambda: "timestamp " + shown.map(repr) + " is not ISO 8601 or epoch seconds/milliseconds",
    )
    f.flag(
        (ts > now + future_tolerance).fillna(False).to_numpy(dtype=bool),
        "timestamp_in_future",
        lambda: "timestamp " + shown + f" is later than {(now + future_tolerance).isoformat()}",
    )
    f.flag(
        (ts < MIN_TIME).fillna(False).to_numpy(dtype=bool),
        "timestamp_out_of_range",
        lambda: "timestamp " + shown + " is before 1990",
    )

    nums: dict[str, pd.Series] = {}
    for name in NUMERIC_FIELDS:
        col = frame[name]
        if pd.api.types.is_numeric_dtype(col):
            val = pd.to_numeric(col, errors="coerce").astype("float64")
            present = val.notna().to_numpy()
        else:
            t = text(col)
            present = t.notna().to_numpy()
            val = to_float(t)
        bad = present & ~np.isfinite(val.to_numpy(na_value=np.nan))
        f.flag(bad, f"non_numeric_{name}", _said(name, col, " is not a number"))
        f.flag((val < 0).to_numpy(), f"negative_{name}", _said(name, val, " is negative"))
        nums[name] = val.where(~bad)

    is_line = canon.isin(["purchase", "refund"]).to_numpy()
    f.flag(is_line & (nums["quantity"] == 0).to_numpy(), "zero_quantity", "quantity is 0")
    f.flag(
        (nums["rating"] > 5).to_numpy(),
        "rating_out_of_range",
        _said("rating", nums["rating"], " is not between 0 and 5"),
    )
    f.flag(
        (canon == "rating").to_numpy() & nums["rating"].isna().to_numpy(),
        "missing_rating",
        "a rating event needs a rating",
    )

    texts = {name: text(frame[name]) for name in TEXT_FIELDS if name != "user_id"}
    texts["user_id"] = user
    for name, t in texts.items():
        f.flag(
            (t.str.len() > MAX_TEXT).fillna(False).to_numpy(dtype=bool),
            "value_too_long",
            f"{name} is longer than {MAX_TEXT} characters",
        )

    ok = pd.isna(f.reason)
    qty = nums["quantity"]
    # A line without a quantity counts as one unit; a missing line total is quantity x price.
    qty = qty.where(qty.notna() | ~is_line, 1.0)
    revenue = nums["revenue"].fillna(qty * nums["price"])
    line = pd.Series(is_line, index=frame.index)
    item_name = text(frame["item_name"]) if "item_name" in frame else None
    out = pd.DataFrame(  # one constructor: a column assignment at a time costs more per block
        {
            "event_id": texts["event_id"],
            "user_id": user,
            "type": canon,
            "ts": ts,
            "item_id": texts["item_id"],
            "item_name": item_name,
            "category": texts["category"],
            "quantity": qty,
            "price": nums["price"],
            "revenue": revenue.where(line),
            "rating": nums["rating"],
            "session_id": texts["session_id"],
            "order_id": texts["order_id"],
            "coupon": texts["coupon"],
        },
        index=frame.index,
        copy=False,
    )
    rejected = pd.DataFrame(
        {"row": np.flatnonzero(~ok), "reason": f.reason[~ok], "detail": f.detail[~ok]}
    )
    accepted = out.reset_index(drop=True) if ok.all() else out[ok].reset_index(drop=True)
    return Checked(accepted, rejected)
