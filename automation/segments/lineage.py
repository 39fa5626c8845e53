"""Matching a refit to the previous segments, and naming what happened (MONIC transitions).

Spiliopoulou et al., "MONIC: modeling and monitoring cluster transitions", KDD 2006. For an old
segment X and a new cluster Y, ``overlap[X, Y]`` counts the users in both. With
``to_new = overlap / |X|`` (where X's members went) and ``to_old = overlap / |Y|`` (where Y's
members came from; users new to the store count in ``|Y|``):

- **survival**: the Hungarian assignment on overlap, adjusted by centroid distance, pairs X with
  Y, and ``to_new >= tau`` and ``to_old >= tau``: Y keeps X's id.
- **split**: X's members went to two or more clusters each taking ``>= tau_split`` of them; the
  surviving part (if any) keeps the id, the others are new ids with the transition as evidence.
- **absorption**: X did not survive but ``>= tau`` of its members went to one surviving Y.
- **disappearance**: no cluster took ``>= tau_split`` of X.
- **emergence**: no old segment makes up ``>= tau`` of Y: a new id, never an old one (a new kind
  of customer must not inherit an existing segment's meaning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from automation.segments.identity import next_id_number


@dataclass
class Lineage:
    ids: dict[int, str]  # new label -> segment id
    transitions: list[dict[str, Any]] = field(default_factory=list)


def match_refit(
    labels: pd.Series,
    previous: pd.Series | None,
    X: np.ndarray,
    existing_ids: list[str],
    tau: float = 0.5,
    tau_split: float = 0.2,
) -> Lineage:
    """Ids for the new labels and the MONIC transitions from ``previous``.

    Parameters
    ----------
    labels : Series
        New label per user (index: user key), aligned with the rows of ``X``.
    previous : Series or None
        Previous segment id per user (index: user key).
    X : array
        Scaled features of the users in ``labels`` (for centroid distances in one space).
    existing_ids : list of str
        Every id ever issued (fresh ids never reuse one).

    Examples
    --------
    >>> lab = pd.Series([0, 0, 1, 1, 2, 2], index=range(6))
    >>> old = pd.Series(["seg-1", "seg-1", "seg-2", "seg-2"], index=range(4))
    >>> X = np.array([[0.0], [0.1], [5.0], [5.1], [9.0], [9.1]])
    >>> out = match_refit(lab, old, X, ["seg-1", "seg-2"])
    >>> out.ids
    {0: 'seg-1', 1: 'seg-2', 2: 'seg-3'}
    >>> [t["type"] for t in out.transitions]
    ['survival', 'survival', 'emergence']
    """
    new_labels = sorted(int(v) for v in pd.unique(labels))
    fresh = next_id_number(existing_ids)
    if previous is None or previous.empty:
        ids = {lab: f"seg-{fresh + i}" for i, lab in enumerate(new_labels)}
        return Lineage(
            ids,
            [_t("emergence", [i], {"size": int((labels == lab).sum())}) for lab, i in ids.items()],
        )
    lab_arr = labels.to_numpy()
    common = labels.index.intersection(previous.index)
    old_ids = sorted(pd.unique(previous.loc[common]).tolist()) if len(common) else []
    new_size = np.array([(lab_arr == lab).sum() for lab in new_labels], dtype=float)
    if not old_ids:
        fresh_ids = {lab: f"seg-{fresh + i}" for i, lab in enumerate(new_labels)}
        return Lineage(fresh_ids, [_t("emergence", [i], {}) for i in fresh_ids.values()])
    table = pd.crosstab(previous.loc[common].to_numpy(), labels.loc[common].to_numpy())
    table = table.reindex(index=old_ids, columns=new_labels, fill_value=0)
    overlap = table.to_numpy(dtype=float)
    old_size = overlap.sum(axis=1)
    to_new = overlap / np.maximum(old_size[:, None], 1)
    to_old = overlap / np.maximum(new_size[None, :], 1)
    # Centroids of both partitions in the new space: old segments' members' current features.
    pos = pd.Index(labels.index)
    new_c = np.stack([X[lab_arr == lab].mean(axis=0) for lab in new_labels])
    old_c = np.stack(
        [
            X[pos.get_indexer(common[previous.loc[common].to_numpy() == o])].mean(axis=0)
            for o in old_ids
        ]
    )
    dist = np.sqrt(((old_c[:, None, :] - new_c[None, :, :]) ** 2).sum(axis=2))
    scale = float(np.median(dist)) or 1.0
    score = np.minimum(to_new, to_old) - 0.05 * dist / scale
    rows, cols = linear_sum_assignment(-score)
    ids = {}
    transitions: list[dict[str, Any]] = []
    survived: dict[int, int] = {}
    for r, c in zip(rows, cols, strict=True):
        if to_new[r, c] >= tau and to_old[r, c] >= tau:
            ids[new_labels[c]] = old_ids[r]
            survived[r] = c
    for lab in new_labels:
        if lab not in ids:
            ids[lab] = f"seg-{fresh}"
            fresh += 1
    for r, old in enumerate(old_ids):
        parts = [c for c in range(len(new_labels)) if to_new[r, c] >= tau_split]
        evidence = {
            "members": int(old_size[r]),
            "went_to": {
                ids[new_labels[c]]: round(float(to_new[r, c]), 3)
                for c in np.argsort(-to_new[r])[:3]
                if to_new[r, c] > 0
            },
        }
        if len(parts) >= 2:
            children = [ids[new_labels[c]] for c in parts]
            transitions.append(_t("split", [old, *[x for x in children if x != old]], evidence))
        elif r in survived:
            c = survived[r]
            evidence["centroid_shift"] = round(float(dist[r, c]), 3)
            transitions.append(_t("survival", [old], evidence))
        elif parts and new_labels[parts[0]] in ids and ids[new_labels[parts[0]]] in old_ids:
            transitions.append(_t("absorption", [old, ids[new_labels[parts[0]]]], evidence))
        else:
            transitions.append(_t("disappearance", [old], evidence))
    for c, lab in enumerate(new_labels):
        if ids[lab] not in old_ids and not any(
            t["type"] == "split" and ids[lab] in t["segments"] for t in transitions
        ):
            came_from = {
                old_ids[r]: round(float(to_old[r, c]), 3)
                for r in range(len(old_ids))
                if to_old[r, c] > 0.05
            }
            transitions.append(
                _t("emergence", [ids[lab]], {"size": int(new_size[c]), "came_from": came_from})
            )
    return Lineage(ids, transitions)


def _t(kind: str, segments: list[str], evidence: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "segments": segments, "evidence": evidence}
