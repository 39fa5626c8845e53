"""A campaign response model with a known effect, so measured uplift can be checked.

Each user a campaign decided on (treated or held out) places an order in the campaign's window
with probability ``base[persona]``, plus ``lift[persona]`` when treated. The orders are written
as canonical purchase events (one line each, an item of the catalogue, a seeded order value),
ready for ``shoal ingest``. The true effect on conversion is the mean ``lift`` over the users
(overall, or per segment), which :func:`true_uplift` returns beside the events.

>>> import pandas as pd
>>> decisions = pd.DataFrame({"user_id": ["a", "b"], "group": ["treatment", "holdout"],
...     "segment_id": ["seg-1", "seg-1"],
...     "triggered_at": pd.Timestamp("2024-02-01", tz="UTC")})
>>> model = ResponseModel(base={"loyal": 0.2}, lift={"loyal": 0.1})
>>> items = pd.DataFrame({"item_id": ["i1"], "name": ["Mug"], "category": ["home"],
...     "price": [9.5]})
>>> events = respond(decisions, pd.Series({"a": "loyal", "b": "loyal"}), model, items, seed=1)
>>> set(events.columns) >= {"event_id", "user_id", "type", "timestamp", "revenue"}
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ResponseModel:
    """Purchase probability in the window per persona, without and with the campaign.

    Parameters
    ----------
    base : mapping of str to float
        Probability of an order in the window for a held-out user of the persona.
    lift : mapping of str to float
        Added to ``base`` for a treated user (the true effect).
    window_days : float
        Orders fall uniformly in ``(triggered_at, triggered_at + window_days]``.
    order_value : float
        Mean order value (log-normal spread).
    """

    base: Mapping[str, float]
    lift: Mapping[str, float]
    window_days: float = 14.0
    order_value: float = 40.0

    def probability(self, personas: pd.Series, treated: np.ndarray) -> np.ndarray:
        base = personas.map(dict(self.base)).fillna(0.0).to_numpy(dtype=float)
        lift = personas.map(dict(self.lift)).fillna(0.0).to_numpy(dtype=float)
        p = base + np.where(treated, lift, 0.0)
        if np.any((p < 0) | (p > 1)):
            raise ValueError("base + lift should stay within [0, 1] for every persona")
        return p


def respond(
    decisions: pd.DataFrame,
    personas: pd.Series,
    model: ResponseModel,
    items: pd.DataFrame,
    seed: int = 0,
    campaign: str = "campaign",
) -> pd.DataFrame:
    """Purchase events of the decided users (``user_id``, ``group``, ``triggered_at``)."""
    rng = np.random.default_rng(seed)
    users = decisions["user_id"].astype(str).reset_index(drop=True)
    treated = (decisions["group"] == "treatment").to_numpy()
    p = model.probability(users.map(personas), treated)
    buys = rng.random(len(users)) < p
    n = int(buys.sum())
    at = pd.to_datetime(decisions["triggered_at"], utc=True).reset_index(drop=True)[buys]
    offset = pd.to_timedelta(rng.uniform(0.01, model.window_days, n), unit="D")
    pick = rng.integers(0, len(items), n)
    price = items["price"].to_numpy(dtype=float)[pick]
    qty = np.maximum(1, np.round(rng.lognormal(np.log(model.order_value), 0.4, n) / price))
    who = users[buys].to_numpy()
    return pd.DataFrame(
        {
            "event_id": [f"{campaign}-response-{u}" for u in who],
            "user_id": who,
            "type": "purchase",
            "item_id": items["item_id"].to_numpy()[pick],
            "category": items["category"].to_numpy()[pick],
            "session_id": [f"{campaign}-s-{u}" for u in who],
            "order_id": [f"{campaign}-o-{u}" for u in who],
            "timestamp": (at + offset).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_numpy(),
            "quantity": qty.astype(np.int64),
            "price": price,
            "revenue": qty * price,
            "rating": np.nan,
        }
    )


def true_uplift(
    decisions: pd.DataFrame, personas: pd.Series, model: ResponseModel
) -> dict[str, float]:
    """The true conversion uplift: mean lift over the decided users, overall and per segment."""
    lift = decisions["user_id"].astype(str).map(personas).map(dict(model.lift)).fillna(0.0)
    out = {"overall": float(lift.mean())}
    for seg, part in lift.groupby(decisions["segment_id"].astype(str).to_numpy()):
        out[str(seg)] = float(part.mean())
    return out
