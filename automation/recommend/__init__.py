"""Recommendations: one contract over popularity, segment popularity, item-kNN, ALS, content and
the segment-aware hybrid; business rules; store loading; evaluation on a time split.

>>> from automation.recommend import make_recommender
>>> model = make_recommender("hybrid")  # doctest: +SKIP
>>> model.fit(interactions).recommend("12347", n=10)  # doctest: +SKIP
"""

from automation.recommend.base import Recommender
from automation.recommend.data import Catalogue, Interactions
from automation.recommend.registry import MODELS, make_recommender
from automation.recommend.rules import Recommendation, Rules

__all__ = [
    "MODELS",
    "Catalogue",
    "Interactions",
    "Recommendation",
    "Recommender",
    "Rules",
    "make_recommender",
]
