"""Why a user moved: the features that changed most and the distances to both centres."""

from __future__ import annotations

from typing import Any

import numpy as np


def explain_moves(
    X_new: np.ndarray,
    X_old: np.ndarray | None,
    centers_from: np.ndarray,
    centers_to: np.ndarray,
    feature_names: list[str],
    n_events: np.ndarray,
    top: int = 3,
) -> list[dict[str, Any]]:
    """One explanation per moved user (rows aligned across the arrays).

    ``centers_from`` / ``centers_to`` hold each user's old and new segment centre (NaN rows for
    a user with no previous segment); ``X_old`` is the user's previous scaled vector (NaN rows
    when unknown).
    """
    d_from = np.sqrt(np.nansum((X_new - centers_from) ** 2, axis=1))
    has_from = ~np.isnan(centers_from).all(axis=1)
    d_to = np.sqrt(((X_new - centers_to) ** 2).sum(axis=1))
    delta = None if X_old is None else X_new - X_old
    out: list[dict[str, Any]] = []
    for i in range(len(X_new)):
        item: dict[str, Any] = {
            "distance_to_old": round(float(d_from[i]), 4) if has_from[i] else None,
            "distance_to_new": round(float(d_to[i]), 4),
            "events": int(n_events[i]),
        }
        if delta is not None and np.isfinite(delta[i]).all():
            order = np.argsort(-np.abs(delta[i]))[:top]
            item["changed"] = [
                {
                    "feature": feature_names[j],
                    "before": round(float(X_old[i, j]), 3),  # type: ignore[index]
                    "after": round(float(X_new[i, j]), 3),
                }
                for j in order
                if abs(delta[i, j]) > 1e-9
            ]
        out.append(item)
    return out


def centers_for(ids: np.ndarray, centers: dict[str, np.ndarray], dim: int) -> np.ndarray:
    """Row i: the centre of segment ``ids[i]`` (NaN when unknown)."""
    nan = np.full(dim, np.nan)
    return np.stack([centers.get(str(s), nan) for s in ids]) if len(ids) else np.zeros((0, dim))


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name (new)``, ``name (new 2)``, ... when already taken."""
    if name not in taken:
        return name
    candidate, n = f"{name} (new)", 2
    while candidate in taken:
        candidate, n = f"{name} (new {n})", n + 1
    return candidate
