"""Behavioural segmentation of already-scaled user features.

Every segmenter follows one contract (:class:`BaseSegmenter`): robust outliers are flagged and left
out of fitting, clusters get canonical ids (sorted by centre), every row is labelled, and a fitted
model round-trips through ``save``/``load`` as a pickle-free ``.npz`` file.
"""

from automation.segments.base import BaseSegmenter, canonical_order, nearest_centroid
from automation.segments.density import NOISE, HDBSCANSegmenter
from automation.segments.hierarchical import WardSegmenter
from automation.segments.kmeans import KMeansSegmenter, MiniBatchKMeansSegmenter
from automation.segments.mixture import GaussianMixtureSegmenter
from automation.segments.naming import NOISE_NAME, name_segments, segment_profiles
from automation.segments.outliers import detect_outliers, fit_outlier_model
from automation.segments.quality import cluster_metrics, quality_report, stability_ari
from automation.segments.registry import METHODS, make_segmenter
from automation.segments.select_k import KSelection, select_k

__all__ = [
    "METHODS",
    "NOISE",
    "NOISE_NAME",
    "BaseSegmenter",
    "GaussianMixtureSegmenter",
    "HDBSCANSegmenter",
    "KMeansSegmenter",
    "KSelection",
    "MiniBatchKMeansSegmenter",
    "WardSegmenter",
    "canonical_order",
    "cluster_metrics",
    "detect_outliers",
    "fit_outlier_model",
    "make_segmenter",
    "name_segments",
    "nearest_centroid",
    "quality_report",
    "segment_profiles",
    "select_k",
    "stability_ari",
]
