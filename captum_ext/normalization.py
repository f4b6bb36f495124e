"""The input normalisation a model expects, so that fills and pictures are in pixel space.

Most pipelines end with ``torchvision.transforms.Normalize(mean, std)``: the model sees ``(pixels - mean) / std``.
There, a fill of 0 is not black but the mean colour, and an image shown as it is has the wrong colours. A
:class:`Normalization` handed to ``ConstantImputer``, the deletion / insertion metrics, the callbacks and the plots
puts "black" (or any constant) and the pictures back in pixel space.

Example::

    >>> import torch
    >>> norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    >>> norm.from_pixels(torch.zeros(1, 3, 1, 1)).flatten().tolist()   # black, as the model sees it
    [-2.0, -2.0, -2.0]
    >>> norm.to_pixels(norm.from_pixels(torch.ones(1, 3, 1, 1))).flatten().tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captum_ext._checks import check_real

__all__ = ["Normalization", "IMAGENET", "check_normalization"]


@dataclass(frozen=True)
class Normalization:
    """``model_input = (pixels - mean) / std`` per channel (torchvision's ``Normalize``).

    Args:
        mean: one value per channel.
        std: one positive value per channel, as many as ``mean``.

    Raises:
        ValueError: empty or mismatched sequences, a non-finite value or a non-positive ``std``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if isinstance(mean, (str, bytes)) or not isinstance(mean, Sequence) or not mean:
            raise ValueError(f"Expected argument `mean` to be a sequence of per-channel values, but got {mean!r}.")
        if isinstance(std, (str, bytes)) or not isinstance(std, Sequence) or len(std) != len(mean):
            raise ValueError(
                f"Expected argument `std` to hold one value per channel of `mean` ({len(mean)}), but got {std!r}."
            )
        object.__setattr__(self, "mean", tuple(check_real("mean", m) for m in mean))
        object.__setattr__(self, "std", tuple(check_real("std", s, 0.0, low_open=True) for s in std))

    def _shape(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != len(self.mean):
            raise ValueError(
                f"Expected (N, {len(self.mean)}, H, W) images for the {len(self.mean)}-channel `normalization`, but got "
                f"shape {tuple(x.shape)}."
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        return mean, std

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel-space (N, C, H, W) images as the model sees them."""
        mean, std = self._shape(x)
        return (x - mean) / std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs (N, C, H, W) back in pixel space (for pictures)."""
        mean, std = self._shape(x)
        return x * std + mean


#: torchvision's ImageNet normalisation.
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def check_normalization(value: object) -> Normalization | None:
    """``value`` if it is a :class:`Normalization` or None, else a TypeError naming `normalization`."""
    if value is not None and not isinstance(value, Normalization):
        raise TypeError(
            f"Expected argument `normalization` to be a captum_ext.normalization.Normalization or None, but got "
            f"{type(value).__name__}."
        )
    return value
