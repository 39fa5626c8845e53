"""Quality report and robust outlier flagging."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.datasets import make_blobs
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

from automation.errors import ValidationError
from automation.segments import KMeansSegmenter, detect_outliers, quality_report

NAMES = ["recency", "frequency", "monetary"]


@pytest.fixture(scope="module")
def segmented() -> tuple[np.ndarray, KMeansSegmenter]:
    X, _ = make_blobs(n_samples=900, centers=3, n_features=3, cluster_std=0.5, random_state=4)
    return np.asarray(X), KMeansSegmenter(3, random_state=0, n_init=2).fit(X)


def test_report_structure_and_values(segmented: tuple[np.ndarray, KMeansSegmenter]) -> None:
    X, seg = segmented
    raw = pd.DataFrame(np.exp(X), columns=NAMES)
    rep = quality_report(X, seg.labels_, seg.cluster_centers_, NAMES, raw, stability_ari=0.97)
    json.dumps(rep)  # plain Python types only
    overall = rep["overall"]
    assert overall["n_users"] == 900 and overall["n_segments"] == 3
    assert overall["noise_share"] == 0.0 and overall["stability_ari"] == 0.97
    assert overall["silhouette"] > 0.7
    assert overall["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, seg.labels_))
    assert overall["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X, seg.labels_))
    segments = rep["segments"]
    assert sorted(segments) == [0, 1, 2]
    assert sum(s["size"] for s in segments.values()) == 900
    assert math.isclose(sum(s["share"] for s in segments.values()), 1.0)
    for label, s in segments.items():
        assert 0 < s["representativeness"] < 0.5  # tight blobs
        assert s["separation"] > 1.0  # far apart
        assert [d["feature"] for d in s["distinguishing"]] != []
        assert len(s["distinguishing"]) == 3
        smds = [abs(d["smd"]) for d in s["distinguishing"]]
        assert smds == sorted(smds, reverse=True)
        members = seg.labels_ == label
        top = s["distinguishing"][0]
        j = NAMES.index(top["feature"])
        expected = (X[members, j].mean() - X[:, j].mean()) / X[:, j].std()
        assert top["smd"] == pytest.approx(expected)
        assert s["profile"]["monetary"] == pytest.approx(raw.loc[members, "monetary"].median())


def test_noise_is_its_own_entry(segmented: tuple[np.ndarray, KMeansSegmenter]) -> None:
    X, seg = segmented
    labels = seg.labels_.copy()
    labels[:50] = -1
    rep = quality_report(X, labels, seg.cluster_centers_, NAMES)
    assert rep["overall"]["noise_share"] == pytest.approx(50 / 900)
    noise = rep["segments"][-1]
    assert noise["size"] == 50 and noise["representativeness"] is None
    assert noise["separation"] is None
    keep = labels >= 0
    assert rep["overall"]["davies_bouldin"] == pytest.approx(
        davies_bouldin_score(X[keep], labels[keep])
    )


def test_single_segment_is_safe(segmented: tuple[np.ndarray, KMeansSegmenter]) -> None:
    X, _ = segmented
    rep = quality_report(X, np.zeros(len(X), dtype=int), X.mean(axis=0, keepdims=True))
    assert rep["overall"]["silhouette"] is None and rep["overall"]["davies_bouldin"] is None
    assert rep["segments"][0]["separation"] is None
    assert rep["segments"][0]["distinguishing"][0]["feature"] == "x0"
    json.dumps(rep)


def test_report_validation(segmented: tuple[np.ndarray, KMeansSegmenter]) -> None:
    X, seg = segmented
    with pytest.raises(ValidationError, match=re.escape("len(feature_names)=2 should be 3")):
        quality_report(X, seg.labels_, seg.cluster_centers_, NAMES[:2])
    with pytest.raises(ValidationError, match=re.escape("labels.shape=(10,) should be (900,)")):
        quality_report(X, seg.labels_[:10], seg.cluster_centers_)
    with pytest.raises(ValidationError, match="only 2 centers given"):
        quality_report(X, seg.labels_, seg.cluster_centers_[:2])


def test_extreme_rows_are_flagged() -> None:
    X, _ = make_blobs(n_samples=1000, centers=3, n_features=4, random_state=2)
    X[[10, 200, 500, 900]] *= 100.0
    assert np.flatnonzero(detect_outliers(X)).tolist() == [10, 200, 500, 900]


@pytest.mark.parametrize("d", [1, 4, 15])
def test_clean_gaussian_data_has_no_outliers(d: int) -> None:
    X = np.random.default_rng(d).normal(size=(20_000, d))
    assert detect_outliers(X).sum() == 0


def test_zero_inflated_feature_does_not_flag_its_non_zeros() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=5000), (rng.uniform(size=5000) < 0.1).astype(float)])
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    assert detect_outliers(X).sum() == 0


def test_outlier_quantile_validation() -> None:
    with pytest.raises(
        ValidationError, match=re.escape("outlier_quantile=0.0 should be in (0, 1]")
    ):
        detect_outliers(np.zeros((5, 2)), 0.0)
    assert not detect_outliers(np.zeros((5, 2)), 1.0).any()


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(5, 300), st.integers(1, 4)),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    ),
    st.sampled_from([0.9, 0.99, 0.995]),
)
def test_flags_at_most_the_quantile_share(X: np.ndarray, q: float) -> None:
    before = X.copy()
    mask = detect_outliers(X, q)
    assert mask.shape == (len(X),)
    assert mask.sum() <= math.ceil((1 - q) * len(X)) + 1
    np.testing.assert_array_equal(X, before)
