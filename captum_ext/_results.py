"""The protocol every result object shares: ``to_dict()`` gives JSON-able values, ``from_dict(data)`` rebuilds the
object, ``to_json(path)`` writes the dict atomically and returns the path, ``from_json(path)`` reads it back.

Example::

    >>> import tempfile, pathlib
    >>> from captum_ext.evaluation import ROADResult
    >>> result = ROADResult("saliency", "morf", {0.5: 0.2}, {0.5: 0.6}, 0.9)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = result.to_json(pathlib.Path(folder) / "road.json")
    ...     ROADResult.from_json(path) == result
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from typing_extensions import Self

from captum_ext._io import write_json_atomic

__all__ = ["JSONResult"]


class JSONResult:
    """Mixin of the result classes: subclasses write :meth:`to_dict` and :meth:`from_dict`; the files come from
    here."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able values (tensors as nested lists)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The result :meth:`to_dict` described."""
        raise NotImplementedError

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (a temporary file renamed into place); return the path."""
        return write_json_atomic(self.to_dict(), path, indent=1)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Self:
        """Read a file written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))
