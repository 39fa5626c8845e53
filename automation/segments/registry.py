"""Name -> segmenter class, and a factory that validates the name."""

from __future__ import annotations

from typing import Any

from automation.errors import ValidationError
from automation.segments.base import BaseSegmenter
from automation.segments.density import HDBSCANSegmenter
from automation.segments.hierarchical import WardSegmenter
from automation.segments.kmeans import KMeansSegmenter, MiniBatchKMeansSegmenter
from automation.segments.mixture import GaussianMixtureSegmenter

METHODS: dict[str, type[BaseSegmenter]] = {
    "kmeans": KMeansSegmenter,
    "minibatch": MiniBatchKMeansSegmenter,
    "gmm": GaussianMixtureSegmenter,
    "ward": WardSegmenter,
    "hdbscan": HDBSCANSegmenter,
}


def make_segmenter(
    method: str, n_segments: int | None, random_state: int | None = None, **params: Any
) -> BaseSegmenter:
    """An unfitted segmenter of ``method`` (a key of :data:`METHODS`).

    Parameters are only stored here; they are validated by ``fit``. Unknown keyword parameters
    raise :class:`~automation.errors.ValidationError` naming the accepted ones.

    >>> make_segmenter("kmeans", 4, random_state=0, n_init=2)
    KMeansSegmenter(n_init=2, n_segments=4, random_state=0)
    """
    klass = METHODS.get(method)
    if klass is None:
        raise ValidationError(f"method={method!r} should be one of {sorted(METHODS)}")
    accepted = set(klass._get_param_names()) - {"n_segments", "random_state"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValidationError(
            f"{unknown[0]}={params[unknown[0]]!r} is not a parameter of method={method!r} "
            f"(accepted: {sorted(accepted)})"
        )
    return klass(n_segments=n_segments, random_state=random_state, **params)
