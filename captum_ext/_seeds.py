"""The one way the package derives a seed from a seed and a position (a layer index, a call count, a ROAR run).

Example::

    >>> derived_seed(0, "layer", 3) == derived_seed(0, "layer", 3) != derived_seed(0, "call", 3)
    True
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["derived_seed"]


def derived_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed decided by ``seed`` and the JSON-encodable ``parts`` only (SHA-256 of their JSON): the same in
    every process and run, whatever was drawn before, and unrelated streams for different parts. Callers name what
    the seed is for as the first part (``"layer"``, ``"call"``, ``"probe scan"``; ROAR's runs use the method name),
    so two uses never share a stream."""
    text = json.dumps([seed, *parts])
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
