"""The probe set of the callbacks: which validation images they explain, and each rank's shard of them.

A probe is ``num_samples`` images balanced over classes, chosen once with a seeded generator from a scan of the
validation dataset, the same global indices on every rank; rank ``r`` of ``w`` scores positions ``r, r + w, ...``.
What the callbacks of one trainer read from one dataset is cached once (:func:`shared_cache`).

Example::

    >>> import torch
    >>> balanced_indices(torch.tensor([0, 0, 0, 1, 1, 2]), 3).tolist() != []
    True
    >>> shard_positions(5, rank=1, world_size=2).tolist()
    [1, 3]
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from captum_ext._seeds import derived_seed
from captum_ext.batches import Unpack, unpack_batch

__all__ = ["ProbeSet", "ReadCache", "balanced_indices", "shard_positions", "shared_cache", "select_probe"]


def balanced_indices(
    labels: torch.Tensor, num_samples: int, seed: int = 0, classes: Sequence[int] | None = None
) -> torch.Tensor:
    """Positions of ``num_samples`` labels balanced over classes, chosen with a seeded generator.

    The positions are visited in a seeded random order; classes take turns (in ascending order), each taking
    its next unused position, until ``num_samples`` are chosen or every class is exhausted. So every class
    gets ``num_samples // num_classes`` or one more, unless it has fewer samples.

    Args:
        labels: (M,) integer class labels.
        num_samples: how many positions to choose.
        seed: seeds the random order. Default 0.
        classes: restrict the choice to these classes. Default all classes present.

    Returns:
        (min(num_samples, available),) long tensor of positions into ``labels``, in turn order.
    """
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(int(seed)))
    wanted = sorted(set(labels.tolist())) if classes is None else sorted({int(c) for c in classes})
    queues = [order[labels[order] == c].tolist() for c in wanted]
    chosen: list[int] = []
    turn = 0
    while len(chosen) < num_samples and any(turn < len(q) for q in queues):
        for queue in queues:
            if turn < len(queue) and len(chosen) < num_samples:
                chosen.append(queue[turn])
        turn += 1
    return torch.tensor(chosen, dtype=torch.long)


def shard_positions(num_samples: int, rank: int, world_size: int) -> torch.Tensor:
    """Probe positions scored by ``rank``: ``rank, rank + world_size, ...`` (disjoint shards covering all)."""
    return torch.arange(rank, num_samples, world_size, dtype=torch.long)


@dataclass
class ProbeSet:
    """The fixed probe images, identical on every rank, and this rank's shard of them.

    Attributes:
        inputs: (N, C, H, W) probe images (a clone owned by the callback).
        labels: (N,) long labels.
        indices: (N,) long indices of the images in the validation dataset.
        rank, world_size: this process's global rank and the number of processes.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    rank: int = 0
    world_size: int = 1

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def positions(self) -> torch.Tensor:
        """Positions (into the probe set) of this rank's shard."""
        return shard_positions(len(self), self.rank, self.world_size)

    def shard(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(inputs, labels)``."""
        pos = self.positions.to(self.labels.device)
        return self.inputs[pos], self.labels[pos]

    def to(self, device: torch.device) -> ProbeSet:
        """The same probe set on ``device``."""
        return ProbeSet(self.inputs.to(device), self.labels.to(device), self.indices, self.rank, self.world_size)


def _image_and_label(item: Any, unpack: Unpack | None) -> tuple[torch.Tensor, int]:
    image, label = unpack_batch(item, unpack)
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        got = f"a tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise TypeError(
            f"Expected the validation dataset's items to hold a (C, H, W) image tensor, but got {got}; pass `unpack=` "
            "(item -> (image, label)) or the probe images with `probe=(inputs, labels)`."
        )
    if isinstance(label, torch.Tensor) and label.numel() != 1:
        raise TypeError(
            f"Expected each item's label to be a class index, but got a tensor of shape {tuple(label.shape)}."
        )
    return image, int(label)


@dataclass
class ReadCache:
    """What the callbacks of one trainer have read from one validation dataset: the labels of the scanned items and
    the images of the chosen probe items only (a scan of 4,096 images at 224 px would otherwise hold gigabytes)."""

    dataset: Dataset
    labels: dict[int, int] = field(default_factory=dict)
    images: dict[int, torch.Tensor] = field(default_factory=dict)


#: Per trainer, per (dataset, unpack): the shared :class:`ReadCache`, so five callbacks scan the labels once.
_READ: weakref.WeakKeyDictionary[Any, dict[tuple, ReadCache]] = weakref.WeakKeyDictionary()


def shared_cache(trainer: Any, dataset: Dataset, unpack: Unpack | None) -> ReadCache:
    """The read cache of ``dataset`` (unpacked by ``unpack``) shared by every callback of ``trainer``."""
    per_dataset = _READ.setdefault(trainer, {})
    entry = per_dataset.get((id(dataset), unpack))
    if entry is None or entry.dataset is not dataset:
        entry = per_dataset[(id(dataset), unpack)] = ReadCache(dataset)
    return entry


def select_probe(
    dataset: Dataset,
    num_samples: int,
    seed: int,
    classes: Sequence[int] | None,
    scan: int,
    fixed: list[int] | None,
    unpack: Unpack | None = None,
    cache: ReadCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read labels of up to ``scan`` items in seeded random order, choose a balanced probe, load its images.

    Labels and probe images already in ``cache`` are not read again; what is read is added to it (labels of every
    scanned item, images of the chosen ones only)."""
    cache = ReadCache(dataset) if cache is None else cache

    def label(index: int) -> int:
        if index not in cache.labels:
            cache.labels[index] = _image_and_label(dataset[index], unpack)[1]
        return cache.labels[index]

    def image(index: int) -> torch.Tensor:
        if index not in cache.images:
            picture, cache.labels[index] = _image_and_label(dataset[index], unpack)
            cache.images[index] = picture.detach().float().cpu()
        return cache.images[index]

    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            "Expected a map-style validation dataset (with __len__ and __getitem__) to draw the probe set from; "
            f"pass `probe=(inputs, labels)` instead, but got {type(dataset).__name__}."
        )
    if fixed is None:
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
            candidates = torch.arange(len(dataset))
            labels = dataset.tensors[1].reshape(-1).long()
        else:
            order = torch.randperm(
                len(dataset), generator=torch.Generator().manual_seed(derived_seed(seed, "probe scan"))
            )
            candidates = order[:scan]
            labels = torch.tensor([label(int(i)) for i in candidates], dtype=torch.long)
        chosen = candidates[balanced_indices(labels, num_samples, seed, classes)]
    else:
        chosen = torch.tensor(fixed, dtype=torch.long)
    if len(chosen) == 0:
        raise ValueError(f"The probe set is empty: no validation images of the classes {classes!r}.")
    inputs = torch.stack([image(int(i)) for i in chosen]).clone()
    labels = torch.tensor([label(int(i)) for i in chosen], dtype=torch.long)
    return inputs, labels, chosen
