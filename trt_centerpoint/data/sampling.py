"""Picking k frames of n evenly spread over a data set (first and last included), as every stage does.

Spreading, not taking the first k, keeps a small sample representative of a folder sorted by time or scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def evenly_spaced_indices(count: int, limit: int | None) -> list[int]:
    """Sorted distinct indices of `limit` items of `count`, evenly spread; all of them when `limit` is None or
    not smaller than `count`."""
    if limit is None or count <= limit:
        return list(range(count))
    if limit <= 0:
        return []
    return sorted(set(np.linspace(0, count - 1, limit).round().astype(int).tolist()))


def evenly_spaced(items: Sequence[T], limit: int | None) -> list[T]:
    """`limit` of `items`, evenly spread (see `evenly_spaced_indices`)."""
    return [items[i] for i in evenly_spaced_indices(len(items), limit)]
