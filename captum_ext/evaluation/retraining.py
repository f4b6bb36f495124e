"""One ROAR / KAR retraining run, as a worker executes it: the masked data view, the run's seeded loaders, the
claim, the fit (one process or Lightning DDP), the test accuracy and the run's record.

Everything here is picklable, so an executor can send it to another process, node or Slurm job.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from captum_ext import maps
from captum_ext._io import owner
from captum_ext._model import accuracy
from captum_ext.batches import unpack_batch, with_images
from captum_ext.data.digits import EpochShuffle
from captum_ext.evaluation import cache, claims, ranking
from captum_ext.evaluation.executors import resolve
from captum_ext.imputation import impute

__all__ = ["RankedMaskDataset", "RunSampler", "PlannedRun"]


class RankedMaskDataset(Dataset):
    """A view of ``dataset`` whose images have their top ``fraction`` of ranked pixels imputed (ROAR), or all
    but the top ``fraction`` (KAR, ``keep=True``), applied on the fly when an item is read.

    A ``DataLoader`` reads a whole batch through :meth:`__getitems__`, so the imputer fills the batch in one call
    (what makes a solver such as :class:`~captum_ext.imputation.NoisyLinearImputer` affordable inside ROAR); an
    imputer marked ``per_image`` (``MeanImputer``, ``ConstantImputer``) fills each image alone, the same result
    without copying the batch. An imputer that looks only at each image itself (also ``BlurImputer``) gives the
    same image either way; ``NoisyLinearImputer`` adds noise by position in the batch (the same noise tensor
    for every batch of one shape), so with a shuffled loader an image's noise changes from epoch to epoch.

    Args:
        dataset: yields ``(image (C, H, W), label, ...)`` items, or dicts with the usual keys (see
            :func:`captum_ext.batches.unpack_batch`), in the order the rankings were computed; each masked item keeps
            its structure (a dict stays a dict), so the module trains on the batches it expects.
        rankings: the ranking folder of the split (shard files of rank positions, see
            :mod:`captum_ext.evaluation.cache`), or one (N, H*W) rank-position ``.npy`` file.
        fraction: Share of pixels removed (ROAR) or kept (KAR), in [0, 1].
        keep: Keep the top pixels and impute the rest. Default False.
        imputer: Fills the removed pixels, e.g. ``MeanImputer(train_mean)``.
        augment: Random transforms (image -> image) applied to each image after masking, so the mask is computed and
            applied on the deterministic view the rankings were made on, and the crop or flip comes after. Default
            None.
    """

    def __init__(
        self,
        dataset: Dataset,
        rankings: str | os.PathLike,
        fraction: float,
        keep: bool,
        imputer: Callable,
        augment: Callable | None = None,
    ):
        self.dataset, self.rankings, self.fraction, self.keep = dataset, str(rankings), fraction, keep
        self.imputer, self.augment = imputer, augment
        self._positions: cache.Rankings | np.ndarray | None = None

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # a map-style dataset: torch's Dataset declares no __len__

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_positions": None}  # the memory map is reopened in each process

    def __getitem__(self, index: int) -> tuple:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        if self._positions is None:
            folder = Path(self.rankings).is_dir()
            self._positions = cache.Rankings(self.rankings) if folder else cache.load_rankings(self.rankings)
        items = [self.dataset[index] for index in indices]
        originals = [unpack_batch(item)[0] for item in items]
        h, w = originals[0].shape[-2:]
        rows = list(indices)
        positions = self._positions.rows(rows) if isinstance(self._positions, cache.Rankings) else self._positions[rows]
        count = maps.pixel_count(self.fraction, h * w)
        removed = positions >= count if self.keep else positions < count  # compared in the stored dtype
        masks = torch.from_numpy(removed).reshape(-1, h, w)
        if getattr(self.imputer, "per_image", False):  # filled one by one, while each image is in cache: no copy
            images = [impute(self.imputer, image[None], mask[None])[0] for image, mask in zip(originals, masks)]
        else:
            images = list(impute(self.imputer, torch.stack(originals), masks))
        if self.augment is not None:
            images = [self.augment(image) for image in images]
        return [with_images(item, image) for image, item in zip(images, items)]


class AugmentedDataset(Dataset):
    """``dataset`` with ``augment`` applied to each image as it is read: the base model's training data when ROAR is
    given an ``augment``, so the base model and the retrained ones see the same kind of images."""

    def __init__(self, dataset: Dataset, augment: Callable):
        self.dataset, self.augment = dataset, augment

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return with_images(item, self.augment(unpack_batch(item)[0]))


class RunSampler(EpochShuffle):
    """The training order of one run: :class:`~captum_ext.data.EpochShuffle`'s order for (seed, epoch), and under
    DDP each rank's share of it (every ``world``-th index, the order padded to a multiple of ``world`` as
    ``DistributedSampler`` does), so the run's seed, not Lightning's sampler, decides the shuffle.

    Example::

        >>> sampler = RunSampler(5, seed=3)
        >>> sorted(sampler) == [0, 1, 2, 3, 4] and list(sampler) == list(EpochShuffle(5, seed=3))
        True
    """

    @staticmethod
    def _shard() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return math.ceil(self.size / self._shard()[1])

    def __iter__(self) -> Iterator[int]:
        rank, world = self._shard()
        order = list(super().__iter__())
        if world == 1:
            return iter(order)
        order += order[: len(self) * world - len(order)]
        return iter(order[rank::world])


@dataclass(frozen=True)
class Job:
    """What every run of one plan shares; shipped to each worker once when the executor can share objects."""

    module_factory: Callable[[], Any]
    namespace: str
    datasets: dict[str, Dataset]
    batch_sizes: dict[str, int]
    imputer: Callable
    keep: bool
    trainer_kwargs: dict[str, Any]
    cache_dir: str
    #: Per split, the DataLoader settings carried over from the datamodule's loaders (``num_workers``,
    #: ``pin_memory``, ``persistent_workers``, ``prefetch_factor``): masking and imputation then run in the workers.
    loader_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Where rankings and test accuracies run (None: the trainer's accelerator, see
    #: :func:`captum_ext.evaluation.ranking.resolve_device`).
    device: str | None = None
    ranking_batch_size: int = 256
    seed: int = 0
    #: Random transforms applied to the masked training images (see :class:`RankedMaskDataset`).
    augment: Callable | None = None
    #: The user's trained model that ranks the pixels (``roar(model=...)``), or None: the base module does.
    model: torch.nn.Module | None = None


@dataclass(frozen=True)
class PlannedRun:
    """One (method, fraction, repeat) retraining of a plan: its cache ``key``, its derived ``seed`` and the paths of
    its method's ranking files per split."""

    key: str
    method: str
    fraction: float
    repeat: int
    seed: int
    rankings: dict[str, str]


