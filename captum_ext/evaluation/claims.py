"""Claims on ROAR runs: which worker trains a run, safe for several drivers and job-array tasks sharing one cache
folder, on a network filesystem too.

A claim is a lock file ``<key>.<generation>.lock`` created with ``O_CREAT | O_EXCL`` (atomic on local disks and on
NFS v3+), holding its owner (host, pid), Slurm job and restart count. While the run trains, a heartbeat thread
refreshes the file's mtime; a claim whose file has not changed for ``expiry_s`` seconds (its worker died or hangs),
whose owner on this host has died, or that this Slurm job made before it was requeued, has expired, and the next
claimant creates the next generation's file. A claim given up without a record (the run failed) is marked expired
(mtime set to 0), never deleted, and nobody deletes or renames another worker's file: generation numbers only grow
while a run is unrecorded, so two workers can never hold the same generation or take over each other's fresh claim. Lock files are deleted only by the worker that wrote the run's record (its own
generation and the older ones).

Example::

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> first = claim(folder, "run-a")
    >>> first is not None, claim(folder, "run-a") is None   # held: a second worker backs off
    (True, True)
    >>> first.release(recorded=False)                       # given up (the run failed): expired at once
    >>> claim(folder, "run-a").path.name                    # the next claimant takes the next generation
    'run-a.1.lock'
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

__all__ = ["Claim", "claim", "held_elsewhere", "live_keys", "slurm_task", "slurm_restart", "EXPIRY_S"]

#: Seconds without a heartbeat after which a claim has expired (the heartbeat beats every ``EXPIRY_S / 10``).
EXPIRY_S = 600.0


_LOCK = re.compile(r"(.+)\.(\d+)\.lock")


def _locks(folder: Path) -> dict[str, list[tuple[int, Path]]]:
    """Every key's lock files in ``folder``, oldest generation first, from one directory listing."""
    found: dict[str, list[tuple[int, Path]]] = {}
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            match = _LOCK.fullmatch(entry.name)
            if match:
                found.setdefault(match.group(1), []).append((int(match.group(2)), Path(entry.path)))
    return {key: sorted(files) for key, files in found.items()}


def _generations(folder: Path, key: str) -> list[tuple[int, Path]]:
    return _locks(folder).get(key, [])


def _expired(path: Path, expiry_s: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:  # deleted with the run's record: the claimant will find the record
        return True
    try:
        content = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return True
    except (OSError, ValueError):  # being written, or cut short by a crash: its age decides
        content = {}
    content = content if isinstance(content, dict) else {}
    holder, job = str(content.get("owner", "")), str(content.get("slurm", ""))
    restart = content.get("restart")
    predecessor = (  # this Slurm job before its requeue: the same job, an earlier restart
        bool(job) and job == slurm_task() and isinstance(restart, int) and restart < slurm_restart()
    )
    return age > expiry_s or owner_alive(holder) is False or predecessor


def slurm_task() -> str:
    """This process's Slurm job as ``<array job>_<task>`` in a job array, else its job id; "" outside Slurm. A
    requeued job keeps it and counts up :func:`slurm_restart`, so a claim holding it with a lower restart count was
    made by this job before its requeue, which Slurm has ended: it is taken over at once instead of after
    :data:`EXPIRY_S`. (Processes of one job at the same restart, e.g. the workers of a pool, never take each other's
    claims.)"""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def slurm_restart() -> int:
    """How many times Slurm has requeued this job (``SLURM_RESTART_COUNT``, 0 when unset)."""
    count = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(count) if count.isdigit() else 0


def _expiry(expiry_s: float | None) -> float:
    return EXPIRY_S if expiry_s is None else float(expiry_s)


def held_elsewhere(folder: str | os.PathLike, key: str, expiry_s: float | None = None) -> bool:
    """Whether a live claim on ``key`` exists (some worker, this one included, is training that run now)."""
    found = _generations(Path(folder), key)
    return bool(found) and not _expired(found[-1][1], _expiry(expiry_s))


def live_keys(folder: str | os.PathLike, expiry_s: float | None = None) -> set[str]:
    """The keys with a live claim, from one directory listing (what a driver polls on a network filesystem)."""
    return {key for key, files in _locks(Path(folder)).items() if not _expired(files[-1][1], _expiry(expiry_s))}


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

    def release(self, recorded: bool) -> None:
        """End this claim. With the run's record written (``recorded``), delete this generation's file and the older
        ones; otherwise only mark it expired, so that the next claimant takes the next generation."""
        if not recorded:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path, (0, 0))
            return
        key, generation = self.path.name.rsplit(".", 2)[0], int(self.path.name.rsplit(".", 2)[1])
        for number, path in _generations(self.path.parent, key):
            if number <= generation:
                path.unlink(missing_ok=True)


def claim(folder: str | os.PathLike, key: str, expiry_s: float | None = None) -> Claim | None:
    """Claim ``key`` for this process: a :class:`Claim`, or None when a live claim is held elsewhere (or another
    worker won the race for an expired one). ``expiry_s`` defaults to :data:`EXPIRY_S` (read at each call)."""
    expiry_s = _expiry(expiry_s)
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
        held = {"owner": owner(), "since": time.time(), "slurm": slurm_task(), "restart": slurm_restart()}
        os.write(fd, json.dumps(held).encode())
    finally:
        os.close(fd)
    return Claim(path, expiry_s)
