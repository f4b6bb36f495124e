"""Executors for ROAR's retrainings on the engines users already run: local processes, Ray, Dask, Slurm (submitit).

Any ``concurrent.futures.Executor`` works as ``roar(..., executor=...)`` (a ``ProcessPoolExecutor``, Dask's
``client.get_executor()``); it is then sent the datasets with every run. The adapters here are Executors too, and
add ``share(obj)``: ROAR calls it once, so the datasets travel once per worker (or once per Slurm submission) and
each run carries only its own few fields. Every adapter names the serializer it uses (``pickler``), so ROAR checks
that the job can be sent before it submits anything.

========================  ==============================================  =================================
adapter                   where runs execute                              the job travels
========================  ==============================================  =================================
:class:`ProcessPool`      spawned processes on this machine               once per worker (its initializer)
:class:`RayExecutor`      Ray tasks, on a local or remote Ray cluster     once per node (``ray.put``)
:class:`DaskExecutor`     a Dask ``distributed`` cluster                  once per worker (``scatter``)
:class:`SubmititExecutor` submitit jobs: local processes or Slurm          once (a file in submitit's folder)
========================  ==============================================  =================================

Example::

    >>> import concurrent.futures
    >>> with ProcessPool(workers=2) as pool:
    ...     isinstance(pool, concurrent.futures.Executor), pool.pickler
    (True, 'pickle')
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captum_ext._checks import check_int, check_real
from captum_ext._io import atomic_path

__all__ = ["ProcessPool", "RayExecutor", "DaskExecutor", "SubmititExecutor", "resolve"]

_LOADED: dict[str, Any] = {}  # token -> object shared with this worker process (the most recent one only)


def _install(token: str, obj: Any, threads: int) -> None:
    """A :class:`ProcessPool` worker's initializer: keep the shared object, use ``threads`` intra-op threads."""
    import torch

    torch.set_num_threads(threads)
    _LOADED.clear()
    _LOADED[token] = obj


class _Installed:
    """Stands for an object a :class:`ProcessPool` gave every worker when it started."""

    def __init__(self, token: str):
        self.token = token

    def get(self) -> Any:
        return _LOADED[self.token]


class _File:
    """Stands for an object written once to a shared folder; each process reads it at most once."""

    def __init__(self, path: str):
        self.path = path

    def get(self) -> Any:
        if self.path not in _LOADED:
            import cloudpickle

            with open(self.path, "rb") as handle:
                obj = cloudpickle.load(handle)  # the driver's own file, as submitit's pickled jobs are
            _LOADED.clear()
            _LOADED[self.path] = obj
        return _LOADED[self.path]


def resolve(shared: Any) -> Any:
    """The object behind what an adapter's ``share`` returned: a handle's ``get()``; Ray and Dask hand the worker
    the object itself."""
    return shared.get() if isinstance(shared, (_Installed, _File)) else shared


class ProcessPool(concurrent.futures.Executor):
    """``workers`` spawned processes on this machine, each with ``threads`` intra-op threads (default: the cores
    divided among the workers, at least 1); an object given to :meth:`share` reaches each worker once, when it
    starts.

    Args:
        workers: Number of processes.
        threads: torch intra-op threads per worker. Default ``max(1, cpu_count // workers)``.
    """

    pickler = "pickle"

    def __init__(self, workers: int, threads: int | None = None):
        self.workers = check_int("workers", workers, 1)
        self.threads = (
            check_int("threads", threads, 1) if threads is not None else max(1, (os.cpu_count() or 1) // workers)
        )
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _start(self, initargs: tuple) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_install, initargs=initargs
        )
        return self._pool

    def share(self, obj: Any) -> _Installed:
        """Restart the workers with ``obj`` installed in each; returns its handle for :func:`resolve`."""
        token = uuid.uuid4().hex
        self._start((token, obj, self.threads))
        return _Installed(token)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        pool = self._pool if self._pool is not None else self._start(("", None, self.threads))
        return pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class RayExecutor(concurrent.futures.Executor):
    """Each submission is a Ray task with the given resources; uses the connected Ray cluster (``ray.init(...)``
    before, or a local one started by Ray on first use).

    Args:
        num_cpus: CPUs each run reserves. Default 1.
        num_gpus: GPUs each run reserves (fractions allowed). Default 0.
        **options: further ``ray.remote`` options (``memory``, ``resources``, ``max_retries``...).
    """

    pickler = "cloudpickle"

    def __init__(self, num_cpus: float = 1, num_gpus: float = 0, **options: Any):
        import ray  # noqa: F401 - fail here, not at the first submission, when Ray is missing

        self.options = {
            "num_cpus": check_real("num_cpus", num_cpus, 0),
            "num_gpus": check_real("num_gpus", num_gpus, 0),
            **options,
        }
        self._remote: dict[Callable, Any] = {}

    def share(self, obj: Any) -> Any:
        """Put ``obj`` in Ray's object store once; Ray hands each task the object."""
        import ray

        return ray.put(obj)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        import ray

        if fn not in self._remote:
            self._remote[fn] = ray.remote(**self.options)(fn)
        return self._remote[fn].remote(*args, **kwargs).future()


