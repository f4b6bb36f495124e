"""The fractions check the ROAR and ROAD runners share."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

__all__ = ["check_fractions"]


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The fractions as distinct floats in [0, 1], or a ValueError naming `fractions`."""
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Iterable):
        raise ValueError(f"Expected argument `fractions` to be a sequence of numbers in [0, 1], but got {fractions!r}.")
    values = list(fractions)
    if (
        not values
        or not all(isinstance(f, numbers.Real) and 0 <= f <= 1 for f in values)
        or len(set(values)) != len(values)
    ):
        raise ValueError(f"Expected argument `fractions` to be distinct numbers in [0, 1], but got {fractions!r}.")
    return [float(f) for f in values]
