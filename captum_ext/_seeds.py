"""The one way the package derives a seed from a seed and a position (a layer index, a call count, a ROAR run).

Example::

    >>> derived_seed(0, 3) == derived_seed(0, 3) != derived_seed(0, 4)
    True
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["derived_seed"]


def derived_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed decided by ``seed`` and the JSON-encodable ``parts`` only (SHA-256 of their JSON): the same in
    every process and run, whatever was drawn before, and unrelated streams for different parts."""
    text = json.dumps([seed, *parts])
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
