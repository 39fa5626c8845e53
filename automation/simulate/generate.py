"""The simulation engine: a seeded shop with latent personas, known shifts and ground truth.

Steps (all vectorised over users, sessions and events):

1. a catalogue (:mod:`~automation.simulate.catalogue`) and a persona per user drawn from the
   base shares, with a log-normal activity multiplier (a few very active users);
2. per-user activity windows (late arrival of ``new_customer``, quiet day of ``dormant``) and the
   scenario plan (:mod:`~automation.simulate.scenarios`);
3. session counts: each user's horizon is cut into segments of constant regime and window,
   a Poisson count per segment, days uniform in the segment thinned by a weekday profile;
   session rates are calibrated (on the scenario-free population) to ``target_events``;
4. the funnel (:mod:`~automation.simulate.funnel`) and the canonical tables
   (:mod:`~automation.simulate.frame`).

Random draws come from independent child streams of ``numpy.random.SeedSequence(seed)``, one
per step, so the same arguments give byte-identical tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from automation.errors import ValidationError
from automation.simulate.catalogue import CATEGORIES, default_n_items, make_catalogue
from automation.simulate.frame import events_frame, truth_frame, user_ids
from automation.simulate.funnel import expand_sessions
from automation.simulate.personas import (
    ARRIVAL_FRACTION,
    QUIET_FACTOR,
    QUIET_RANGE,
    Persona,
    base_personas,
)
from automation.simulate.scenarios import Plan, build_plan, parse_scenarios

__all__ = ["EVENTS_PER_USER_90D", "Simulation", "simulate"]

EVENTS_PER_USER_90D = 10.0
"""Default calibration: mean events per user per 90 days."""

ACTIVITY_SIGMA = 0.5
"""Log-normal sigma of the per-user activity multiplier (mean 1)."""

WEEKDAY_WEIGHTS: tuple[float, ...] = (0.95, 0.95, 0.95, 1.0, 1.05, 1.2, 1.25)
"""Relative session rate Monday .. Sunday."""

_STREAMS = ("catalogue", "users", "windows", "scenarios", "sessions", "funnel")


@dataclass
class Simulation:
    """Output of :func:`simulate`.

    Attributes
    ----------
    events : pandas.DataFrame
        Canonical events sorted by ``timestamp``: ``event_id`` (str), ``user_id``, ``type``,
        ``item_id``, ``category``, ``session_id``, ``order_id`` (categoricals of str; ``order_id``
        missing outside purchases and refunds), ``timestamp`` (datetime64[ns, UTC]),
        ``quantity`` (int64, >= 1), ``price`` (unit price), ``revenue`` (``quantity * price``
        for purchases and refunds, 0 otherwise), ``rating`` (1..5 for ratings, NaN otherwise).
    truth : pandas.DataFrame
        ``user_id``, ``day`` (int, 0-based), ``persona``: the persona of a user from ``day`` until
        its next row; the first row is the day the user can first be active.
    items : pandas.DataFrame
        ``item_id``, ``name``, ``category``, ``price``.
    scenarios : list of dict
        Injected shifts: ``name``, ``day``, ``date``, ``personas`` (affected), ``new_personas``,
        ``description`` (``emerging`` adds ``category`` and ``n_users``).
    params : dict
        Arguments of the run and the calibrated session-rate scale.
    """

    events: pd.DataFrame
    truth: pd.DataFrame
    items: pd.DataFrame
    scenarios: list[dict[str, object]]
    params: dict[str, object] = field(default_factory=dict)

    def persona_on(self, day: int) -> pd.Series:
        """Persona of every user that exists on ``day`` (indexed by ``user_id``)."""
        known = self.truth[self.truth["day"] <= day]
        last = known.groupby("user_id", observed=True, sort=True).tail(1)
        return pd.Series(
            last["persona"].to_numpy(),
            index=pd.Index(last["user_id"].astype("str")),
            name="persona",
        )


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValidationError(f"{name}={value!r} should be an integer >= {minimum}")
    return int(value)


def _parse_start(start: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(start)
    except ValueError:
        raise ValidationError(f"start={start!r} should be a date like '2024-01-01'") from None
    if stamp is pd.NaT:
        raise ValidationError(f"start={start!r} should be a date like '2024-01-01'")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.normalize()


def _windows(
    base: Sequence[Persona], user_base: np.ndarray, days: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """First active day and quiet day of every user, from its base persona's window."""
    n = len(user_base)
    kind = np.array([p.window for p in base])[user_base]
    first_late = min(days - 1, days - max(1, round(ARRIVAL_FRACTION * days)))
    arrival = np.where(kind == "late", rng.integers(first_late, days, n), 0).astype(np.int32)
    low, high = (max(1, round(f * days)) for f in QUIET_RANGE)
    quiet_day = rng.integers(min(low, days), max(min(high, days), min(low, days)) + 1, n)
    quiet = np.where(kind == "early", quiet_day, days).astype(np.int32)
    return arrival, quiet


