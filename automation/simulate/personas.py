"""Latent customer personas of the simulator, with their known behaviour.

A :class:`Persona` is a set of behavioural parameters. Session rates are *relative*: the engine
scales all of them by one factor so that the run produces about ``target_events`` events
(default 10 per user per 90 days). Scenarios derive new parameter sets from these
(:func:`promo`, :func:`churned`, :func:`premium`, :func:`blend`, :func:`emerging_gift_buyer`).

Base personas (share of users, relative sessions/day, mean views/session, cart, remove, checkout,
refund probabilities, price tilt):

=====================  =====  =====  =====  =====  ======  ========  ======  =====
persona                share  rate   views  cart   remove  checkout  refund  tilt
=====================  =====  =====  =====  =====  ======  ========  ======  =====
loyal_high_spender     0.10   0.30   5      0.35   0.10    0.85      0.02    +1.5
bargain_hunter         0.20   0.15   7      0.25   0.40    0.60      0.05    -2.0
browser                0.25   0.15   10     0.03   0.50    0.15      0.04     0.0
new_customer           0.10   0.20   5      0.15   0.30    0.50      0.05     0.0
dormant                0.25   0.15   5      0.15   0.25    0.55      0.04     0.0
refunder               0.10   0.10   5      0.30   0.20    0.70      0.50    +0.5
=====================  =====  =====  =====  =====  ======  ========  ======  =====

The parameters are chosen so that each persona differs from the others in more than activity:
the loyal buy often and dear, bargain hunters cheap items in bulk, browsers view much and buy
little, refunders return half of what they buy.

``new_customer`` arrives in the last 20% of the days (one guaranteed session on arrival);
``dormant`` is active until a day in [15%, 40%] of the horizon, then at 2% of its rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ARRIVAL_FRACTION",
    "QUIET_FACTOR",
    "QUIET_RANGE",
    "Persona",
    "base_personas",
    "blend",
    "churned",
    "emerging_gift_buyer",
    "premium",
    "promo",
]

ARRIVAL_FRACTION = 0.2
"""``new_customer`` users arrive within the last ``ARRIVAL_FRACTION`` of the days."""

QUIET_RANGE = (0.15, 0.4)
"""``dormant`` users go quiet on a day drawn uniformly in this fraction of the horizon."""

QUIET_FACTOR = 0.02
"""Session rate multiplier of a ``dormant`` user after going quiet."""

WINDOWS = ("always", "late", "early", "arrival")


@dataclass(frozen=True)
class Persona:
    """Behavioural parameters of one kind of customer.

    Attributes
    ----------
    name : str
        Label used in the truth table.
    share : float
        Share of users with this persona at day 0 (0 for scenario-made personas).
    session_rate : float
        Relative expected sessions per day (scaled by the engine's calibration).
    views_mean : float
        Mean views per session (at least 1; negative-binomial spread).
    cart_p : float
        Probability that a view is followed by adding the item to the cart.
    remove_p : float
        Probability that a cart line is removed again.
    checkout_p : float
        Probability that a session with a non-empty cart checks out (buys every line left).
    extra_quantity : float
        Mean of ``quantity - 1`` (Poisson) of a cart line.
    refund_p : float
        Probability that a purchased line is refunded 1-10 days later.
    rating_p : float
        Probability that a purchased line is rated 1-12 days later.
    rating_bias : float
        Added to the item's latent quality when this persona rates.
    price_tilt : float
        Items are weighted by ``(price / category median) ** price_tilt``: positive prefers
        expensive items, negative cheap ones.
    affinity : tuple of (str, float)
        Category weights (unlisted categories weigh 1).
    window : str
        ``always``, ``late`` (arrives in the last 20%), ``early`` (goes quiet) or ``arrival``
        (arrival day set by a scenario).
    description : str
        One line of prose.
    """

    name: str
    share: float
    session_rate: float
    views_mean: float
    cart_p: float
    remove_p: float
    checkout_p: float
    extra_quantity: float
    refund_p: float
    rating_p: float
    rating_bias: float
    price_tilt: float
    affinity: tuple[tuple[str, float], ...] = ()
    window: str = "always"
    description: str = ""

    def category_weights(self, categories: Sequence[str]) -> np.ndarray:
        """Normalised category weights in the order of ``categories``."""
        given = dict(self.affinity)
        weights = np.array([given.get(c, 1.0) for c in categories], dtype=np.float64)
        return weights / weights.sum()

    def events_per_session(self) -> float:
        """Expected events of one session, including its later refunds and ratings."""
        carts = self.views_mean * self.cart_p
        purchases = carts * (1.0 - self.remove_p) * self.checkout_p
        removes = carts * self.remove_p
        return self.views_mean + carts + removes + purchases * (1.0 + self.refund_p + self.rating_p)

    def changed(self, **changes: object) -> Persona:
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def base_personas() -> tuple[Persona, ...]:
    """The six personas present from day 0, in a fixed order (their index is their code)."""
    return (
        Persona(
            "loyal_high_spender", 0.10, 0.30, 5.0, 0.35, 0.10, 0.85, 0.3, 0.02, 0.30, 0.3, 1.5,
            (("electronics", 5.0), ("jewellery", 4.0), ("home", 2.0), ("fashion", 1.5),
             ("grocery", 0.3), ("books", 0.3), ("toys", 0.3), ("beauty", 0.5)),
            description="frequent sessions, buys often, expensive items, rarely refunds",
        ),
        Persona(
            "bargain_hunter", 0.20, 0.15, 7.0, 0.25, 0.40, 0.60, 1.2, 0.05, 0.15, 0.0, -2.0,
            (("grocery", 3.0), ("beauty", 2.0), ("books", 1.5), ("toys", 1.5),
             ("electronics", 0.4), ("jewellery", 0.2)),
            description="cheap items, many removes, buys in bulk, promo sensitive",
        ),
        Persona(
            "browser", 0.25, 0.15, 10.0, 0.03, 0.50, 0.15, 0.1, 0.04, 0.05, 0.0, 0.0,
            (("electronics", 1.5), ("fashion", 1.5)),
            description="many views, rarely buys",
        ),
        Persona(
            "new_customer", 0.10, 0.20, 5.0, 0.15, 0.30, 0.50, 0.1, 0.05, 0.10, 0.0, 0.0,
            window="late",
            description="first activity in the last 20% of the days, few orders",
        ),
        Persona(
            "dormant", 0.25, 0.15, 5.0, 0.15, 0.25, 0.55, 0.2, 0.04, 0.10, 0.0, 0.0,
            window="early",
            description="active early, quiet from a day in 15-40% of the horizon",
        ),
        Persona(
            "refunder", 0.10, 0.10, 5.0, 0.30, 0.20, 0.70, 0.2, 0.50, 0.40, -1.2, 0.5,
            (("fashion", 3.0), ("electronics", 1.5)),
            description="buys, then refunds half of the lines and rates low",
        ),
    )  # fmt: skip


def promo(p: Persona) -> Persona:
    """The persona during a promotion: more sessions, carts and checkouts, fewer removes."""
    return p.changed(
        session_rate=p.session_rate * 1.4,
        cart_p=min(p.cart_p * 1.8, 0.9),
        remove_p=p.remove_p * 0.6,
        checkout_p=min(p.checkout_p * 1.6, 0.95),
        extra_quantity=p.extra_quantity + 0.4,
        description=f"{p.name} during a promotion",
    )


def churned(p: Persona) -> Persona:
    """The persona after churning: label ``churned``, 3% of its former session rate."""
    return p.changed(
        name="churned",
        share=0.0,
        session_rate=p.session_rate * 0.03,
        description=f"former {p.name}, gone quiet",
    )


def premium(p: Persona) -> Persona:
    """The premium branch of a split: ``{name}_premium``, pricier items, fewer removes."""
    return p.changed(
        name=f"{p.name}_premium",
        share=0.0,
        price_tilt=p.price_tilt + 3.5,
        remove_p=0.25,
        checkout_p=0.55,
        affinity=(
            ("fashion", 2.0),
            ("home", 2.0),
            ("electronics", 2.0),
            ("jewellery", 1.5),
            ("grocery", 0.3),
            ("books", 0.5),
        ),  # fmt: skip
        description=f"half of {p.name} moving to pricier items",
    )


def blend(a: Persona, b: Persona, name: str, categories: Sequence[str]) -> Persona:
    """Average of two personas (every numeric parameter and the category weights).

    Parameters
    ----------
    a, b : Persona
        The converging personas.
    name : str
        Label of the merged persona.
    categories : sequence of str
        Category names, to average the category weights over.

    Returns
    -------
    Persona
        The merged persona.
    """
    numeric = {
        f.name: (getattr(a, f.name) + getattr(b, f.name)) / 2.0
        for f in dataclasses.fields(Persona)
        if f.type in ("float", float) and f.name != "share"
    }
    weights = (a.category_weights(categories) + b.category_weights(categories)) / 2.0
    affinity = tuple(
        (c, float(w * len(categories))) for c, w in zip(categories, weights, strict=True)
    )
    return a.changed(
        name=name,
        share=0.0,
        affinity=affinity,
        window="always",
        description=f"{a.name} and {b.name} converged",
        **numeric,
    )


def emerging_gift_buyer(category: str) -> Persona:
    """A kind of customer that did not exist before: arrives late, buys mostly ``category``."""
    return Persona(
        "emerging_gift_buyer", 0.0, 0.15, 4.0, 0.30, 0.15, 0.70, 0.5, 0.05, 0.20, 0.2, 0.2,
        ((category, 25.0), ("toys", 2.0), ("jewellery", 1.5), ("grocery", 0.3)),
        window="arrival",
        description=f"new customers buying mostly {category}",
    )  # fmt: skip
