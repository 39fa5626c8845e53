"""Merges and splits seen in what the active members did in each update (hand-made counts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from automation.segments.behaviour import (
    PROFILE,
    BehaviourPolicy,
    increments,
    merged_pairs,
    value_changes,
)
from automation.segments.dynamic import DynamicSegmenter, SegmentStats
from automation.segments.structure import apply_structure

N = 300  # members per segment


def _day(rng: np.random.Generator, kind: np.ndarray) -> np.ndarray:
    """One update's counts per member: kind 0 browses, 1 buys and refunds, 2 buys dear items."""
    views = rng.poisson(np.where(kind == 0, 10, 5)) + 1.0
    carts = rng.binomial(views.astype(int), np.where(kind == 0, 0.03, 0.3)).astype(float)
    orders = (carts > 0) * (rng.random(len(kind)) < 0.7)
    value = np.exp(rng.normal(np.where(kind == 2, 5.5, 3.5), 0.3))
    gross = orders * value
    refunds = gross * (kind == 1) * 0.5
    lines, usual = carts * orders, np.full(len(kind), 3.5)
    return np.column_stack([views, carts, orders.astype(float), gross, refunds, lines, usual])


def _run(
    kinds: list[np.ndarray], labels: np.ndarray, X: np.ndarray | None = None
) -> tuple[list[list[dict[str, object]]], np.ndarray]:
    """Transitions of each update and the last labels (``X``: seg-2 8 units off by default)."""
    if X is None:
        X = np.random.default_rng(1).normal(size=(len(labels), 2))
        X += (labels == "seg-2")[:, None] * 8
    seg = DynamicSegmenter().init_from_partition(X, labels)
    rng, ids, out = np.random.default_rng(0), iter(["seg-3", "seg-4", "seg-5"]), []
    for kind in kinds:
        labels, transitions, _ = apply_structure(
            seg, X, labels, np.ones(len(X), bool), ["a", "b"], lambda: next(ids), None,
            _day(rng, kind),
        )  # fmt: skip
        out.append(transitions)
    return out, labels


def test_two_segments_that_start_to_behave_alike_merge() -> None:
    labels = np.repeat(np.array(["seg-1", "seg-2"], dtype=object), N)
    before, after = np.repeat([0, 1], N), np.ones(2 * N, int)
    steps, _ = _run([before] * 9 + [after] * 2, labels)
    assert all(not t for t in steps[:-1])  # no alarm before, not on the first day alone
    merged = [t for t in steps[-1] if t["type"] == "merged"]
    assert merged and set(merged[0]["segments"]) == {"seg-1", "seg-2"}
    assert merged[0]["evidence"]["converged"][0]["feature"] == "carts_per_view"


