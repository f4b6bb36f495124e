"""Peak resident memory of one call, shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def resident_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_of(call: Callable[[], object]) -> tuple[float, float]:
    """(seconds, MiB above the resident size before the call at the highest point sampled every millisecond)."""
    baseline, peak, done = resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        call()
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
    return elapsed, (max(peak[0], resident_bytes()) - baseline) / 2**20
