"""Seeded shop simulator with ground truth: latent personas, known shifts on known days.

>>> from automation.simulate import simulate, write_simulation
>>> sim = simulate(n_users=2_000, days=30, seed=7, scenarios=["promo", "churn"])
>>> sorted(sim.events["type"].unique())
['cart', 'purchase', 'rating', 'refund', 'remove', 'view']

Modules: :mod:`.personas` (who the customers are), :mod:`.catalogue` (items),
:mod:`.scenarios` (shifts), :mod:`.generate` (the engine), :mod:`.funnel` and :mod:`.frame`
(engine internals), :mod:`.io` (writers and readers).
"""

from automation.simulate.frame import EVENT_COLUMNS
from automation.simulate.funnel import EVENT_TYPES
from automation.simulate.generate import Simulation, simulate
from automation.simulate.io import FORMATS, read_simulation, write_simulation
from automation.simulate.scenarios import SCENARIOS

__all__ = [
    "EVENT_COLUMNS",
    "EVENT_TYPES",
    "FORMATS",
    "SCENARIOS",
    "Simulation",
    "read_simulation",
    "simulate",
    "write_simulation",
]
