"""Imputers: fill removed pixels with something that is not the removed content.

``imputer(inputs, mask)`` returns a copy of (N, C, H, W) ``inputs`` with the ``mask == True`` pixels replaced.
The mask is (H, W), (N, H, W) (broadcast over channels) or (N, C, H, W). ROAR fills with the per-channel
training mean (Hooker et al. 2019). They double as occlusion baselines: a black square is a poor baseline
where the image is already black.

Example::

    >>> import torch
    >>> from captum_ext.imputation import MeanImputer
    >>> x = torch.ones(1, 2, 2, 2)
    >>> mask = torch.tensor([[True, False], [False, False]])
    >>> MeanImputer([0.25, 0.5])(x, mask)[0, :, 0, 0]
    tensor([0.2500, 0.5000])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch.nn import functional as F

__all__ = ["Imputer", "MeanImputer", "ConstantImputer", "BlurImputer", "NoiseImputer", "gaussian_blur"]


def _check(inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate ``inputs`` and ``mask`` and return the mask broadcast to the inputs' shape."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        got = f"shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"Expected argument `inputs` to be a (N, C, H, W) tensor, but got {got}.")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError("Expected argument `mask` to be a bool tensor of shape (H, W), (N, H, W) or (N, C, H, W).")
    n, c, h, w = inputs.shape
    allowed = {(h, w): mask, (n, h, w): mask[:, None] if mask.dim() == 3 else None, (n, c, h, w): mask}
    if tuple(mask.shape) not in allowed:
        raise ValueError(
            f"Expected argument `mask` of shape (H, W) = {(h, w)}, (N, H, W) = {(n, h, w)} or (N, C, H, W) = "
            f"{(n, c, h, w)} to match `inputs`, but got {tuple(mask.shape)}."
        )
    return allowed[tuple(mask.shape)].to(inputs.device).expand(n, c, h, w)


class Imputer:
    """Base class: subclasses implement :meth:`fill`, the values to put in (N, C, H, W) for every pixel."""

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        full = _check(inputs, mask)
        return torch.where(full, self.fill(inputs, full).to(inputs.dtype), inputs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class MeanImputer(Imputer):
    """Fill with a per-channel value, normally the training set's per-channel mean (ROAR's choice).

    Args:
        mean: one value per channel (sequence or (C,) tensor), or a single number for every channel.
    """

    def __init__(self, mean: Sequence[float] | torch.Tensor | float):
        values = torch.as_tensor(mean, dtype=torch.float32).flatten()
        if values.numel() == 0 or not torch.isfinite(values).all():
            raise ValueError(f"Expected argument `mean` to be finite per-channel values, but got {mean!r}.")
        self.mean = values

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c = inputs.shape[1]
        if self.mean.numel() not in (1, c):
            raise ValueError(f"MeanImputer has {self.mean.numel()} channel means but `inputs` has {c} channels.")
        return self.mean.to(inputs.device).reshape(1, -1, 1, 1).expand_as(inputs)


class ConstantImputer(Imputer):
    """Fill with one constant (default 0: "black", Petsiuk's deletion substrate)."""

    def __init__(self, value: float = 0.0):
        if not isinstance(value, numbers.Real):
            raise ValueError(f"Expected argument `value` to be a real number, but got {value!r}.")
        self.value = float(value)

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.full_like(inputs, self.value)


def gaussian_blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with edge-replicate padding; kernel radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = inputs.shape[1]
    out = F.pad(inputs, (0, 0, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    out = F.pad(out, (radius, radius, 0, 0), mode="replicate")
    return F.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


class BlurImputer(Imputer):
    """Fill with a Gaussian-blurred copy of the image (Petsiuk's insertion substrate).

    Args:
        sigma: Standard deviation of the blur in pixels. Default 5.0.
    """

    def __init__(self, sigma: float = 5.0):
        if not isinstance(sigma, numbers.Real) or sigma <= 0:
            raise ValueError(f"Expected argument `sigma` to be a positive real number, but got {sigma!r}.")
        self.sigma = float(sigma)

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(inputs, self.sigma)


class NoiseImputer(Imputer):
    """Fill with seeded Gaussian noise ``mean + std * N(0, 1)``; each call draws from its own generator.

    Args:
        mean: Default 0.0. std: Default 1.0. seed: Default 0 (the same seed fills the same values).
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, seed: int = 0):
        if not isinstance(std, numbers.Real) or std < 0:
            raise ValueError(f"Expected argument `std` to be a non-negative real number, but got {std!r}.")
        if not isinstance(mean, numbers.Real):
            raise ValueError(f"Expected argument `mean` to be a real number, but got {mean!r}.")
        self.mean, self.std, self.seed = float(mean), float(std), int(seed)

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype)
        return (self.mean + self.std * noise).to(inputs.device)