def test_half_of_a_segment_buying_dearer_splits_off() -> None:
    labels = np.repeat(np.array(["seg-1", "seg-2"], dtype=object), N)
    before = np.repeat([1, 0], N)
    after = before.copy()
    after[: N // 2] = 2
    steps, _ = _run([before] * 9 + [after] * 2, labels)
    assert all(not t for t in steps[:-1])
    split = [t for t in steps[-1] if t["type"] == "split"]
    assert split and split[0]["segments"] == ["seg-1", "seg-3"]


def test_increments_are_what_a_user_did_since_the_stored_row() -> None:
    cols = ["frequency", "avg_order_value", "monetary", "n_views", "n_carts", "cart_to_purchase"]
    old = pd.DataFrame([[2, 10.0, 20.0, 8, 4, 1.0], [np.nan] * 6], columns=cols)
    new = pd.DataFrame([[3, 40.0, 90.0, 12, 5, 1.0], [1, 5.0, 5.0, 2, 1, 1.0]], columns=cols)
    counts = increments(old, new)
    # 120 - 20 gross, 30 refunded, one line bought; before: 20 over four lines
    assert counts[0, :6].tolist() == [4.0, 1.0, 1.0, 100.0, 30.0, 1.0]
    assert counts[0, 6] == pytest.approx(np.log(21 / 4))
    assert np.isnan(counts[1, 6]) and counts[1, :6].tolist() == [2.0, 1.0, 1.0, 5.0, 0.0, 1.0]
    change = value_changes(counts)
    assert change[0] > 1.0 and np.isnan(change[1])


def _profiles(rng: np.random.Generator, base: list[float], days: int) -> list[list[float]]:
    """Pooled profiles (:data:`PROFILE`) around ``base`` with day-to-day noise 0.05."""
    return [(np.asarray(base) + rng.normal(0, 0.05, len(PROFILE))).tolist() for _ in range(days)]


def test_a_merge_is_still_seen_after_a_first_update_with_one_feature_apart() -> None:
    # Two segments 10-20 deviations apart for a week; on the shift day their profiles meet but
    # one feature (views per active member) is still ~8 deviations apart; then they are alike.
    # A reference rolling up to yesterday held that update by the third day and missed the merge.
    rng = np.random.default_rng(0)
    a = _profiles(rng, [0.0] * len(PROFILE), 10)
    b = _profiles(rng, [1.0, 1.0, 1.0, 0.0, 1.0], 7)
    b += [(np.asarray(a[7]) + [0, 0, 0, 0, 0.6]).tolist()]
    b += [(np.asarray(row) + rng.normal(0, 0.02, len(PROFILE))).tolist() for row in a[8:]]
    policy = BehaviourPolicy()
    seen = [merged_pairs({"seg-1": a[:n], "seg-2": b[:n]}, policy) for n in (8, 9, 10)]
    assert not seen[0] and not seen[1]  # the shift day alone; that day and the next
    ((x, y, evidence),) = seen[2]
    assert (x, y) == ("seg-1", "seg-2")
    assert (
        evidence["behaviour_distance"]["before"]
        > 10
        > 2
        > evidence["behaviour_distance"]["after"][-1]
    )


def test_a_segment_merges_once_with_the_segment_it_converged_most_with() -> None:
    # seg-1 (browsing) starts to buy and refund like seg-2 (300 members) and seg-9 (60: a noisier
    # profile, so a weaker convergence). Both pairs pass the test; only (1, 2) is merged.
    labels = np.array(["seg-1"] * N + ["seg-2"] * N + ["seg-9"] * 60, dtype=object)
    X = np.random.default_rng(1).normal(size=(len(labels), 2))
    X += (labels == "seg-2")[:, None] * 8 + (labels == "seg-9")[:, None] * [8, -8]
    before = np.where(labels == "seg-1", 0, 1)
    steps, _ = _run([before] * 9 + [np.ones(len(labels), int)] * 2, labels, X)
    assert all(not t for t in steps[:-1])
    merged = [t for t in steps[-1] if t["type"] == "merged"]
    assert len(merged) == 1 and set(merged[0]["segments"]) == {"seg-1", "seg-2"}


def test_a_split_off_child_is_pooled_with_its_parent_for_the_merge_test() -> None:
    # seg-2 (browsing) starts to buy and refund like seg-1. On the shift day its buyers are split
    # off into seg-3, which from then on collects whoever of seg-2 orders (as the assignment did
    # in the simulator): what is left of seg-2 never orders, far from seg-1 on its own.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["seg-1", "seg-2"], dtype=object), N)
    X = np.random.default_rng(1).normal(size=(len(labels), 2)) + (labels == "seg-2")[:, None] * 8
    seg = DynamicSegmenter().init_from_partition(X, labels)
    base = labels.copy()
    steps = []
    for day in range(11):
        counts = _day(rng, np.where(base == "seg-1", 1, 0) if day < 9 else np.ones(2 * N, int))
        if day == 9:
            seg.segments_.append(
                SegmentStats("seg-3", X[N:].mean(axis=0), 150.0, 1.0, 2.0, X[N:].mean(axis=0),
                             150.0, [], 0.0, follow={"parent": "seg-2", "cut": 9.0},
                             origin={"parent": "seg-2", "pool": 10})
            )  # fmt: skip
        if day >= 9:
            labels = base.copy()
            labels[(base == "seg-2") & (counts[:, 2] > 0)] = "seg-3"
        labels, transitions, _ = apply_structure(
            seg, X, labels, np.ones(len(X), bool), ["a", "b"], lambda: "seg-9", None, counts
        )
        steps.append(transitions)
    assert not any(t["type"] == "merged" for s in steps[:-1] for t in s)
    merged = [t for t in steps[-1] if t["type"] == "merged"]
    assert merged and set(merged[0]["segments"]) == {"seg-1", "seg-2"}


def test_an_absorbed_segments_members_clearly_nearer_a_third_go_there() -> None:
    # seg-1 starts to buy and refund like seg-2: the two merge;
    # 10 of seg-2's members sit next to seg-9 (too few to split off): they join seg-9.
    labels = np.array(["seg-1"] * N + ["seg-2"] * N + ["seg-9"] * N, dtype=object)
    X = np.random.default_rng(1).normal(size=(len(labels), 2))
    X += (labels == "seg-2")[:, None] * [8, 0] + (labels == "seg-9")[:, None] * [0, 30]
    X[N : N + 10] = np.random.default_rng(2).normal(size=(10, 2)) + [0, 29]
    before = np.where(labels == "seg-1", 0, np.where(labels == "seg-2", 1, 2))
    steps, out = _run([before] * 9 + [np.where(labels == "seg-9", 2, 1)] * 2, labels, X)
    assert all(not t for t in steps[:-1])
    (merged,) = [t for t in steps[-1] if t["type"] == "merged"]
    assert set(merged["segments"]) == {"seg-1", "seg-2"}
    assert merged["evidence"]["members_elsewhere"] == 10
    assert merged["evidence"]["members_moved"] == N - 10
    assert (out[N : N + 10] == "seg-9").all() and not (out[N + 10 : 2 * N] == "seg-9").any()
