"""``MeanOverImages``: the torchmetrics base of every per-image score here, a sum and a count that DDP sums."""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["MeanOverImages"]


class MeanOverImages(Metric):
    """Mean of per-image scores over every image seen, on every rank: ``total`` and ``count`` states with
    ``dist_reduce_fx="sum"``; subclasses compute the scores and call :meth:`add`."""

    is_differentiable = False
    full_state_update = False
    total: torch.Tensor  # states added by add_state
    count: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def add(self, scores: torch.Tensor) -> None:
        """Add one score per image."""
        self.total += scores.detach().sum().to(self.total)
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        """Mean score over all images seen (float32 scalar; NaN before any update)."""
        return (self.total / self.count).float()
