"""The input images of a dataloader batch, as the feature views read them."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from captum_ext.batches import IMAGE_KEYS

__all__ = ["batch_inputs"]


def batch_inputs(batch: object, name: str = "dataloader") -> torch.Tensor:
    """The input images of a dataloader batch: the batch itself if a tensor, else its first element, else a dict's
    image entry (the keys of :data:`captum_ext.batches.IMAGE_KEYS`)."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(batch, Mapping):
        x = next((batch[key] for key in IMAGE_KEYS if key in batch), batch)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"Expected argument `{name}` to yield images (N, C, H, W) or tuples starting with them, but got {got}."
        )
    return x
