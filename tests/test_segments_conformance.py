"""Contract every segmenter in ``METHODS`` must honour (determinism, ids, persistence, validation)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import AgglomerativeClustering
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from automation.errors import ValidationError
from automation.segments import (
    METHODS,
    BaseSegmenter,
    GaussianMixtureSegmenter,
    HDBSCANSegmenter,
    KMeansSegmenter,
    MiniBatchKMeansSegmenter,
    canonical_order,
    make_segmenter,
    nearest_centroid,
)
from automation.segments.hierarchical import cut_linkage, ward_linkage

K = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    X, _ = make_blobs(n_samples=1500, centers=K, n_features=4, cluster_std=1.0, random_state=7)
    return np.asarray(X, dtype=np.float64)


@pytest.fixture(scope="module", params=sorted(METHODS))
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def fitted(method: str, blobs: np.ndarray) -> BaseSegmenter:
    return make_segmenter(method, K, random_state=0).fit(blobs)


def test_registry_lists_every_method() -> None:
    assert set(METHODS) == {"kmeans", "minibatch", "gmm", "ward", "hdbscan"}
    for name, klass in METHODS.items():
        assert isinstance(make_segmenter(name, K, random_state=1), klass)


def test_learned_attributes(fitted: BaseSegmenter, blobs: np.ndarray) -> None:
    n, d = blobs.shape
    assert fitted.labels_.shape == (n,)
    assert fitted.labels_.dtype == np.int64
    assert fitted.n_segments_ == K
    assert fitted.cluster_centers_.shape == (K, d)
    assert fitted.outliers_.shape == (n,) and fitted.outliers_.dtype == bool
    assert fitted.n_features_in_ == d
    assert set(np.unique(fitted.labels_)) <= set(range(-1, K))
    assert set(range(K)) <= set(np.unique(fitted.labels_))
    # recovers the blobs (up to noise for the density method)
    _, truth = make_blobs(n_samples=1500, centers=K, n_features=4, cluster_std=1.0, random_state=7)
    keep = fitted.labels_ >= 0
    assert adjusted_rand_score(truth[keep], fitted.labels_[keep]) > 0.99


def test_centers_are_in_canonical_order(fitted: BaseSegmenter) -> None:
    order = canonical_order(fitted.cluster_centers_)
    np.testing.assert_array_equal(order, np.arange(fitted.n_segments_))


def test_seeded_fits_are_identical(method: str, blobs: np.ndarray, fitted: BaseSegmenter) -> None:
    again = make_segmenter(method, K, random_state=0).fit(blobs)
    np.testing.assert_array_equal(again.labels_, fitted.labels_)
    np.testing.assert_array_equal(again.cluster_centers_, fitted.cluster_centers_)
    np.testing.assert_array_equal(again.outliers_, fitted.outliers_)


def test_ids_do_not_depend_on_row_order(
    method: str, blobs: np.ndarray, fitted: BaseSegmenter
) -> None:
    perm = np.random.default_rng(3).permutation(len(blobs))
    shuffled = make_segmenter(method, K, random_state=0).fit(blobs[perm])
    # every row keeps its segment id, exactly (no tolerance on labels)
    np.testing.assert_array_equal(shuffled.labels_, fitted.labels_[perm])
    np.testing.assert_allclose(shuffled.cluster_centers_, fitted.cluster_centers_, atol=0.05)


def test_ids_do_not_depend_on_seed_for_clear_structure(method: str, blobs: np.ndarray) -> None:
    a = make_segmenter(method, K, random_state=1).fit(blobs)
    b = make_segmenter(method, K, random_state=2).fit(blobs)
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_save_load_round_trip(fitted: BaseSegmenter, blobs: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "segmenter.npz"
    fitted.save(path)
    with np.load(path, allow_pickle=False) as data:  # no pickled object inside
        assert "__meta__" in data.files
    loaded = BaseSegmenter.load(path)
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.predict(blobs), fitted.predict(blobs))
    np.testing.assert_array_equal(loaded.labels_, fitted.labels_)
    np.testing.assert_array_equal(loaded.outliers_, fitted.outliers_)
    np.testing.assert_array_equal(loaded.outlier_mask(blobs), fitted.outliers_)
    far = blobs * 3.0 + 40.0  # off-training data too
    np.testing.assert_array_equal(loaded.predict(far), fitted.predict(far))
    assert type(fitted).load(path).n_segments_ == fitted.n_segments_


def test_load_refuses_another_class(tmp_path: Path, blobs: np.ndarray) -> None:
    path = tmp_path / "gmm.npz"
    GaussianMixtureSegmenter(K, random_state=0).fit(blobs).save(path)
    with pytest.raises(ValidationError, match="holds a GaussianMixtureSegmenter"):
        KMeansSegmenter.load(path)
    bogus = tmp_path / "other.npz"
    np.savez(bogus, __meta__=np.array('{"format": "x"}'))
    with pytest.raises(ValidationError, match="not a saved Shoal segmenter"):
        BaseSegmenter.load(bogus)


def test_input_is_not_mutated(method: str, blobs: np.ndarray) -> None:
    X = blobs.copy()
    X[:3] *= 100.0  # with outliers, so that every code path runs
    before = X.copy()
    X.flags.writeable = False  # any in-place write would raise
    seg = make_segmenter(method, K, random_state=0).fit(X)
    seg.predict(X)
    seg.outlier_mask(X)
    np.testing.assert_array_equal(X, before)


def test_predict_on_training_data_matches_labels(fitted: BaseSegmenter, blobs: np.ndarray) -> None:
    inliers = ~fitted.outliers_
    np.testing.assert_array_equal(fitted.predict(blobs[inliers]), fitted.labels_[inliers])
    np.testing.assert_array_equal(fitted.predict(blobs), fitted.labels_)
    np.testing.assert_array_equal(fitted.fit_predict(blobs), fitted.labels_)


def test_clone_and_params(fitted: BaseSegmenter) -> None:
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "labels_")


@pytest.mark.parametrize(
    ("n_rows", "n_segments", "message"),
    [
        (50, 1, "n_segments=1 should be >= 2"),
        (3, 5, "n_users=3 should be >= n_segments=5"),
        (50, 2.5, "n_segments=2.5 should be an integer"),
    ],
)
def test_validation_messages(method: str, n_rows: int, n_segments: int, message: str) -> None:
    X = np.random.default_rng(0).normal(size=(n_rows, 3))
    with pytest.raises(ValidationError, match=re.escape(message)):
        make_segmenter(method, n_segments, random_state=0).fit(X)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"outlier_quantile": 1.5}, "outlier_quantile=1.5 should be a float in (0, 1]"),
        ({"sample_size": 3}, "sample_size=3 should be >= n_segments=4"),
        ({"random_state": -1}, "random_state=-1 should be >= 0"),
    ],
)
def test_common_parameter_validation(method: str, params: dict[str, object], message: str) -> None:
    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValidationError, match=re.escape(message)):
        make_segmenter(method, K, **params).fit(X)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("kmeans", {"n_init": 0}, "n_init=0 should be >= 1"),
        ("minibatch", {"batch_size": 0}, "batch_size=0 should be >= 1"),
        ("gmm", {"covariance_type": "round"}, "covariance_type='round' should be one of"),
        ("gmm", {"reg_covar": -1.0}, "reg_covar=-1.0 should be a float >= 0"),
        ("hdbscan", {"min_cluster_size": 1}, "min_cluster_size=1 should be >= 2"),
        ("hdbscan", {"noise_quantile": 0.0}, "noise_quantile=0.0 should be a float in (0, 1]"),
    ],
)
def test_method_parameter_validation(method: str, params: dict[str, object], message: str) -> None:
    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValidationError, match=re.escape(message)):
        make_segmenter(method, K, random_state=0, **params).fit(X)


def test_bad_inputs_and_unfitted_use(blobs: np.ndarray) -> None:
    seg = KMeansSegmenter(K, random_state=0)
    with pytest.raises(ValidationError, match="not fitted yet"):
        seg.predict(blobs)
    with pytest.raises(ValidationError, match=re.escape("X.ndim=1 should be 2")):
        seg.fit(blobs[:, 0])
    bad = blobs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValidationError, match="only finite values"):
        seg.fit(bad)
    seg.fit(blobs)
    with pytest.raises(ValidationError, match="X has 3 features but .* fitted on 4"):
        seg.predict(blobs[:, :3])
    with pytest.raises(ValidationError, match="n_segments=None is only allowed"):
        KMeansSegmenter(None).fit(blobs)


def test_make_segmenter_rejects_unknown_names() -> None:
    with pytest.raises(ValidationError, match=re.escape("method='dbscan' should be one of")) as e:
        make_segmenter("dbscan", K)
    assert "kmeans" in str(e.value) and "hdbscan" in str(e.value)
    with pytest.raises(ValidationError, match="n_clusters=3 is not a parameter of method='ward'"):
        make_segmenter("ward", K, n_clusters=3)


def test_outlier_rows_are_labelled_but_do_not_drag_centres(method: str, blobs: np.ndarray) -> None:
    X = blobs[:1000].copy()
    X[:4] *= 100.0
    clean = make_segmenter(method, K, random_state=0).fit(blobs[4:1000])
    dirty = make_segmenter(method, K, random_state=0).fit(X)
    np.testing.assert_array_equal(np.flatnonzero(dirty.outliers_)[:4], [0, 1, 2, 3])
    assert dirty.outliers_.sum() <= 6
    assert dirty.labels_.shape == (1000,)
    np.testing.assert_allclose(dirty.cluster_centers_, clean.cluster_centers_, atol=0.15)
    np.testing.assert_array_equal(dirty.labels_[4:], clean.labels_)


def test_hdbscan_reports_noise_and_needs_no_k(blobs: np.ndarray) -> None:
    X = np.vstack([blobs, np.random.default_rng(0).uniform(-15, 15, size=(60, 4))])
    seg = HDBSCANSegmenter(random_state=0).fit(X)
    assert seg.n_segments_ == K
    assert (seg.labels_ == -1).sum() > 30  # the scattered rows are noise, never dropped
    assert seg.labels_.shape == (len(X),)
    assert seg.radius_.shape == (K,)
    assert seg.min_cluster_size_ == max(10, len(X) // 100)
    far = np.full((1, 4), 1e3)
    assert seg.predict(far).tolist() == [-1]


def test_hdbscan_without_clusters_labels_everything_noise() -> None:
    X = np.random.default_rng(0).uniform(size=(30, 2))
    seg = HDBSCANSegmenter(min_cluster_size=30).fit(X)
    assert seg.n_segments_ == 0 and seg.cluster_centers_.shape == (0, 2)
    assert (seg.labels_ == -1).all() and (seg.predict(X[:3]) == -1).all()


def test_gmm_labels_follow_the_mixture(blobs: np.ndarray) -> None:
    seg = GaussianMixtureSegmenter(K, random_state=0).fit(blobs)
    np.testing.assert_array_equal(seg.labels_, seg.mapping_[seg.mixture_.predict(blobs)])
    assert sorted(seg.mapping_.tolist()) == list(range(K))


def test_gmm_fits_on_a_sample(blobs: np.ndarray) -> None:
    seg = GaussianMixtureSegmenter(K, random_state=0, sample_size=200).fit(blobs)
    assert seg.n_segments_ == K and seg.labels_.shape == (len(blobs),)


def test_ward_matches_sklearn_agglomerative(blobs: np.ndarray) -> None:
    X = blobs[:400]
    ours = cut_linkage(ward_linkage(X), 5)
    theirs = AgglomerativeClustering(n_clusters=5, linkage="ward").fit(X).labels_
    assert adjusted_rand_score(ours, theirs) == 1.0


def test_minibatch_partial_fit_keeps_ids(blobs: np.ndarray, tmp_path: Path) -> None:
    seg = MiniBatchKMeansSegmenter(K, random_state=0).fit(blobs[:500])
    first = seg.predict(blobs)
    absorbed = int(seg.counts_.sum())
    for start in range(500, 1500, 250):
        seg.partial_fit(blobs[start : start + 250])
        absorbed += int((~seg.outliers_).sum())
    assert seg.counts_.sum() == absorbed
    np.testing.assert_array_equal(seg.predict(blobs), first)
    np.testing.assert_array_equal(seg.labels_, first[1250:])
    # batch after a save/load round trip continues from the saved running means
    path = tmp_path / "mb.npz"
    seg.save(path)
    loaded = MiniBatchKMeansSegmenter.load(path)
    assert isinstance(loaded, MiniBatchKMeansSegmenter)
    seg.partial_fit(blobs[:100])
    loaded.partial_fit(blobs[:100])
    np.testing.assert_array_equal(loaded.cluster_centers_, seg.cluster_centers_)


def test_partial_fit_on_unfitted_is_fit(blobs: np.ndarray) -> None:
    a = MiniBatchKMeansSegmenter(K, random_state=0).partial_fit(blobs)
    b = MiniBatchKMeansSegmenter(K, random_state=0).fit(blobs)
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_nearest_centroid_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    X, C = rng.normal(size=(2500, 5)), rng.normal(size=(7, 5))
    labels, dist2 = nearest_centroid(X, C, chunk_rows=1000)
    brute = ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, brute.argmin(axis=1))
    np.testing.assert_allclose(dist2, brute.min(axis=1), atol=1e-9)


def test_canonical_order_is_independent_of_input_order() -> None:
    C = np.array([[1.0, 5.0], [0.0, 2.0], [1.0, -1.0], [-3.0, 0.0]])
    sorted_c = C[canonical_order(C)]
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(4)
        np.testing.assert_array_equal(C[perm][canonical_order(C[perm])], sorted_c)
    np.testing.assert_array_equal(sorted_c[:, 0], [-3.0, 0.0, 1.0, 1.0])
    assert sorted_c[2, 1] < sorted_c[3, 1]  # ties broken by the next feature
