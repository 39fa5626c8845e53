"""Why the hybrid listed an item: the part of its blend that scored the item highest, in words
(the anchor item for the neighbour components, the segment for the segment-based ones)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from automation.recommend.context import NO_SEGMENT
from automation.recommend.data import IntArray
from automation.recommend.knn import anchor_reasons

if TYPE_CHECKING:
    from automation.recommend.hybrid import HybridRecommender


def reasons(
    model: HybridRecommender, rows: IntArray, segments: IntArray, items: IntArray
) -> list[list[str]]:
    """A reason per listed item: the blend part that scored it highest, in words (with the
    parameters in force for every row)."""
    ctx = model.context
    _, parts = model._blend(rows, segments, model.components(rows, segments), keep_parts=True)
    names = ctx.catalogue.names
    best_of = [
        [
            max(parts, key=lambda c: (parts[c][k, i], c)) if parts and i >= 0 else "trend"
            for i in items[k].tolist()
        ]
        for k in range(len(rows))
    ]
    sources = {
        "cf": (model.cf_, "bought with {anchor}"),
        "basket": (model.basket_, "often in the same basket as {anchor}"),
        "content": (model.content_, "similar to {anchor}"),
        "next": (model.next_, "often bought after {anchor}"),
        "ease": (model.ease_, "goes with {anchor}"),
    }
    anchors = {}  # only for the components that explain some item
    for c in sorted({c for row in best_of for c in row} & set(sources)):
        S, template = sources[c]
        anchor = model._recent_rows(rows) if c in ("next", "ease") else model._profile(rows)
        anchors[c] = anchor_reasons(anchor, S, items, names, template)
    trend_days = float(model.params["trend_half_life"])
    out: list[list[str]] = []
    for k, s in enumerate(segments.tolist()):
        seg_name = str(ctx.segment_names[s]) if s != NO_SEGMENT else None
        row: list[str] = []
        for pos, i in enumerate(items[k].tolist()):
            if i < 0:
                row.append("")
                continue
            best = best_of[k][pos]
            if best in anchors:
                why = anchors[best][k][pos]
            elif best == "repeat":
                why = "bought before: time to buy again"
            elif best == "segrepeat":
                who = f"{seg_name} customers" if seg_name else "customers"
                why = f"bought before, and {who} often buy it again"
            elif best == "als":
                why = "matches your taste"
            elif best == "segment" and seg_name:
                why = f"popular in segment {seg_name}"
            elif best == "early":
                who = f"{seg_name} customers" if seg_name else "customers"
                why = f"what {who} buy when they come back"
            elif best == "segtrend" and seg_name:
                why = f"selling now in segment {seg_name}"
            else:
                why = f"trending over the last {trend_days:g} days"
            if seg_name and len(model.lift_) and model.lift_[s, i] >= 1.5 and best != "segment":
                why += f"; favoured by {seg_name}"
            row.append(why)
        out.append(row)
    return out
