"""Choosing the number of segments: four criteria, combined by mean rank, gated by stability."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from automation.errors import ValidationError
from automation.segments.base import FloatArray, _check_int, as_matrix
from automation.segments.quality import cluster_metrics, silhouette_many, stability_ari
from automation.segments.registry import METHODS, make_segmenter

#: criterion column -> (label used in the reason, True when higher is better)
CRITERIA: dict[str, tuple[str, bool]] = {
    "silhouette": ("silhouette", True),
    "davies_bouldin": ("Davies-Bouldin", False),
    "calinski_harabasz": ("Calinski-Harabasz", True),
    "stability_ari": ("stability ARI", True),
}


@dataclass(frozen=True)
class KSelection:
    """Outcome of :func:`select_k`.

    Attributes
    ----------
    best_k : int
        The chosen number of segments.
    table : DataFrame
        One row per K tried: ``k``, the four criteria, their ``*_rank`` (1 = best),
        ``mean_rank`` (the combined score, lower is better), ``eligible`` (passes the stability
        gate) and ``selected``.
    reason : str
        Why ``best_k`` won, in one or two sentences.
    method : str
        The segmentation method evaluated.
    """

    best_k: int
    table: pd.DataFrame
    reason: str
    method: str


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _span(ks: list[int]) -> str:
    contiguous = ks == list(range(ks[0], ks[-1] + 1))
    return f"k={ks[0]}..{ks[-1]}" if contiguous and len(ks) > 2 else f"k in {ks}"


def _sample(X: FloatArray, size: int, rng: np.random.Generator) -> FloatArray:
    if X.shape[0] <= size:
        return X
    return X[np.sort(rng.choice(X.shape[0], size=size, replace=False))]


def select_k(
    X: Any,
    method: str = "kmeans",
    k_range: Iterable[int] = range(2, 11),
    random_state: int | None = 0,
    sample_size: int = 10_000,
    n_bootstrap: int = 5,
    *,
    fit_sample_size: int = 50_000,
    min_stability: float = 0.6,
    **params: Any,
) -> KSelection:
    """Pick the number of segments for ``method`` on scaled features ``X``.

    For each K the segmenter is fitted on a seeded sample of at most ``fit_sample_size`` rows.
    Davies-Bouldin and Calinski-Harabasz are computed on that sample, the silhouette and the
    bootstrap stability (:func:`~automation.segments.quality.stability_ari`) on a sub-sample of
    at most ``sample_size`` rows, so the cost is bounded whatever the number of users. Criteria are
    ranked across K (1 = best) and K are compared by mean rank; when any K reaches
    ``stability_ari >= min_stability``, the K below it are excluded. Ties go to the higher
    silhouette, then the smaller K. For ``"hdbscan"`` the density decides: its K is returned
    with a reason saying so.

    Parameters
    ----------
    X : array of shape (n_users, n_features)
    method : str, default "kmeans"
        A key of :data:`~automation.segments.registry.METHODS`.
    k_range : iterable of int, default range(2, 11)
        Candidate K; capped to ``[2, n_users - 1]``.
    random_state : int or None, default 0
    sample_size : int, default 10_000
    n_bootstrap : int, default 5
    fit_sample_size : int, default 50_000
    min_stability : float, default 0.6
    **params
        Extra parameters of the method (e.g. ``n_init=2``).

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(n_samples=400, centers=3, random_state=1)
    >>> sel = select_k(X, k_range=range(2, 6), n_bootstrap=2)
    >>> sel.best_k, list(sel.table["k"])
    (3, [2, 3, 4, 5])
    """
    X = as_matrix(X)
    if method not in METHODS:
        raise ValidationError(f"method={method!r} should be one of {sorted(METHODS)}")
    _check_int("sample_size", sample_size, 3)
    _check_int("fit_sample_size", fit_sample_size, 3)
    _check_int("n_bootstrap", n_bootstrap, 1)
    if not 0.0 <= min_stability <= 1.0:
        raise ValidationError(f"min_stability={min_stability!r} should be in [0, 1]")
    rng = np.random.default_rng(random_state)
    fit_rows = _sample(X, fit_sample_size, rng)
    eval_rows = _sample(fit_rows, sample_size, rng)

    if method == "hdbscan":
        return _density(fit_rows, eval_rows, random_state, sample_size, n_bootstrap, params)

    requested = sorted({int(k) for k in k_range})
    k_max = eval_rows.shape[0] - 1
    ks = [k for k in requested if 2 <= k <= k_max]
    if not ks:
        raise ValidationError(
            f"k_range={requested} has no K in [2, n_users - 1 = {X.shape[0] - 1}]"
        )
    rows, labelings = [], []
    for k in ks:
        seg = make_segmenter(method, k, random_state, **params).fit(fit_rows)
        labelings.append(seg.labels_)
        row: dict[str, Any] = {"k": k}
        metrics = cluster_metrics(fit_rows, seg.labels_, silhouette=False)
        row.update({m: np.nan if v is None else v for m, v in metrics.items()})
        row["stability_ari"] = stability_ari(
            partial(make_segmenter, method, k, **params),
            eval_rows,
            n_bootstrap,
            random_state,
            reference=seg,
        )
        rows.append(row)
    silhouettes = silhouette_many(
        fit_rows, labelings, random_state=random_state, sample_size=sample_size
    )
    table = pd.DataFrame(rows)
    table["silhouette"] = [np.nan if v is None else v for v in silhouettes]
    table = table[["k", *CRITERIA]]
    for col, (_, higher) in CRITERIA.items():
        rank = table[col].rank(ascending=not higher, method="min", na_option="bottom")
        table[f"{col}_rank"] = rank.astype(int)
    table["mean_rank"] = table[[f"{c}_rank" for c in CRITERIA]].mean(axis=1)
    stable = table["stability_ari"] >= min_stability
    table["eligible"] = stable if stable.any() else True
    pool = table[table["eligible"]].sort_values(
        ["mean_rank", "silhouette", "k"], ascending=[True, False, True], na_position="last"
    )
    best = int(pool.iloc[0]["k"])
    table["selected"] = table["k"] == best
    return KSelection(
        best, table, _reason(table, best, method, requested, ks, min_stability), method
    )


def _reason(
    table: pd.DataFrame,
    best: int,
    method: str,
    requested: list[int],
    ks: list[int],
    min_stability: float,
) -> str:
    row = table.loc[table["k"] == best].iloc[0]
    parts = [
        f"{label} ({_fmt(float(row[col]))}, rank {int(row[col + '_rank'])})"
        for col, (label, _) in CRITERIA.items()
    ]
    text = (
        f"k={best}: best mean rank ({row['mean_rank']:.2f}) over {', '.join(parts)} "
        f"among {_span(ks)} ({method})."
    )
    excluded = table.loc[~table["eligible"], "k"].tolist()
    if excluded:
        text += (
            f" Excluded as unstable (stability ARI < {min_stability:.2f}): "
            + ", ".join(f"k={k}" for k in excluded)
            + "."
        )
    elif not (table["stability_ari"] >= min_stability).any():
        text += (
            f" No K reached stability ARI >= {min_stability:.2f}, so none was excluded;"
            " treat the segmentation with caution."
        )
    dropped = sorted(set(requested) - set(ks))
    if dropped:
        text += f" Not tried (outside 2..n_users-1): {', '.join(f'k={k}' for k in dropped)}."
    return text


def _density(
    fit_rows: FloatArray,
    eval_rows: FloatArray,
    random_state: int | None,
    sample_size: int,
    n_bootstrap: int,
    params: dict[str, Any],
) -> KSelection:
    seg = make_segmenter("hdbscan", None, random_state, **params).fit(fit_rows)
    metrics = cluster_metrics(
        fit_rows, seg.labels_, random_state=random_state, sample_size=sample_size
    )
    ari = stability_ari(
        partial(make_segmenter, "hdbscan", None, **params),
        eval_rows,
        n_bootstrap,
        random_state,
        reference=seg,
    )
    k = int(seg.n_segments_)
    row: dict[str, Any] = {"k": k, **{m: np.nan if v is None else v for m, v in metrics.items()}}
    row["stability_ari"] = ari
    table = pd.DataFrame([row])
    for col in CRITERIA:
        table[f"{col}_rank"] = 1
    table["mean_rank"] = 1.0
    table["eligible"] = True
    table["selected"] = True
    noise = float((seg.labels_ == -1).mean())
    reason = (
        f"k={k}: select_k does not apply to hdbscan, whose density decides the number of "
        f"segments; it found {k} segment(s) plus {noise:.0%} noise "
        f"(silhouette {_fmt(row['silhouette'])}, stability ARI {_fmt(ari)})."
    )
    return KSelection(k, table, reason, "hdbscan")
