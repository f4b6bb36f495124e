"""The one integer-argument check every public entry point uses, so all of them word the error the same way."""

from __future__ import annotations

import numbers

__all__ = ["check_int"]


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) of at least ``minimum``; otherwise a ValueError
    naming the argument and the expected form.

    Example::

        >>> check_int("steps", 8, 1)
        8
        >>> check_int("steps", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `steps` to be an int >= 1, but got 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an int >= {minimum}, but got {value!r}.")
    return int(value)
