"""Popularity baselines: time-decayed global popularity, and popularity within the segment."""

from __future__ import annotations

import numpy as np

from automation.errors import ValidationError
from automation.recommend.base import Recommender
from automation.recommend.context import NO_SEGMENT
from automation.recommend.data import FloatArray, IntArray, Interactions


class PopularityRecommender(Recommender):
    """Every user gets the items with the most distinct buyers, each buyer's weight halving every
    ``popularity_half_life`` days since their newest purchase of the item (``None``: no decay)."""

    name = "popularity"

    def _fit(self, interactions: Interactions) -> None:
        return None

    def _scores(self, rows: IntArray, segments: IntArray) -> FloatArray:
        pop = self.context.popularity
        return np.tile(pop / max(float(pop.max(initial=0.0)), 1e-12), (len(rows), 1))

    def prior_scores(self, segments: IntArray) -> FloatArray:
        """Everyone, the unknown included, gets the global popularity."""
        return self._scores(np.full(len(segments), -1, dtype=np.int64), segments)

    def _label(self) -> str:
        hl = self.params["popularity_half_life"]
        return "a best seller" if hl is None else f"a best seller of the last {hl:g} days"

    def _reasons(self, rows: IntArray, segments: IntArray, items: IntArray) -> list[list[str]]:
        return [[self._label() for _ in r] for r in items]

    def _cold_reason(self, segment: int) -> str:
        return self._label()


class SegmentPopularityRecommender(Recommender):
    """Each user gets what is popular (time-decayed) among the users of their segment; a user
    without a segment gets a provisional one (see :meth:`Context.segments_for`).

    ``global_weight`` mixes in the global popularity (0: the segment's alone).
    """

    name = "segment-popularity"
    defaults = {"global_weight": 0.0}

    def _check_params(self) -> None:
        super()._check_params()
        if not 0 <= self.params["global_weight"] <= 1:
            raise ValidationError(
                f"global_weight={self.params['global_weight']} should be in [0, 1]"
            )

    def _fit(self, interactions: Interactions) -> None:
        return None

    def _scores(self, rows: IntArray, segments: IntArray) -> FloatArray:
        w = float(self.params["global_weight"])
        ctx = self.context
        glob = ctx.popularity / max(float(ctx.popularity.max(initial=0.0)), 1e-12)
        seg = self.prior_scores(segments)
        return (1 - w) * seg + w * glob[None, :]

    def _reasons(self, rows: IntArray, segments: IntArray, items: IntArray) -> list[list[str]]:
        names = self.context.segment_names
        out = []
        for s, r in zip(segments.tolist(), items, strict=True):
            label = f"popular in segment {names[s]}" if s != NO_SEGMENT else "popular right now"
            out.append([label for _ in r])
        return out