def _calibrate(
    base: Sequence[Persona],
    user_base: np.ndarray,
    activity: np.ndarray,
    arrival: np.ndarray,
    quiet: np.ndarray,
    weekday: np.ndarray,
    target: float,
) -> float:
    """Session-rate scale giving ``target`` expected events on the scenario-free population."""
    rate = np.array([p.session_rate for p in base])[user_base]
    per_session = np.array([p.events_per_session() for p in base])[user_base]
    cum = np.concatenate([[0.0], np.cumsum(weekday)])
    active = cum[quiet] - cum[arrival] + QUIET_FACTOR * (cum[-1] - cum[quiet])
    variable = float(np.sum(activity * rate * per_session * active))
    forced_kinds = [i for i, p in enumerate(base) if p.window == "late"]
    fixed = float(np.sum(per_session[np.isin(user_base, forced_kinds)]))
    return max(target - fixed, 0.05 * target) / max(variable, 1e-12)


def _draw_sessions(
    plan: Plan,
    table: np.ndarray,
    activity: np.ndarray,
    scale: float,
    weekday: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User, day and regime of every browsing session."""
    n, days = len(plan.user_group), table.shape[1]
    cuts = np.empty((n, 4 + len(plan.change_days())), dtype=np.int32)
    cuts[:, 0], cuts[:, 1], cuts[:, 2], cuts[:, 3] = 0, days, plan.arrival, plan.quiet
    cuts[:, 4:] = plan.change_days()[None, :]
    cuts.sort(axis=1)
    length = np.diff(cuts, axis=1)
    keep = length > 0
    seg_user = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], length.shape)[keep]
    seg_d0 = cuts[:, :-1][keep]
    seg_len = length[keep]
    group = plan.user_group[seg_user]
    seg_reg = table[group, seg_d0]
    rate = np.array([p.session_rate for p in plan.regimes])
    on = seg_d0 >= plan.arrival[seg_user]
    factor = np.where(seg_d0 >= plan.quiet[seg_user], QUIET_FACTOR, 1.0) * on
    wmax = float(weekday.max())
    lam = scale * wmax * activity[seg_user] * rate[seg_reg] * factor * seg_len
    pick = np.repeat(np.arange(len(seg_len)), rng.poisson(lam))
    day = seg_d0[pick] + (rng.random(len(pick)) * seg_len[pick]).astype(np.int32)
    accept = rng.random(len(pick)) * wmax < weekday[day]
    pick, day = pick[accept], day[accept]
    forced = np.flatnonzero(plan.forced)
    f_day = plan.arrival[forced]
    return (
        np.concatenate([seg_user[pick], forced.astype(np.int32)]),
        np.concatenate([day, f_day]).astype(np.int32),
        np.concatenate([seg_reg[pick], table[plan.user_group[forced], f_day]]),
    )


def simulate(
    n_users: int = 10_000,
    days: int = 90,
    seed: int = 0,
    scenarios: Sequence[str] = (),
    start: str = "2024-01-01",
    n_items: int | None = None,
    *,
    target_events: int | None = None,
) -> Simulation:
    """Simulate a shop's event stream with latent personas and known shifts.

    Parameters
    ----------
    n_users : int, default 10000
        Number of users (ids ``u0000000`` ..).
    days : int, default 90
        Length of the horizon in days, starting at ``start`` (midnight UTC).
    seed : int, default 0
        Seed; the same arguments give byte-identical output.
    scenarios : sequence of str, default ()
        Shifts to inject: ``promo``, ``churn``, ``emerging``, ``merge``, ``split``; each may be
        written ``"name@day"`` to pick its day (see :mod:`~automation.simulate.scenarios`).
    start : str, default "2024-01-01"
        Date of day 0.
    n_items : int, optional
        Catalogue size (at least the number of categories); default ``n_users // 20`` within
        [200, 5000].
    target_events : int, optional
        Expected number of events of the scenario-free population; default
        ``n_users * days * 10 / 90`` (10 events per user per 90 days).

    Returns
    -------
    Simulation
        Events, ground truth, items and the injected scenarios.

    Raises
    ------
    ValidationError
        An argument is out of its domain or a scenario name is unknown.

    Examples
    --------
    >>> sim = simulate(n_users=500, days=30, seed=1, scenarios=["churn"])
    >>> sim.scenarios[0]["personas"]
    ['loyal_high_spender']
    """
    n_users = _check_int("n_users", n_users, 1)
    days = _check_int("days", days, 1)
    seed = _check_int("seed", seed, 0)
    n_items = default_n_items(n_users) if n_items is None else n_items
    n_items = _check_int("n_items", n_items, len(CATEGORIES))
    if target_events is None:
        target_events = max(1, round(n_users * days * EVENTS_PER_USER_90D / 90.0))
    target_events = _check_int("target_events", target_events, 1)
    specs = parse_scenarios(scenarios, days)
    day0 = _parse_start(start)

    rngs = dict(
        zip(
            _STREAMS,
            (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_STREAMS))),
            strict=True,
        )
    )
    cat = make_catalogue(n_items, rngs["catalogue"])
    base = base_personas()
    shares = np.array([p.share for p in base])
    user_base = rngs["users"].choice(len(base), size=n_users, p=shares / shares.sum())
    activity = np.exp(rngs["users"].normal(-(ACTIVITY_SIGMA**2) / 2, ACTIVITY_SIGMA, n_users))
    arrival, quiet = _windows(base, user_base, days, rngs["windows"])
    weekday = np.asarray(WEEKDAY_WEIGHTS)[(day0.day_of_week + np.arange(days)) % 7]
    scale = _calibrate(base, user_base, activity, arrival, quiet, weekday, target_events)

    plan = build_plan(base, user_base, arrival, quiet, specs, days, day0, rngs["scenarios"])
    table = plan.regime_table(days)
    s_user, s_day, s_regime = _draw_sessions(
        plan, table, activity, scale, weekday, rngs["sessions"]
    )
    day0_ms = int(day0.value // 1_000_000)
    arrays = expand_sessions(
        s_user, s_day, s_regime, plan.regimes, cat, day0_ms, days, rngs["funnel"]
    )
    users = user_ids(n_users)
    events = events_frame(arrays, cat, users, seed)

    labels = list(dict.fromkeys(p.name for p in plan.regimes))
    regime_label = np.array([labels.index(p.name) for p in plan.regimes])
    truth = truth_frame(labels, regime_label[table], plan.user_group, plan.arrival, users)
    params: dict[str, object] = {
        "n_users": n_users,
        "days": days,
        "seed": seed,
        "start": day0.date().isoformat(),
        "n_items": n_items,
        "target_events": target_events,
        "session_rate_scale": scale,
    }
    return Simulation(events, truth, cat.items, plan.records, params)