class DaskExecutor(concurrent.futures.Executor):
    """Runs on a Dask ``distributed`` client; :meth:`share` scatters an object to every worker once.

    Args:
        client: a ``distributed.Client`` (``Client(LocalCluster(...))``, or one connected to a scheduler) whose
            workers have one thread each (checked: concurrent runs in one process would share torch's RNG).
        **submit_kwargs: passed to every ``client.submit`` (``resources``, ``workers``, ``retries``...).
    """

    pickler = "cloudpickle"

    def __init__(self, client: Any, **submit_kwargs: Any):
        if not hasattr(client, "scatter") or not hasattr(client, "get_executor"):
            raise TypeError(f"Expected argument `client` to be a distributed.Client, but got {type(client).__name__}.")
        threads = client.nthreads()
        if any(count > 1 for count in threads.values()):
            raise ValueError(
                "Expected argument `client` to have one thread per worker (LocalCluster(threads_per_worker=1), "
                f"`dask worker --nthreads 1`), but got {sorted(set(threads.values()))}: runs in threads of one process "
                "share torch's global random state, so their results would depend on what else ran."
            )
        self.client = client
        self._executor = client.get_executor(pure=False, **submit_kwargs)

    def share(self, obj: Any) -> Any:
        """Scatter ``obj`` to every worker; Dask hands each task the object."""
        return self.client.scatter(obj, broadcast=True, hash=False)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait)


class SubmititExecutor(concurrent.futures.Executor):
    """Wraps a submitit executor (``submitit.AutoExecutor(folder)`` for Slurm, ``submitit.LocalExecutor(folder)``
    for local processes): each submission is a submitit job, its result delivered through a ``Future`` by one
    polling thread. :meth:`share` writes an object once to the executor's folder (which Slurm nodes must see, as
    submitit requires anyway).

    Args:
        executor: the submitit executor, with its parameters already set (``update_parameters(...)``).
        poll_s: Seconds between two looks at the jobs' states. Default 2.
    """

    pickler = "cloudpickle"

    def __init__(self, executor: Any, poll_s: float = 2.0):
        if not hasattr(executor, "submit") or not hasattr(executor, "folder"):
            raise TypeError(
                f"Expected argument `executor` to be a submitit Executor, but got {type(executor).__name__}."
            )
        self.executor, self.poll_s = executor, check_real("poll_s", poll_s, 0, low_open=True)
        self._jobs: list[tuple[Any, concurrent.futures.Future]] = []
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None
        self._shared: list[Path] = []

    def share(self, obj: Any) -> _File:
        """Write ``obj`` with cloudpickle to the executor's folder (the deepest part of it without submitit's ``%j``
        placeholders); returns its handle for :func:`resolve`. The file is deleted by :meth:`shutdown`."""
        import cloudpickle

        folder = Path(self.executor.folder)
        while "%" in str(folder):
            folder = folder.parent
        path = folder / f"captum_ext_shared_{uuid.uuid4().hex}.pkl"
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            cloudpickle.dump(obj, handle)
        self._shared.append(path)
        return _File(str(path))

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        job = self.executor.submit(fn, *args, **kwargs)
        with self._lock:
            self._jobs.append((job, future))
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll, name="submitit-poller", daemon=True)
                self._poller.start()
        return future

    def _poll(self) -> None:
        """Deliver finished jobs' results to their Futures; cancel the job of a cancelled Future; stop when idle."""
        try:
            while True:
                with self._lock:
                    if not self._jobs:
                        return
                    jobs, self._jobs = self._jobs, []
                waiting = []
                for job, future in jobs:
                    if future.cancelled():
                        job.cancel(check=False)
                    elif not job.done():
                        waiting.append((job, future))
                    elif future.set_running_or_notify_cancel():
                        try:
                            future.set_result(job.result())
                        except BaseException as err:  # noqa: BLE001 - the job's failure belongs to its Future
                            future.set_exception(err)
                with self._lock:
                    self._jobs = waiting + self._jobs
                time.sleep(self.poll_s)
        finally:
            with self._lock:
                self._poller = None
                if self._jobs:  # submitted while this thread was finishing: start another
                    self._poller = threading.Thread(target=self._poll, name="submitit-poller", daemon=True)
                    self._poller.start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Wait for the submitted jobs (``cancel_futures`` cancels those not finished), then delete the shared files."""
        if cancel_futures:
            with self._lock:
                for _, future in self._jobs:
                    future.cancel()
        while wait and self._poller is not None:
            time.sleep(min(self.poll_s, 0.1))
        if wait:
            for path in self._shared:
                path.unlink(missing_ok=True)
            self._shared.clear()
