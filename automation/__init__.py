"""Shoal: an event-driven marketing automation engine that keeps customer segments true.

Public entry points live in :mod:`automation.api`; importing this package has no side effects.
"""

__version__ = "0.1.0"
