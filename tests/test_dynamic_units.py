"""The dynamic segmenter, structure changes and refit lineage on hand-made data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from automation.errors import ValidationError
from automation.segments.dynamic import DynamicSegmenter
from automation.segments.lineage import match_refit
from automation.segments.structure import StructurePolicy, apply_structure


def blobs(centers: list[list[float]], n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(c, 0.3, size=(n, len(c))) for c in centers])


def two_segments() -> tuple[DynamicSegmenter, np.ndarray, np.ndarray]:
    X = blobs([[0, 0], [4, 0]])
    labels = np.array(["seg-1"] * 200 + ["seg-2"] * 200, dtype=object)
    return DynamicSegmenter().init_from_partition(X, labels), X, labels


def test_hysteresis_keeps_a_user_unless_clearly_closer() -> None:
    seg, _, _ = two_segments()
    near_middle = np.array([[2.05, 0.0], [3.5, 0.0]])
    current = np.array(["seg-1", "seg-1"], dtype=object)
    assert seg.predict(near_middle).tolist() == ["seg-2", "seg-2"]
    assert seg.assign(near_middle, current).tolist() == ["seg-1", "seg-2"]


def test_users_with_new_events_move_on_a_smaller_gain() -> None:
    """The other centre's squared distance 0.55 of the current one's: enough for a user with
    new events (margin_active 0.3: below 0.7), not for one moved by time alone (0.65: 0.35)."""
    seg, _, _ = two_segments()
    x = np.array([[2.3, 0.0], [2.3, 0.0]])  # about 5.3 from seg-1's centre, 2.9 from seg-2's
    current = np.array(["seg-1", "seg-1"], dtype=object)
    moved = seg.assign(x, current, np.array([True, False]))
    assert moved.tolist() == ["seg-2", "seg-1"]
    assert seg.assign(x, current).tolist() == ["seg-1", "seg-1"]


def test_forgetting_moves_centres_by_the_half_life() -> None:
    seg, X, labels = two_segments()
    start = seg.active[0].center.copy()
    moved = X.copy()
    moved[labels == "seg-1"] += np.array([1.0, 0.0])
    seg.decay(moved, labels, dt_days=seg.half_life_days)  # one half-life: halfway there
    shift = seg.active[0].center - start
    assert shift[0] == pytest.approx(0.5, abs=0.02)


def test_state_round_trip_and_per_event_path() -> None:
    seg, _, _ = two_segments()
    again = DynamicSegmenter().load_state(seg.state())
    probe = np.array([[3.9, 0.1]])
    assert again.predict(probe).tolist() == seg.predict(probe).tolist() == ["seg-2"]
    before = again.active[1].center.copy()
    assert again.learn_one(probe[0], current="seg-2") == "seg-2"
    assert again.active[1].center[0] != before[0]
    assert again.predict_one(np.array([0.0, 0.0])) == "seg-1"


def test_parameters_are_validated() -> None:
    with pytest.raises(ValidationError, match="margin=1.5 should be in"):
        DynamicSegmenter(margin=1.5).init_from_partition(np.zeros((2, 1)), np.array(["a", "a"]))


def test_a_new_dense_group_is_born_with_a_new_id() -> None:
    seg, X, labels = two_segments()
    newcomers = blobs([[2, 6]], n=60, seed=3)
    Xall = np.vstack([X, newcomers])
    current = np.concatenate([labels, seg.predict(newcomers)])
    ids = iter(["seg-3", "seg-4"])
    out, transitions, _ = apply_structure(
        seg,
        Xall,
        seg.assign(Xall, current),
        np.ones(len(Xall), bool),
        ["a", "b"],
        lambda: next(ids),
        StructurePolicy(birth_min_size=20),
    )
    born = [t for t in transitions if t["type"] == "born"]
    assert len(born) == 1 and born[0]["segments"] == ["seg-3"]
    assert (out[-60:] == "seg-3").mean() > 0.9
    assert (out[:400] == labels).all()  # nobody else moved
    assert born[0]["evidence"]["distinguishing"][0]["feature"] == "b"


def test_a_behaviour_split_is_not_merged_back_on_geometry() -> None:
    """Two overlapping segments merge, unless one was split off the other on behaviour."""
    X = blobs([[0, 0], [0.2, 0], [5, 5]], n=200)
    labels = np.array(["seg-1"] * 200 + ["seg-2"] * 200 + ["seg-3"] * 200, dtype=object)
    for follow, merges in (({}, True), ({"parent": "seg-1", "cut": 1.2}, False)):
        seg = DynamicSegmenter().init_from_partition(X, labels)
        seg.active[1].follow = dict(follow)
        _, transitions, _ = apply_structure(
            seg, X, labels, np.ones(len(X), bool), ["a", "b"], lambda: "seg-9"
        )
        assert any(t["type"] == "merged" for t in transitions) is merges


def test_converged_segments_merge_and_a_faded_one_retires() -> None:
    X = blobs([[0, 0], [0.2, 0], [5, 5]], n=200)
    labels = np.array(["seg-1"] * 200 + ["seg-2"] * 200 + ["seg-3"] * 200, dtype=object)
    seg = DynamicSegmenter().init_from_partition(X, labels)
    out, transitions, _ = apply_structure(
        seg, X, labels, np.ones(len(X), bool), ["a", "b"], lambda: "seg-9"
    )
    merged = [t for t in transitions if t["type"] == "merged"]
    assert merged and set(merged[0]["segments"]) == {"seg-1", "seg-2"}
    assert len(set(out[:400])) == 1
    seg2 = DynamicSegmenter().init_from_partition(
        blobs([[0, 0], [5, 5], [9, 0]], n=200), np.repeat(["seg-1", "seg-2", "seg-3"], 200)
    )
    seg2.active[2].weight = 0.1  # decayed away
    _, transitions, _ = apply_structure(
        seg2,
        blobs([[0, 0], [5, 5], [9, 0]], n=200),
        np.repeat(["seg-1", "seg-2", "seg-3"], 200),
        np.ones(600, bool),
        ["a", "b"],
        lambda: "seg-9",
    )
    assert [t["segments"] for t in transitions if t["type"] == "retired"] == [["seg-3"]]


def test_a_bimodal_segment_splits() -> None:
    X = blobs([[0, 0], [3, 0], [10, 10]], n=200)
    labels = np.array(["seg-1"] * 200 + ["seg-1"] * 200 + ["seg-2"] * 200, dtype=object)
    seg = DynamicSegmenter().init_from_partition(X, labels, {"seg-1": 0.0, "seg-2": 0.0})
    out, transitions, _ = apply_structure(
        seg, X, labels, np.ones(600, bool), ["a", "b"], lambda: "seg-3"
    )
    split = [t for t in transitions if t["type"] == "split"]
    assert split and split[0]["segments"] == ["seg-1", "seg-3"]
    assert len(set(out[:200])) == 1 and len(set(out[200:400])) == 1
    assert out[0] != out[300]


def test_refit_lineage_never_hands_newcomers_an_old_id() -> None:
    """A cluster made of new users is an emergence, not a survival of the nearest old id."""
    old_users = pd.Index(range(400))
    previous = pd.Series(["seg-1"] * 200 + ["seg-2"] * 200, index=old_users)
    X = blobs([[0, 0], [4, 0], [2, 6]], n=200)
    labels = pd.Series([0] * 200 + [1] * 200 + [2] * 200, index=range(600))
    # A few old users of seg-2 drift into the new group: still not enough to own it.
    labels.iloc[395:400] = 2
    out = match_refit(labels, previous, X, ["seg-1", "seg-2"])
    assert out.ids == {0: "seg-1", 1: "seg-2", 2: "seg-3"}
    kinds = {t["type"] for t in out.transitions}
    assert kinds == {"survival", "emergence"}


def test_refit_lineage_split_and_absorption() -> None:
    previous = pd.Series(["seg-1"] * 200 + ["seg-2"] * 100 + ["seg-3"] * 100, index=range(400))
    X = blobs([[0, 0], [3, 3], [6, 0]], n=200)[:400]
    # seg-1 splits into 0 and 1; seg-2 and seg-3 are absorbed into 2.
    labels = pd.Series([0] * 110 + [1] * 90 + [2] * 200, index=range(400))
    out = match_refit(labels, previous, X, ["seg-1", "seg-2", "seg-3"])
    kinds = {t["type"]: t["segments"] for t in out.transitions}
    assert out.ids[0] == "seg-1" and out.ids[1] == "seg-4"
    assert kinds["split"] == ["seg-1", "seg-4"]
    assert "absorption" in kinds
