"""Claims on ROAR runs: which worker trains a run, safe for several drivers and job-array tasks sharing one cache
folder, on a network filesystem too.

A claim is a lock file ``<key>.<generation>.lock`` created with ``O_CREAT | O_EXCL`` (atomic on local disks and on
NFS v3+), holding its owner (host, pid). While the run trains, a heartbeat thread refreshes the file's mtime; a
claim whose file has not changed for ``expiry_s`` seconds (its worker died or hangs), or whose owner on this host has
died, has expired, and the next claimant creates the next generation's file. Expired claims are never deleted or
renamed by others, so two workers can never both break the same claim and take over each other's fresh one.

Example::

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> first = claim(folder, "run-a")
    >>> first is not None, claim(folder, "run-a") is None   # held: a second worker backs off
    (True, True)
    >>> first.release()
    >>> claim(folder, "run-a") is not None                  # released: free again
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from captum_ext._io import owner, owner_alive

__all__ = ["Claim", "claim", "held_elsewhere", "EXPIRY_S"]

#: Seconds without a heartbeat after which a claim has expired (the heartbeat beats every ``EXPIRY_S / 10``).
EXPIRY_S = 600.0


def _generations(folder: Path, key: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"{re.escape(key)}\.(\d+)\.lock")
    found = []
    for path in folder.glob(f"{key}.*.lock"):
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _expired(path: Path, expiry_s: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
        holder = json.loads(path.read_text() or "{}").get("owner", "")
    except FileNotFoundError:  # released meanwhile
        return True
    except (OSError, ValueError):  # being written: its creator is alive
        return False
    return age > expiry_s or owner_alive(holder) is False


def held_elsewhere(folder: str | os.PathLike, key: str, expiry_s: float = EXPIRY_S) -> bool:
    """Whether a live claim on ``key`` exists (someone is training that run now)."""
    found = _generations(Path(folder), key)
    return bool(found) and not _expired(found[-1][1], expiry_s)


class Claim:
    """A held claim: :meth:`beating` keeps it alive while the run trains, :meth:`release` ends it."""

    def __init__(self, path: Path, expiry_s: float):
        self.path, self.expiry_s = path, expiry_s

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        """Refresh the lock file's mtime every ``expiry_s / 10`` seconds while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.expiry_s / 10):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        thread = threading.Thread(target=beat, name=f"claim-heartbeat-{self.path.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def release(self) -> None:
        """Delete this claim and every older generation of it (expired by construction)."""
        key = self.path.name.rsplit(".", 2)[0]
        for _, path in _generations(self.path.parent, key):
            path.unlink(missing_ok=True)


def claim(folder: str | os.PathLike, key: str, expiry_s: float = EXPIRY_S) -> Claim | None:
    """Claim ``key`` for this process: a :class:`Claim`, or None when a live claim is held elsewhere (or another
    worker won the race for an expired one)."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    found = _generations(target, key)
    if found and not _expired(found[-1][1], expiry_s):
        return None
    path = target / f"{key}.{found[-1][0] + 1 if found else 0}.lock"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, json.dumps({"owner": owner(), "since": time.time()}).encode())
    finally:
        os.close(fd)
    return Claim(path, expiry_s)
