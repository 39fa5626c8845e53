"""Segment quality: internal validity metrics, bootstrap stability and per-segment diagnostics."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
)

from automation.errors import ValidationError
from automation.segments.base import BaseSegmenter, FloatArray, IntArray, _check_int, as_matrix
from automation.segments.density import NOISE
from automation.segments.naming import segment_profiles

#: Number of features listed as ``distinguishing`` per segment.
TOP_FEATURES = 3


def _opt(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def silhouette_many(
    X: FloatArray,
    labelings: Sequence[IntArray],
    *,
    random_state: int | None = 0,
    sample_size: int = 10_000,
) -> list[float | None]:
    """Mean silhouette of several labelings of the same rows, sharing one distance pass.

    All labelings are scored on the same seeded sample of at most ``sample_size`` rows; noise
    (``-1``) rows are left out of each labeling's score. Distances are computed in blocks of
    rows, so memory stays ``O(block * sample_size)``. ``None`` when fewer than 2 segments (or
    no non-singleton segment) remain. Matches :func:`sklearn.metrics.silhouette_score`.
    """
    n = X.shape[0]
    idx = np.arange(n)
    if n > sample_size:
        idx = np.sort(
            np.random.default_rng(random_state).choice(n, size=sample_size, replace=False)
        )
    Xs = X[idx]
    m = len(idx)
    blocks, offsets = [], [0]
    for labels in labelings:
        lab = np.asarray(labels, dtype=np.int64)[idx]
        present, inv = np.unique(lab[lab != NOISE], return_inverse=True)
        onehot = np.zeros((m, len(present)))
        onehot[np.flatnonzero(lab != NOISE), inv] = 1.0
        blocks.append(onehot)
        offsets.append(offsets[-1] + len(present))
    onehots = np.hstack(blocks) if blocks else np.zeros((m, 0))
    sums = np.empty((m, onehots.shape[1]))
    sq = np.einsum("ij,ij->i", Xs, Xs)
    step = max(1, 4_000_000 // max(m, 1))
    for start in range(0, m, step):
        stop = min(start + step, m)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (Xs[start:stop] @ Xs.T)
        d = np.sqrt(np.maximum(d2, 0.0))
        d[np.arange(stop - start), np.arange(start, stop)] = 0.0
        sums[start:stop] = d @ onehots
    out: list[float | None] = []
    for j, onehot in enumerate(blocks):
        cols = slice(offsets[j], offsets[j + 1])
        rows = onehot.sum(axis=1) > 0
        sizes = onehot.sum(axis=0)
        if len(sizes) < 2 or not (sizes > 1).any():
            out.append(None)
            continue
        own = onehot[rows].argmax(axis=1)
        s = sums[rows, cols]
        n_own = sizes[own]
        a = s[np.arange(len(own)), own] / np.maximum(n_own - 1, 1)
        mean_other = s / sizes
        mean_other[np.arange(len(own)), own] = np.inf
        b = mean_other.min(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sil = np.where(n_own > 1, (b - a) / np.maximum(a, b), 0.0)
        out.append(_opt(float(np.nan_to_num(sil).mean())))
    return out


def cluster_metrics(
    X: FloatArray,
    labels: IntArray,
    *,
    random_state: int | None = 0,
    sample_size: int = 10_000,
    silhouette: bool = True,
) -> dict[str, float | None]:
    """Silhouette (on a seeded sample of at most ``sample_size`` rows; skipped, i.e. ``None``,
    with ``silhouette=False``), Davies-Bouldin and Calinski-Harabasz over the non-noise rows;
    ``None`` where undefined (fewer than 2 segments)."""
    keep = labels != NOISE
    Xk, lk = X[keep], labels[keep]
    out: dict[str, float | None] = {
        "silhouette": None,
        "davies_bouldin": None,
        "calinski_harabasz": None,
    }
    n_labels = len(np.unique(lk))
    if n_labels < 2 or n_labels >= len(lk):
        return out
    out["davies_bouldin"] = _opt(davies_bouldin_score(Xk, lk))
    out["calinski_harabasz"] = _opt(calinski_harabasz_score(Xk, lk))
    if silhouette:
        out["silhouette"] = silhouette_many(
            Xk, [lk], random_state=random_state, sample_size=sample_size
        )[0]
    return out


EstimatorFactory = Callable[[], BaseSegmenter] | Callable[[int], BaseSegmenter]


def _build(make_estimator: EstimatorFactory, seed: int) -> BaseSegmenter:
    """``make_estimator(seed)`` when it takes a positional argument, else ``make_estimator()``."""
    try:
        params = inspect.signature(make_estimator).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        params = None
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    if params is not None and any(p.kind in positional for p in params):
        return make_estimator(seed)  # type: ignore[call-arg]
    return make_estimator()  # type: ignore[call-arg]


def stability_ari(
    make_estimator: EstimatorFactory,
    X: Any,
    n_bootstrap: int = 5,
    random_state: int | None = 0,
    *,
    reference: BaseSegmenter | None = None,
) -> float:
    """Mean adjusted Rand index between a full-data fit and fits on bootstrap resamples.

    Each bootstrap fit is compared with the reference on the distinct rows its resample covers,
    both labelling those rows with ``predict``.

    Parameters
    ----------
    make_estimator : callable
        ``seed -> unfitted segmenter`` (each fit then gets a fresh seed drawn from
        ``random_state``, so sensitivity to the initialisation counts as instability too), or
        ``() -> unfitted segmenter`` (every fit uses the estimator's own ``random_state``).
    X : array of shape (n_users, n_features)
    n_bootstrap : int, default 5
    random_state : int or None, default 0
        Seeds the resamples (and the reference fit when ``reference`` is not given).
    reference : fitted segmenter, optional
        The full-data fit, when the caller already has it.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from automation.segments.kmeans import KMeansSegmenter
    >>> X, _ = make_blobs(n_samples=300, centers=3, cluster_std=0.5, random_state=0)
    >>> round(stability_ari(lambda s: KMeansSegmenter(3, random_state=s), X, 3), 2)
    1.0
    """
    X = as_matrix(X)
    _check_int("n_bootstrap", n_bootstrap, 1)
    rng = np.random.default_rng(random_state)
    ref = reference
    if ref is None:
        ref = _build(make_estimator, int(rng.integers(2**31 - 1))).fit(X)
    n = X.shape[0]
    scores = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, size=n)
        with warnings.catch_warnings():
            # resamples repeat rows; on tiny data fewer distinct rows than K is expected
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = _build(make_estimator, int(rng.integers(2**31 - 1))).fit(X[idx])
        rows = X[np.unique(idx)]
        scores.append(adjusted_rand_score(ref.predict(rows), est.predict(rows)))
    return float(np.mean(scores))


def _row_norms(D: FloatArray) -> FloatArray:
    return np.sqrt(np.einsum("ij,ij->i", D, D))


def quality_report(
    X: Any,
    labels: Any,
    centers: Any,
    feature_names: Sequence[str] | None = None,
    raw: pd.DataFrame | None = None,
    random_state: int | None = 0,
    sample_size: int = 10_000,
    stability_ari: float | None = None,
) -> dict[str, Any]:
    """Overall validity metrics and per-segment diagnostics of a segmentation.

    Parameters
    ----------
    X : array of shape (n_users, n_features)
        The scaled features the segmentation was computed on.
    labels : array of shape (n_users,)
        Segment per row; ``-1`` is density noise (reported as its own entry).
    centers : array of shape (n_segments, n_features)
        Centre of segment ``i`` in row ``i``.
    feature_names : sequence of str, optional
        Names of the columns of ``X`` (default ``x0, x1, ...``).
    raw : DataFrame, optional
        Raw per-user features aligned with ``X``; adds each segment's median ``profile``.
    random_state, sample_size
        Seed and size of the silhouette sample.
    stability_ari : float, optional
        Copied into ``overall`` (compute it with :func:`stability_ari`).

    Returns
    -------
    dict
        ``{"overall": {...}, "segments": {label: {...}}}``. ``overall`` holds ``n_users``,
        ``n_segments``, ``noise_share``, ``silhouette``, ``davies_bouldin``,
        ``calinski_harabasz`` and ``stability_ari`` (``None`` when undefined). Each segment holds
        ``size``, ``share``, ``representativeness`` (mean member distance to the centre over the
        mean distance of all rows to the global mean; lower is tighter), ``separation``
        (distance to the nearest other centre over the same denominator; higher is better),
        ``distinguishing`` (top 3 ``{"feature", "smd"}`` by absolute standardised mean
        difference from the population) and, with ``raw``, ``profile``.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from automation.segments.kmeans import KMeansSegmenter
    >>> X, _ = make_blobs(n_samples=300, centers=3, cluster_std=0.5, random_state=0)
    >>> seg = KMeansSegmenter(3, random_state=0).fit(X)
    >>> rep = quality_report(X, seg.labels_, seg.cluster_centers_, ["a", "b"])
    >>> sorted(rep["segments"]) == [0, 1, 2] and rep["overall"]["silhouette"] > 0.5
    True
    """
    X = as_matrix(X)
    labels = np.asarray(labels, dtype=np.int64)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, X.shape[1])
    n, d = X.shape
    if labels.shape != (n,):
        raise ValidationError(f"labels.shape={labels.shape} should be ({n},) like X's rows")
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(d)]
    if len(names) != d:
        raise ValidationError(f"len(feature_names)={len(names)} should be {d} (X's columns)")
    if raw is not None and len(raw) != n:
        raise ValidationError(f"len(raw)={len(raw)} should be {n} (X's rows)")
    if labels.max(initial=-1) >= len(centers):
        raise ValidationError(f"labels reach {labels.max()} but only {len(centers)} centers given")

    pop_mean = X.mean(axis=0)
    pop_std = X.std(axis=0)
    spread = float(_row_norms(X - pop_mean).mean())
    spread = spread if spread > 0 else 1.0
    metrics = cluster_metrics(X, labels, random_state=random_state, sample_size=sample_size)
    present = np.unique(labels)
    n_noise = int((labels == NOISE).sum())
    overall: dict[str, Any] = {
        "n_users": n,
        "n_segments": int((present != NOISE).sum()),
        "noise_share": n_noise / n,
        **metrics,
        "stability_ari": None if stability_ari is None else float(stability_ari),
    }
    profiles = segment_profiles(raw, labels) if raw is not None else None
    segments: dict[int, dict[str, Any]] = {}
    for label in present.tolist():
        members = X[labels == label]
        entry: dict[str, Any] = {"size": len(members), "share": len(members) / n}
        if label == NOISE:
            entry["representativeness"] = None
            entry["separation"] = None
        else:
            c = centers[label]
            entry["representativeness"] = float(_row_norms(members - c).mean()) / spread
            others = np.delete(centers, label, axis=0)
            entry["separation"] = (
                float(_row_norms(others - c).min()) / spread if len(others) else None
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            smd = np.where(pop_std > 0, (members.mean(axis=0) - pop_mean) / pop_std, 0.0)
        top = np.argsort(-np.abs(smd), kind="stable")[:TOP_FEATURES]
        entry["distinguishing"] = [{"feature": names[j], "smd": float(smd[j])} for j in top]
        if profiles is not None:
            entry["profile"] = {str(k): _opt(float(v)) for k, v in profiles.loc[label].items()}
        segments[int(label)] = entry
    return {"overall": overall, "segments": segments}
