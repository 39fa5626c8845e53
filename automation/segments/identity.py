"""Stable segment ids across versions: match new clusters to the previous segments.

A new cluster inherits the id of the previous segment it overlaps most, found by Hungarian
assignment on the membership contingency table (users in both versions), when that segment holds
at least ``min_overlap`` of the cluster's returning members. Unmatched clusters get fresh ids.
Ids are business identifiers (``seg-7``), never raw cluster indices.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

_ID = re.compile(r"^seg-(\d+)$")


def next_id_number(existing: list[str]) -> int:
    nums = [int(m.group(1)) for s in existing if (m := _ID.match(s))]
    return max(nums, default=0) + 1


def match_segments(
    labels: pd.Series,
    previous: pd.Series | None,
    existing_ids: list[str],
    min_overlap: float = 0.5,
) -> dict[int, str]:
    """Segment id for each new label.

    Parameters
    ----------
    labels : Series
        New label per user (index: user key).
    previous : Series or None
        Previous segment id per user (index: user key), or ``None`` for a first segmentation.
    existing_ids : list of str
        Every id ever issued, so fresh ids never reuse an old one.
    min_overlap : float
        Share of a cluster's returning users that must come from one previous segment.

    Examples
    --------
    >>> new = pd.Series([0, 0, 1, 1], index=[1, 2, 3, 4])
    >>> old = pd.Series(["seg-2", "seg-2", "seg-1", "seg-1"], index=[1, 2, 3, 4])
    >>> match_segments(new, old, ["seg-1", "seg-2"])
    {0: 'seg-2', 1: 'seg-1'}
    """
    new_labels = sorted(int(v) for v in pd.unique(labels))
    mapping: dict[int, str] = {}
    if previous is not None and len(previous):
        common = labels.index.intersection(previous.index)
        if len(common):
            table = pd.crosstab(labels.loc[common].to_numpy(), previous.loc[common].to_numpy())
            counts = table.to_numpy(dtype=float)
            rows, cols = linear_sum_assignment(-counts)
            row_tot = counts.sum(axis=1)
            for r, c in zip(rows, cols, strict=True):
                if row_tot[r] > 0 and counts[r, c] / row_tot[r] >= min_overlap:
                    mapping[int(table.index[r])] = str(table.columns[c])
    n = next_id_number(existing_ids)
    for lab in new_labels:
        if lab not in mapping:
            mapping[lab] = f"seg-{n}"
            n += 1
    return mapping


def overlap_matrix(labels: np.ndarray, previous: np.ndarray) -> pd.DataFrame:
    """Counts of users by (new label, previous id): the evidence behind a match."""
    return pd.crosstab(labels, previous)
