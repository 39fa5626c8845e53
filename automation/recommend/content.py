"""Content: TF-IDF over item names (descriptions) and categories; neighbours of what a user has."""

from __future__ import annotations

from automation.errors import ValidationError
from automation.recommend.data import Catalogue, Interactions
from automation.recommend.knn import NeighbourRecommender
from automation.recommend.similarity import text_similarity


def item_texts(cat: Catalogue) -> list[str]:
    """Name and category of each item, as one text (the category repeated: it weighs more)."""
    out = []
    for name, category in zip(cat.names.tolist(), cat.categories.tolist(), strict=True):
        label = f" {category} {category}" if category else ""
        out.append(f"{name}{label}")
    return out


class ContentRecommender(NeighbourRecommender):
    """Scores an item by the TF-IDF cosine of its text to the texts of the user's items.

    Parameters
    ----------
    k : int
        Text neighbours kept per item.
    ngram_max : int
        Longest word n-gram.
    """

    name = "content"
    reason = "similar to {anchor}"
    defaults = {"k": 50, "ngram_max": 2}

    def _check_params(self) -> None:
        super()._check_params()
        for key in ("k", "ngram_max"):
            if int(self.params[key]) < 1:
                raise ValidationError(f"{key}={self.params[key]} should be >= 1")

    def _fit(self, interactions: Interactions) -> None:
        self.sim_ = text_similarity(
            item_texts(self.context.catalogue), int(self.params["k"]), int(self.params["ngram_max"])
        )
