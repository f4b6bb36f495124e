"""ROAR's ranking pass as distributed work: every (method, split) ranking is cut into shards of images, and each
shard is computed by whoever is given it (the plan step itself, a Slurm array task with ``--rank-index``, an
executor's worker, or one DDP rank), on the device the trainer names, and written to its own file.

Example::

    >>> from captum_ext.evaluation.ranking import resolve_device
    >>> resolve_device(None, {"accelerator": "cpu"}).type, resolve_device("cpu", {"accelerator": "gpu"}).type
    ('cpu', 'cpu')
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from captum_ext._model import model_device
from captum_ext._seeds import derived_seed
from captum_ext.evaluation import cache
from captum_ext.evaluation.executors import resolve
from captum_ext.explainer import Explainer, as_explainer

__all__ = ["RankShard", "resolve_device", "check_device", "compute_shard", "on_device"]


def check_device(device: Any) -> torch.device | None:
    """``device`` as a ``torch.device`` (a string such as ``"cuda:1"`` or a device), or None; a clear error
    otherwise."""
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError:
            pass
    raise ValueError(
        f"Expected argument `device` to be a torch.device, a string such as 'cuda:0', or None, but got {device!r}."
    )


def resolve_device(device: str | torch.device | None, trainer_kwargs: dict[str, Any]) -> torch.device:
    """Where the ranking pass and the test accuracies run: ``device`` when given, else the device the trainer's
    ``accelerator`` and ``devices`` name (``"gpu"``/``"cuda"`` -> that CUDA device, ``"auto"`` -> CUDA when
    available; under Lightning DDP, the rank's ``LOCAL_RANK``), else the CPU. Never the CPU just because Lightning
    moved a fitted module back there."""
    chosen = check_device(device)
    if chosen is not None:
        return chosen
    accelerator = trainer_kwargs.get("accelerator", "auto")
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
        raise ValueError(
            f"Expected argument `device` (where rankings and test accuracies run) for the trainer's accelerator "
            f"{accelerator!r}, which is not one of 'auto', 'cpu', 'gpu', 'cuda', 'mps'; pass e.g. device='cuda:0'."
        )
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        devices = trainer_kwargs.get("devices")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        index = devices[local % len(devices)] if isinstance(devices, (list, tuple)) and devices else local
        return torch.device("cuda", int(index))
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class RankShard:
    """Images ``start`` to ``stop - 1`` of one split, ranked by one explainer into ``folder`` (a ranking's folder,
    see :mod:`captum_ext.evaluation.cache`)."""

    method: str
    explainer: Explainer
    split: str
    start: int
    stop: int
    folder: str

    @property
    def path(self) -> Path:
        return cache.shard_path(self.folder, self.start, self.stop)


def compute_shard(shared: Any, shard: RankShard, base_path: str | None = None, progress: bool = False) -> str:
    """Compute ``shard`` (unless its file exists) with the plan's model: the user's (``Job.model``, copied when it
    must move to another device: the user's model is never changed) or the base module loaded from ``base_path``;
    on :func:`resolve_device`'s device. Returns the shard's path.

    ``shared`` is the plan's :class:`~captum_ext.evaluation.retraining.Job` or an executor's handle of it.
    """
    job = resolve(shared)
    if shard.path.exists():
        return str(shard.path)
    device = resolve_device(job.device, job.trainer_kwargs)
    if job.model is not None:
        model = on_device(job.model, device)
    elif base_path is not None and Path(base_path).exists():
        with torch.random.fork_rng():  # the factory's initialisation must not move the caller's RNG streams
            model = cache.load_weights(job.module_factory(), base_path).to(device)
    else:
        raise FileNotFoundError(
            f"Expected the base model {base_path} in the cache: prepare the plan first, with roar_plan(...) or "
            "`captum-ext roar --config FILE --prepare`, on the same settings and cache_dir."
        )
    rows = Subset(job.datasets[shard.split], range(shard.start, shard.stop))
    explainer = as_explainer(shard.explainer)
    if explainer.stochastic:  # its own draws for every shard: no two splits or shards share noise
        explainer.seed = derived_seed(explainer.seed, "shard", shard.split, shard.start)
    cache.compute_rankings(
        model,
        explainer,
        rows,
        shard.path,
        job.ranking_batch_size,
        job.seed,
        progress,
        description=f"ranking {shard.method} ({shard.split} {shard.start}-{shard.stop})",
        loader_options=job.loader_options.get(shard.split),
    )
    return str(shard.path)


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself when it already lives on ``device``, else a copy moved there (the user's model is never
    changed)."""
    current = model_device(model)
    if current == device or (current.type == device.type and device.index is None):
        return model
    return copy.deepcopy(model).to(device)
