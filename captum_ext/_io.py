"""Atomic file writes: a result file is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_json_atomic", "write_text_atomic", "save_figure", "owner", "owner_alive"]


def owner() -> str:
    """This process as ``host-pid`` (dots in the host name replaced, so the name parses back)."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def owner_alive(name: str) -> bool | None:
    """Whether the process named ``host-pid`` by :func:`owner` is alive: None when it ran on another host or
    ``name`` is not of that form (nothing can be known here)."""
    host, _, pid = name.rpartition("-")
    if host != socket.gethostname().replace(".", "_") or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the owner in the name: a cleaner spares a live writer's file
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{owner()}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; result files are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(data: Any, path: str | os.PathLike, **json_kwargs: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (flushed to disk before the rename) and return the path
    (``json_kwargs`` go to ``json.dump``)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, **json_kwargs)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure to ``path`` atomically, in the format named by its suffix (e.g. ``.png``)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    return Path(path)
