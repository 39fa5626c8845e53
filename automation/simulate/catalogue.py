"""Item catalogue of the simulated shop.

Eleven categories with their own price levels (a median price per category, log-normal spread
around it), a Zipf-like popularity of items within each category and a latent item quality that
drives ratings. Items are stored sorted by category, so the items of one category occupy one
contiguous index range (``Catalogue.bounds``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "Catalogue",
    "Category",
    "default_n_items",
    "format_ids",
    "make_catalogue",
]

ZIPF_EXPONENT = 1.1
"""Popularity of the item of rank ``k`` (1-based) within its category is ``k ** -ZIPF_EXPONENT``."""

PRICE_SIGMA = 0.45
"""Log-normal spread of item prices around their category's median price."""


@dataclass(frozen=True)
class Category:
    """One product category.

    Attributes
    ----------
    name : str
        Category name, as it appears in the ``category`` event column.
    median_price : float
        Median unit price of the category's items.
    share : float
        Share of catalogue items in this category (shares sum to 1).
    nouns : tuple of str
        Words used to build item names.
    """

    name: str
    median_price: float
    share: float
    nouns: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category("electronics", 220.0, 0.10, ("Headphones", "Tablet", "Camera", "Speaker", "Monitor")),
    Category("jewellery", 120.0, 0.06, ("Necklace", "Ring", "Bracelet", "Watch", "Earrings")),
    Category("home", 55.0, 0.12, ("Lamp", "Rug", "Kettle", "Cushion", "Vase")),
    Category("sports", 45.0, 0.09, ("Yoga Mat", "Dumbbell", "Bottle", "Racket", "Backpack")),
    Category("fashion", 38.0, 0.14, ("Jacket", "Scarf", "Sneakers", "Shirt", "Belt")),
    Category("garden", 32.0, 0.07, ("Planter", "Hose", "Shears", "Seeds", "Lantern")),
    Category("gifts", 24.0, 0.07, ("Gift Box", "Card Set", "Candle", "Mug", "Hamper")),
    Category("toys", 20.0, 0.08, ("Puzzle", "Board Game", "Plush", "Kite", "Blocks")),
    Category("books", 13.0, 0.09, ("Novel", "Cookbook", "Atlas", "Journal", "Comic")),
    Category("beauty", 16.0, 0.08, ("Serum", "Lipstick", "Soap", "Perfume", "Lotion")),
    Category("grocery", 6.0, 0.10, ("Coffee", "Tea", "Chocolate", "Olive Oil", "Pasta")),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)

_ADJECTIVES = (
    "Classic", "Aurora", "Nordic", "Urban", "Vintage", "Deluxe",
    "Eco", "Coastal", "Royal", "Studio", "Summit", "Velvet",
)  # fmt: skip


def format_ids(prefix: str, n: int, width: int) -> pd.Index:
    """Identifiers ``prefix`` + zero-padded ``0 .. n-1``, built with pyarrow (no Python loop).

    Parameters
    ----------
    prefix : str
        Text put in front of every number.
    n : int
        How many identifiers.
    width : int
        Minimum number of digits (zero padded).

    Returns
    -------
    pandas.Index
        ``n`` identifiers with the ``str`` dtype.
    """
    digits = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    padded = pc.utf8_lpad(digits, width=width, padding="0")
    joined = pc.binary_join_element_wise(prefix, padded, "")
    return pd.Index(pd.array(joined, dtype="str"))


def default_n_items(n_users: int) -> int:
    """Catalogue size used when ``n_items`` is not given: ``n_users // 20`` within [200, 5000]."""
    return int(min(max(n_users // 20, 200), 5000))


@dataclass(frozen=True)
class Catalogue:
    """Items with the per-item arrays the engine samples from.

    Attributes
    ----------
    items : pandas.DataFrame
        ``item_id``, ``name``, ``category``, ``price`` (one row per item, sorted by category).
    category : numpy.ndarray
        Category code of each item (index into :data:`CATEGORIES`).
    price : numpy.ndarray
        Unit price of each item.
    popularity : numpy.ndarray
        Zipf-like weight of each item; weights sum to 1 within each category.
    quality : numpy.ndarray
        Latent mean rating of each item (1..5 scale).
    bounds : numpy.ndarray
        ``bounds[c]:bounds[c + 1]`` is the index range of category ``c``.
    """

    items: pd.DataFrame
    category: np.ndarray
    price: np.ndarray
    popularity: np.ndarray
    quality: np.ndarray
    bounds: np.ndarray

    @property
    def n_items(self) -> int:
        """Number of items."""
        return len(self.price)


def _category_counts(n_items: int) -> np.ndarray:
    """Split ``n_items`` over the categories by share, at least one item each (deterministic)."""
    shares = np.array([c.share for c in CATEGORIES])
    n_cat = len(CATEGORIES)
    ideal = shares * (n_items - n_cat)
    counts = np.floor(ideal).astype(np.int64) + 1
    remainder = n_items - int(counts.sum())
    order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
    counts[order[:remainder]] += 1
    return counts


def make_catalogue(n_items: int, rng: np.random.Generator) -> Catalogue:
    """Draw a catalogue of ``n_items`` items.

    Parameters
    ----------
    n_items : int
        Number of items; at least the number of categories.
    rng : numpy.random.Generator
        Random stream used for prices, popularity ranks and quality.

    Returns
    -------
    Catalogue
        The items and their sampling arrays.
    """
    counts = _category_counts(n_items)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    category = np.repeat(np.arange(len(CATEGORIES)), counts)
    medians = np.array([c.median_price for c in CATEGORIES])
    raw = medians[category] * np.exp(rng.normal(0.0, PRICE_SIGMA, n_items))
    price = np.maximum(np.round(raw) - 0.01, 0.99)
    # popularity: a random rank inside the category, weight rank ** -s
    shuffle = np.lexsort((rng.random(n_items), category))
    rank = np.empty(n_items, dtype=np.int64)
    rank[shuffle] = np.arange(n_items) - bounds[category[shuffle]]
    weight = (rank + 1.0) ** -ZIPF_EXPONENT
    popularity = weight / np.bincount(category, weights=weight)[category]
    quality = np.clip(rng.normal(3.9, 0.5, n_items), 1.5, 4.9)

    ids = format_ids("i", n_items, max(5, len(str(n_items - 1))))
    names = [
        f"{_ADJECTIVES[i % len(_ADJECTIVES)]} "
        f"{CATEGORIES[c].nouns[(i // len(_ADJECTIVES)) % len(CATEGORIES[c].nouns)]}"
        for i, c in enumerate(category.tolist())
    ]
    items = pd.DataFrame(
        {
            "item_id": ids,
            "name": pd.array(names, dtype="str"),
            "category": pd.array([CATEGORY_NAMES[c] for c in category.tolist()], dtype="str"),
            "price": price,
        }
    )
    return Catalogue(items, category, price, popularity, quality, bounds)
