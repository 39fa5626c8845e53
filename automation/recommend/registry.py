"""Name -> recommender class, a factory that validates names and parameters, and tuning grids."""

from __future__ import annotations

from typing import Any

from automation.errors import ValidationError
from automation.recommend.als import ALSRecommender
from automation.recommend.base import Recommender, Rules
from automation.recommend.content import ContentRecommender
from automation.recommend.ease import EASERecommender
from automation.recommend.hybrid import HybridRecommender
from automation.recommend.knn import ItemKNNRecommender
from automation.recommend.popularity import PopularityRecommender, SegmentPopularityRecommender

MODELS: dict[str, type[Recommender]] = {
    "popularity": PopularityRecommender,
    "segment-popularity": SegmentPopularityRecommender,
    "item-knn": ItemKNNRecommender,
    "als": ALSRecommender,
    "content": ContentRecommender,
    "ease": EASERecommender,
    "hybrid": HybridRecommender,
}


def make_recommender(
    name: str, rules: Rules | None = None, random_state: int = 0, **params: Any
) -> Recommender:
    """An unfitted recommender of backend ``name`` (a key of :data:`MODELS`).

    Unknown names or parameters raise :class:`~automation.errors.ValidationError`.

    >>> make_recommender("item-knn", k=50)
    ItemKNNRecommender(k=50)
    """
    klass = MODELS.get(name)
    if klass is None:
        raise ValidationError(f"model={name!r} should be one of {sorted(MODELS)}")
    return klass(rules, random_state, **params)
