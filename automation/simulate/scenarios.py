"""Known shifts injected on known days, and the per-group persona timelines they produce.

Users are partitioned into *groups* that share one timeline: a list of ``(first_day, regime)``
pairs, a regime being one :class:`~automation.simulate.personas.Persona` (parameters + label).
At day 0 the groups are the base personas. Scenarios are applied in order of their day; each
edits the timelines from its day on:

``promo`` (default day 60% of the horizon)
    ``bargain_hunter`` gets promotion parameters (label unchanged).
``churn`` (50%)
    ``loyal_high_spender`` becomes ``churned`` (3% of its session rate).
``emerging`` (40%)
    5% of the users are replaced by ``emerging_gift_buyer`` customers who arrive from that day
    (spread over a fifth of the horizon) and buy mostly ``gifts``.
``merge`` (70%)
    ``browser`` and ``refunder`` both become ``merged_browser_refunder``, the average of the two.
``split`` (45%)
    half of the ``bargain_hunter`` users (drawn at random) become ``bargain_hunter_premium``.

A scenario may be given as ``"name@day"`` to choose its day (1 <= day < days).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from automation.errors import ValidationError
from automation.simulate.catalogue import CATEGORY_NAMES
from automation.simulate.personas import (
    Persona,
    blend,
    churned,
    emerging_gift_buyer,
    premium,
    promo,
)

__all__ = ["SCENARIOS", "Plan", "ScenarioSpec", "build_plan", "parse_scenarios"]

SCENARIOS: dict[str, float] = {
    "promo": 0.6,
    "churn": 0.5,
    "emerging": 0.4,
    "merge": 0.7,
    "split": 0.45,
}
"""Scenario names and their default day as a fraction of the horizon."""

PROMO_PERSONA = "bargain_hunter"
CHURN_PERSONA = "loyal_high_spender"
MERGE_PERSONAS = ("browser", "refunder")
SPLIT_PERSONA = "bargain_hunter"
EMERGING_CATEGORY = "gifts"
EMERGING_SHARE = 0.05
SPLIT_SHARE = 0.5


@dataclass(frozen=True)
class ScenarioSpec:
    """A validated scenario request: its name and the day it starts."""

    name: str
    day: int


def parse_scenarios(scenarios: Sequence[str], days: int) -> list[ScenarioSpec]:
    """Validate scenario names (``"name"`` or ``"name@day"``) and fix their days.

    Parameters
    ----------
    scenarios : sequence of str
        Requested scenarios.
    days : int
        Length of the horizon.

    Returns
    -------
    list of ScenarioSpec
        Sorted by day, then by the order of :data:`SCENARIOS`.

    Raises
    ------
    ValidationError
        Unknown or repeated name, bad day, or a horizon too short for a shift.
    """
    if isinstance(scenarios, str):
        scenarios = [scenarios]
    specs: list[ScenarioSpec] = []
    for raw in scenarios:
        name, sep, day_text = str(raw).strip().partition("@")
        if name not in SCENARIOS:
            choices = ", ".join(SCENARIOS)
            raise ValidationError(f"scenario={raw!r} should be one of {choices}")
        if any(s.name == name for s in specs):
            raise ValidationError(f"scenario={raw!r} is given more than once")
        if days < 2:
            raise ValidationError(f"days={days} should be at least 2 to inject scenarios")
        if sep:
            try:
                day = int(day_text)
            except ValueError:
                raise ValidationError(f"scenario={raw!r}: day should be an integer") from None
        else:
            day = min(max(round(SCENARIOS[name] * days), 1), days - 1)
        if not 1 <= day < days:
            raise ValidationError(f"scenario={raw!r}: day should be in 1..{days - 1}")
        specs.append(ScenarioSpec(name, day))
    order = list(SCENARIOS)
    return sorted(specs, key=lambda s: (s.day, order.index(s.name)))


@dataclass
class Plan:
    """Regimes, group timelines and per-user windows of one run.

    Attributes
    ----------
    regimes : list of Persona
        Every parameter set used; a regime's index is its code.
    timelines : list of list of (int, int)
        Per group, ``(first_day, regime)`` pairs sorted by day, the first at day 0.
    user_group : numpy.ndarray
        Group of each user.
    arrival : numpy.ndarray
        First day each user can be active.
    quiet : numpy.ndarray
        Day each user goes quiet (``days`` if never).
    forced : numpy.ndarray
        Boolean mask of users who get a guaranteed session on their arrival day.
    records : list of dict
        What was injected, for :attr:`Simulation.scenarios`.
    """

    regimes: list[Persona]
    timelines: list[list[tuple[int, int]]]
    user_group: np.ndarray
    arrival: np.ndarray
    quiet: np.ndarray
    forced: np.ndarray
    records: list[dict[str, object]] = field(default_factory=list)

    def add_regime(self, persona: Persona) -> int:
        """Index of ``persona`` among the regimes, appending it if new."""
        if persona in self.regimes:
            return self.regimes.index(persona)
        self.regimes.append(persona)
        return len(self.regimes) - 1

    def regime_table(self, days: int) -> np.ndarray:
        """``table[group, day]``: the regime of each group on each day."""
        table = np.empty((len(self.timelines), days), dtype=np.int32)
        for g, timeline in enumerate(self.timelines):
            for (first, regime), (end, _) in zip(
                timeline, [*timeline[1:], (days, -1)], strict=True
            ):
                table[g, first:end] = regime
        return table

    def change_days(self) -> np.ndarray:
        """Every day on which some group's regime changes (sorted, without day 0)."""
        found = {day for timeline in self.timelines for day, _ in timeline if day > 0}
        return np.array(sorted(found), dtype=np.int32)

    def edit_from(
        self,
        day: int,
        change: Callable[[Persona], Persona | None],
        groups: Sequence[int] | None = None,
    ) -> list[int]:
        """Apply ``change`` to every regime in force from ``day`` on; return the groups touched.

        ``change`` returns the new persona, or ``None`` to leave a regime as it is; ``groups``
        limits the edit to some groups (default: all).
        """
        touched: list[int] = []
        for g in range(len(self.timelines)) if groups is None else groups:
            timeline = self.timelines[g]
            edited: list[tuple[int, int]] = []
            hit = False
            for i, (first, regime) in enumerate(timeline):
                end = timeline[i + 1][0] if i + 1 < len(timeline) else None
                if end is not None and end <= day:
                    edited.append((first, regime))
                    continue
                if first < day:  # the regime in force on `day` starts earlier: cut it there
                    edited.append((first, regime))
                    first = day
                new = change(self.regimes[regime])
                if new is not None:
                    hit = True
                    edited.append((first, self.add_regime(new)))
                else:
                    edited.append((first, regime))
            if hit:
                self.timelines[g] = _collapse(edited)
                touched.append(g)
        return touched