def loaders(job: Job, views: Mapping[str, Dataset], seed: int) -> dict[str, DataLoader]:
    """The run's loaders: the training split in :class:`RunSampler`'s order for ``seed``, the others in order, each
    with the worker settings of the datamodule's own loader (:attr:`Job.loader_options`)."""
    out = {}
    for split, dataset in views.items():
        sampler = RunSampler(len(cast(Sized, dataset)), seed) if split == "train" else None
        options = job.loader_options.get(split, {})
        out[split] = DataLoader(dataset, batch_size=job.batch_sizes[split], sampler=sampler, **options)
    return out


def trainer(job: Job) -> Any:
    """A ``Trainer`` of the module's namespace with the job's settings; our sampler already shards under DDP."""
    settings = {**copy.deepcopy(job.trainer_kwargs), "use_distributed_sampler": False}
    return importlib.import_module(job.namespace).Trainer(**settings)


def fit(job: Job, module: Any, splits: dict[str, DataLoader], fitter: Any = None) -> Any:
    """Fit ``module`` on the loaders (train, and val when present) with ``fitter`` or a new :func:`trainer`."""
    fitter = fitter if fitter is not None else trainer(job)
    fitter.fit(module, train_dataloaders=splits["train"], val_dataloaders=splits.get("val"))
    return fitter


