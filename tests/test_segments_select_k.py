"""Choosing K: criteria table, stability gate, reason text, bounded cost."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from automation.errors import ValidationError
from automation.segments import BaseSegmenter, KMeansSegmenter, select_k, stability_ari
from automation.segments.quality import silhouette_many


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def four_blobs() -> np.ndarray:
    X, _ = make_blobs(n_samples=1200, centers=4, n_features=4, cluster_std=0.8, random_state=11)
    return np.asarray(X)


@pytest.mark.parametrize("method", ["kmeans", "gmm", "ward", "minibatch"])
def test_finds_four_well_separated_blobs(four_blobs: np.ndarray, method: str) -> None:
    sel = select_k(four_blobs, method=method, n_bootstrap=3)
    assert sel.best_k == 4
    assert sel.method == method
    assert sel.table["k"].tolist() == list(range(2, 11))
    for col in ["silhouette", "davies_bouldin", "calinski_harabasz", "stability_ari"]:
        assert col in sel.table and f"{col}_rank" in sel.table
        assert sel.table[col].notna().all()
    assert {"mean_rank", "eligible", "selected"} <= set(sel.table.columns)
    assert sel.table["selected"].sum() == 1
    assert int(sel.table.loc[sel.table["selected"], "k"].iloc[0]) == 4
    assert sel.reason.startswith("k=4: best mean rank")
    for word in ["silhouette (", "Davies-Bouldin (", "Calinski-Harabasz (", "stability ARI ("]:
        assert word in sel.reason


def test_table_is_consistent(four_blobs: np.ndarray) -> None:
    sel = select_k(four_blobs, k_range=[6, 2, 3, 3, 4], n_bootstrap=2)
    t = sel.table
    assert t["k"].tolist() == [2, 3, 4, 6]
    best = t.loc[t["k"] == sel.best_k].iloc[0]
    assert best["silhouette_rank"] == 1 and best["silhouette"] == t["silhouette"].max()
    assert best["davies_bouldin"] == t["davies_bouldin"].min()
    ranks = t[[c for c in t.columns if c.endswith("_rank") and c != "mean_rank"]]
    np.testing.assert_allclose(t["mean_rank"], ranks.mean(axis=1))
    assert t.loc[t["eligible"], "mean_rank"].min() == best["mean_rank"]
    assert "k in [2, 3, 4, 6]" in sel.reason


def test_deterministic(four_blobs: np.ndarray) -> None:
    a = select_k(four_blobs, k_range=range(2, 6), n_bootstrap=2, random_state=5)
    b = select_k(four_blobs, k_range=range(2, 6), n_bootstrap=2, random_state=5)
    assert a.reason == b.reason
    assert a.table.equals(b.table)


def test_unstable_k_are_excluded_and_said_so() -> None:
    # uniform noise: no real structure, so most K flip between resamples
    X = np.random.default_rng(0).uniform(size=(600, 2))
    sel = select_k(X, k_range=range(2, 13), n_bootstrap=4, min_stability=0.9)
    t = sel.table
    stable = t["stability_ari"] >= 0.9
    assert stable.any() and (~stable).any()  # this seed gives both kinds
    assert (t["eligible"] == stable).all()
    assert bool(t.loc[t["k"] == sel.best_k, "eligible"].iloc[0])
    excluded = ", ".join(f"k={k}" for k in t.loc[~stable, "k"])
    assert f"Excluded as unstable (stability ARI < 0.90): {excluded}." in sel.reason


def test_no_k_stable_means_none_excluded() -> None:
    X = np.random.default_rng(1).uniform(size=(300, 2))
    sel = select_k(X, k_range=range(5, 9), n_bootstrap=2, min_stability=1.0)
    if not (sel.table["stability_ari"] >= 1.0).any():
        assert sel.table["eligible"].all()
        assert "No K reached stability ARI >= 1.00" in sel.reason


def test_k_range_is_capped_to_n_minus_one() -> None:
    X = np.random.default_rng(0).normal(size=(6, 2))
    sel = select_k(X, n_bootstrap=1)
    assert sel.table["k"].tolist() == [2, 3, 4, 5]
    assert "Not tried (outside 2..n_users-1): k=6, k=7, k=8, k=9, k=10." in sel.reason


def test_hdbscan_is_not_selected_but_reported(four_blobs: np.ndarray) -> None:
    sel = select_k(four_blobs, method="hdbscan", n_bootstrap=2)
    assert sel.best_k == 4
    assert len(sel.table) == 1 and int(sel.table["k"].iloc[0]) == 4
    assert "does not apply to hdbscan" in sel.reason


def test_validation() -> None:
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValidationError, match=re.escape("method='kmedoids' should be one of")):
        select_k(X, method="kmedoids")
    with pytest.raises(ValidationError, match=re.escape("k_range=[1, 60] has no K in [2, n_users")):
        select_k(X, k_range=[1, 60])
    with pytest.raises(ValidationError, match="n_bootstrap=0 should be >= 1"):
        select_k(X, n_bootstrap=0)


def test_cost_is_bounded_by_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    X, _ = make_blobs(n_samples=60_000, centers=3, n_features=3, random_state=0)
    seen: list[int] = []
    original = BaseSegmenter.fit

    def spy(self: BaseSegmenter, X: Any, y: object = None) -> BaseSegmenter:
        seen.append(len(X))
        return original(self, X, y)

    monkeypatch.setattr(BaseSegmenter, "fit", spy)
    start = time.perf_counter()
    sel = select_k(X, k_range=range(2, 5), fit_sample_size=3_000, sample_size=1_000, n_bootstrap=2)
    assert sel.best_k == 3
    assert max(seen) == 3_000 and seen.count(3_000) == 3  # one reference fit per K
    assert time.perf_counter() - start < 20


def test_silhouette_many_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    a, b = rng.integers(0, 3, 300), rng.integers(0, 5, 300)
    b[:20] = -1  # noise rows are left out
    ours = silhouette_many(X, [a, b], sample_size=10_000)
    assert ours[0] == pytest.approx(silhouette_score(X, a), abs=1e-10)
    assert ours[1] == pytest.approx(silhouette_score(X[20:], b[20:]), abs=1e-10)
    assert silhouette_many(X, [np.zeros(300, dtype=np.int64)]) == [None]


def test_stability_ari(four_blobs: np.ndarray) -> None:
    def make(seed: int) -> KMeansSegmenter:
        return KMeansSegmenter(4, random_state=seed, n_init=2)

    assert stability_ari(make, four_blobs, n_bootstrap=3) == pytest.approx(1.0)
    # a factory without a seed argument is accepted too (its own random_state is used)
    fixed = stability_ari(lambda: KMeansSegmenter(4, random_state=0), four_blobs, 2, 0)
    assert fixed == pytest.approx(1.0)
    noise = np.random.default_rng(0).uniform(size=(400, 2))
    shaky = stability_ari(lambda s: KMeansSegmenter(12, random_state=s, n_init=1), noise, 3)
    assert shaky < 0.95