def _collapse(timeline: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop entries that repeat the previous regime."""
    out: list[tuple[int, int]] = []
    for first, regime in timeline:
        if not out or out[-1][1] != regime:
            out.append((first, regime))
    return out


def _when_named(
    name: str, make: Callable[[Persona], Persona]
) -> Callable[[Persona], Persona | None]:
    return lambda p: make(p) if p.name == name else None


def _when_in(names: Sequence[str], new: Persona) -> Callable[[Persona], Persona | None]:
    return lambda p: new if p.name in names else None


def _record(
    spec: ScenarioSpec, start: pd.Timestamp, personas: list[str], new: list[str], text: str
) -> dict[str, object]:
    date = (start + pd.Timedelta(days=spec.day)).date().isoformat()
    return {
        "name": spec.name,
        "day": spec.day,
        "date": date,
        "personas": personas,
        "new_personas": new,
        "description": text,
    }


def build_plan(
    base: Sequence[Persona],
    user_base: np.ndarray,
    arrival: np.ndarray,
    quiet: np.ndarray,
    specs: Sequence[ScenarioSpec],
    days: int,
    start: pd.Timestamp,
    rng: np.random.Generator,
) -> Plan:
    """Build the group timelines and per-user windows with the scenarios applied.

    Parameters
    ----------
    base : sequence of Persona
        Base personas; user ``u`` starts as ``base[user_base[u]]``.
    user_base : numpy.ndarray
        Base persona code of each user.
    arrival, quiet : numpy.ndarray
        Windows of the base personas (copied, then edited by ``emerging``).
    specs : sequence of ScenarioSpec
        Scenarios, sorted by day.
    days : int
        Length of the horizon.
    start : pandas.Timestamp
        Date of day 0 (for the records).
    rng : numpy.random.Generator
        Stream for the random choices of ``emerging`` and ``split``.

    Returns
    -------
    Plan
        Regimes, timelines, windows and records.
    """
    plan = Plan(
        regimes=list(base),
        timelines=[[(0, i)] for i in range(len(base))],
        user_group=user_base.astype(np.int32),
        arrival=arrival.copy(),
        quiet=quiet.copy(),
        forced=np.isin(user_base, [i for i, p in enumerate(base) if p.window == "late"]),
    )
    by_name = {p.name: p for p in base}
    for spec in specs:
        d = spec.day
        if spec.name == "promo":
            plan.edit_from(d, _when_named(PROMO_PERSONA, promo))
            text = f"{PROMO_PERSONA} gets a promotion: more sessions, carts and checkouts"
            plan.records.append(_record(spec, start, [PROMO_PERSONA], [], text))
        elif spec.name == "churn":
            plan.edit_from(d, _when_named(CHURN_PERSONA, churned))
            text = f"{CHURN_PERSONA} churns: 3% of its sessions, relabelled churned"
            plan.records.append(_record(spec, start, [CHURN_PERSONA], ["churned"], text))
        elif spec.name == "merge":
            a, b = (by_name[n] for n in MERGE_PERSONAS)
            merged = blend(a, b, f"merged_{a.name}_{b.name}", CATEGORY_NAMES)
            plan.edit_from(d, _when_in(MERGE_PERSONAS, merged))
            text = f"{a.name} and {b.name} converge to their average parameters"
            plan.records.append(_record(spec, start, list(MERGE_PERSONAS), [merged.name], text))
        elif spec.name == "split":
            _split(plan, d, rng)
            new = f"{SPLIT_PERSONA}_premium"
            text = f"half of {SPLIT_PERSONA} diverge into {new} (pricier items)"
            plan.records.append(_record(spec, start, [SPLIT_PERSONA], [new], text))
        else:  # emerging
            persona = emerging_gift_buyer(EMERGING_CATEGORY)
            n_new = _emerge(plan, persona, d, days, rng)
            text = f"{n_new} new customers buying mostly {EMERGING_CATEGORY} arrive"
            record = _record(spec, start, [persona.name], [persona.name], text)
            record.update(category=EMERGING_CATEGORY, n_users=n_new)
            plan.records.append(record)
    return plan


def _split(plan: Plan, day: int, rng: np.random.Generator) -> None:
    """Move half of the users of every group that is ``SPLIT_PERSONA`` on ``day`` to new groups."""
    draw = rng.random(len(plan.user_group)) < SPLIT_SHARE
    clones: list[int] = []
    for g in range(len(plan.timelines)):
        current = [regime for first, regime in plan.timelines[g] if first <= day][-1]
        if plan.regimes[current].name != SPLIT_PERSONA:
            continue
        clone = len(plan.timelines)
        plan.timelines.append(list(plan.timelines[g]))
        plan.user_group[(plan.user_group == g) & draw] = clone
        clones.append(clone)
    plan.edit_from(day, _when_named(SPLIT_PERSONA, premium), groups=clones)


def _emerge(plan: Plan, persona: Persona, day: int, days: int, rng: np.random.Generator) -> int:
    """Replace a share of the users by new ``persona`` customers arriving from ``day``."""
    n_users = len(plan.user_group)
    chosen = rng.random(n_users) < EMERGING_SHARE
    n_new = int(chosen.sum())
    group = len(plan.timelines)
    plan.timelines.append([(0, plan.add_regime(persona))])
    plan.user_group[chosen] = group
    span = max(1, min(days // 5, days - day))
    plan.arrival[chosen] = day + rng.integers(0, span, n_new)
    plan.quiet[chosen] = days
    plan.forced[chosen] = True
    return n_new