def after_rank_zero(fitter: Any, write: Callable[[], Any], read: Callable[[], Any]) -> Any:
    """What rank 0 writes, seen by every rank: rank 0 calls ``write`` and every rank of a still-initialised DDP
    process group waits at a barrier, then the others ``read`` it. Without a process group (one process, or the main
    process after ``ddp_spawn``) this is ``write()``."""
    if fitter.global_rank == 0:
        value = write()
    if torch.distributed.is_available() and torch.distributed.is_initialized() and fitter.world_size > 1:
        torch.distributed.barrier()
    return value if fitter.global_rank == 0 else read()


def check_rankings(job: Job, run: PlannedRun) -> None:
    """A FileNotFoundError naming the run's rankings that are not complete on disk (one listing per split)."""
    for split, dataset in job.datasets.items():
        folder = run.rankings[split]
        if Path(folder).is_dir() and cache.Rankings(folder).complete(len(cast(Sized, dataset))):
            continue
        raise FileNotFoundError(
            f"Expected the {run.method} ranking of the {split} split complete in {folder}, but shards are missing: "
            "compute them first (plan.rank(j), plan.execute(), or `captum-ext roar --rank-index J`)."
        )


def execute(shared: Any, run: PlannedRun) -> dict[str, Any] | None:
    """Retrain ``run`` from scratch on the masked data, test it and write its record; returns the record, or None
    when another worker holds the run's claim (it will write the record).

    ``shared`` is the :class:`Job` or an executor's handle of it (:func:`captum_ext.evaluation.executors.resolve`).
    Under DDP (a ``Trainer`` with ``world_size > 1``) every rank trains, nothing is claimed (the ranks act as one
    worker: keep one DDP driver per cache) and only global rank 0 tests and records; the other ranks wait for it at a
    barrier and return rank 0's record.
    """
    job = resolve(shared)
    record = cache.read_record(job.cache_dir, run.key)
    if record is not None:
        return record
    check_rankings(job, run)
    fitter = trainer(job)
    distributed = fitter.world_size > 1
    held = None if distributed else claims.claim(Path(job.cache_dir) / "runs", run.key)
    if not distributed and held is None:
        return None
    if held is not None and (record := cache.read_record(job.cache_dir, run.key)) is not None:
        held.release(recorded=True)  # finished (record written, then claim released) between the first look and now
        return record
    recorded = False
    try:
        with held.beating() if held is not None else contextlib.nullcontext():
            started = time.time()
            with torch.random.fork_rng():
                torch.manual_seed(run.seed)
                module = job.module_factory()
                views = {
                    split: RankedMaskDataset(
                        dataset,
                        run.rankings[split],
                        run.fraction,
                        job.keep,
                        job.imputer,
                        job.augment if split == "train" else None,
                    )
                    for split, dataset in job.datasets.items()
                }
                splits = loaders(job, views, run.seed)
                fit(job, module, splits, fitter)
                device = ranking.resolve_device(job.device, job.trainer_kwargs)  # Lightning left it on the CPU

                def write() -> dict[str, Any]:
                    record = {
                        "key": run.key,
                        "method": run.method,
                        "fraction": run.fraction,
                        "repeat": run.repeat,
                        "seed": run.seed,
                        "keep": job.keep,
                        "accuracy": accuracy(module.to(device), splits["test"]),
                        "worker": owner(),
                        "seconds": round(time.time() - started, 3),
                    }
                    cache.write_record(job.cache_dir, run.key, record)
                    return record

                record = after_rank_zero(fitter, write, lambda: cache.read_record(job.cache_dir, run.key))
                recorded = True
                return record
    finally:
        if held is not None:
            held.release(recorded)
