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
import warnings
from collections.abc import Sequence
from typing import Literal, cast

import torch
from torch.nn import functional as F

from captum_ext._checks import check_choice, check_finite, check_real, check_seed
from captum_ext._multigrid import solve_neighbour_average, solve_neighbour_average_direct
from captum_ext.normalization import Normalization, check_normalization

__all__ = [
    "impute",
    "Imputer",
    "MeanImputer",
    "ConstantImputer",
    "BlurImputer",
    "NoiseImputer",
    "NoisyLinearImputer",
    "gaussian_blur",
]


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
    check_finite("inputs", inputs, "A non-finite kept pixel would spread into the filled ones.")
    # never the None entry: a mask shaped (N, H, W) is 3-d
    full = cast(torch.Tensor, allowed[tuple(mask.shape)])
    return full.to(inputs.device).expand(n, c, h, w)


def impute(imputer: object, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``imputer(inputs, mask)``, its result checked: what a user hands in as an imputer may be any callable, and a
    metric computed from a wrongly shaped or non-finite fill would be a plausible wrong number.

    Raises:
        ValueError: the result is not a float tensor of ``inputs``' shape, or holds NaN or Inf.

    Example::

        >>> x = torch.ones(2, 1, 2, 2)
        >>> impute(lambda inputs, mask: inputs[:1], x, torch.zeros(2, 2, dtype=torch.bool))
        Traceback (most recent call last):
        ...
        ValueError: Expected the imputer to return a float tensor of the inputs' shape (2, 1, 2, 2), but it returned shape (1, 1, 2, 2).
    """
    out = imputer(inputs, mask)  # type: ignore[operator]  # callable: checked where it was given
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.shape != inputs.shape:
        if not isinstance(out, torch.Tensor):
            got = type(out).__name__
        else:
            got = f"shape {tuple(out.shape)}" + ("" if out.is_floating_point() else f", dtype {out.dtype}")
        raise ValueError(
            f"Expected the imputer to return a float tensor of the inputs' shape {tuple(inputs.shape)}, but it "
            f"returned {got}."
        )
    return check_finite("imputed images", out, f"The imputer {imputer!r} filled NaN or Inf.")


class Imputer:
    """Base class: subclasses implement :meth:`fill`, the values to put in (N, C, H, W) for every pixel.

    ``per_image`` is True when each image's fill depends on that image alone (and no random draw), so filling images
    one at a time gives exactly the batch's result; ROAR's masked views then fill each image as it is read instead
    of copying the batch. ``uses_mask`` is False when the fill ignores the mask (a constant, the mean, a blur of the
    whole image): metrics that remove many different pixel sets from one image then compute its fill once.
    """

    per_image: bool = False
    uses_mask: bool = True

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

    per_image = True
    uses_mask = False

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
    """Fill with one constant in pixel space (default 0: "black", Petsiuk's deletion substrate).

    Args:
        value: the pixel value. Default 0.0.
        normalization: the model's input normalisation; with it the fill is ``(value - mean) / std`` per channel,
            the value as the model sees it (with ``Normalize`` in the pipeline a raw 0 would be the mean colour).
            Default None (the inputs are pixels).

    Example::

        >>> from captum_ext.normalization import Normalization
        >>> black = ConstantImputer(0.0, normalization=Normalization((0.5,), (0.25,)))
        >>> black(torch.ones(1, 1, 1, 2), torch.tensor([[True, False]])).tolist()
        [[[[-2.0, 1.0]]]]
    """

    per_image = True
    uses_mask = False

    def __init__(self, value: float = 0.0, normalization: Normalization | None = None):
        self.value = check_real("value", value)
        self.normalization = check_normalization(normalization)

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.normalization is None:
            return torch.full_like(inputs, self.value)
        return self.normalization.from_pixels(torch.full_like(inputs[:1, :, :1, :1], self.value)).expand_as(inputs)


def gaussian_blur(inputs: torch.Tensor, sigma: float, padding: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur of each channel of (N, C, H, W); kernel radius ceil(3 sigma) (for ``"reflect"``
    padding at most the image side minus one). ``padding``: ``"replicate"`` (edges) or ``"reflect"``."""
    radius = max(1, math.ceil(3.0 * sigma))
    if padding == "reflect":
        radius = min(radius, inputs.shape[-1] - 1, inputs.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = inputs.shape[1]
    out = F.pad(inputs, (radius, radius, radius, radius), mode=padding)
    out = F.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


class BlurImputer(Imputer):
    """Fill with a Gaussian-blurred copy of the image (Petsiuk's insertion substrate).

    Args:
        sigma: Standard deviation of the blur in pixels. Default 5.0.
    """

    uses_mask = False

    def __init__(self, sigma: float = 5.0):
        self.sigma = check_real("sigma", sigma, 0.0, low_open=True)

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        side = max(inputs.shape[-2:])
        if 3.0 * self.sigma > 4 * side:
            raise ValueError(
                f"Expected argument `sigma` to give a kernel radius (3 sigma) of at most 4 x the image side ({4 * side} "
                f"px for {tuple(inputs.shape[-2:])} images), but got sigma={self.sigma}: a blur that wide is the image's "
                "mean colour; use MeanImputer."
            )
        return gaussian_blur(inputs, self.sigma)


class NoiseImputer(Imputer):
    """Fill with seeded Gaussian noise ``mean + std * N(0, 1)``; each call draws from its own generator.

    Args:
        mean: Default 0.0. std: Default 1.0. seed: Default 0 (the same seed fills the same values).
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, seed: int = 0):
        self.std = check_real("std", std, 0.0)
        self.mean = check_real("mean", mean)
        self.seed = check_seed(seed)

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype)
        return (self.mean + self.std * noise).to(inputs.device)


class NoisyLinearImputer(Imputer):
    """Fill each removed pixel with the weighted average of its 8 neighbours, plus a little noise (ROAD).

    Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022. Every
    removed pixel satisfies ``x_i = sum_j w_j x_j / sum_j w_j`` over its in-image neighbours ``j`` (weight 1/6
    for the 4 direct neighbours, 1/12 for the 4 diagonal ones); kept pixels are fixed. The sparse system of all
    (image, channel) planes is solved at once by conjugate gradient in float64 preconditioned with one
    aggregation-multigrid V-cycle (:mod:`captum_ext._multigrid`): 6-18 iterations whatever the holes' size,
    not one sparse factorisation per image. Gaussian noise of std ``noise`` is then added to the filled pixels, so the imputed region carries no
    sharp shape a model could read. A plane with *every* pixel removed has nothing to interpolate from and is
    filled with ``mean`` (the dataset mean; by default the per-channel mean of the batch given) plus noise.

    Args:
        noise: Standard deviation of the noise added to imputed pixels. Default 0.01 (ROAD's choice).
        mean: Per-channel fill value (sequence, (C,) tensor or number) for fully removed planes, or None for the
            per-channel mean of the batch. Default None.
        seed: Seeds the noise; a call with the same shapes draws the same noise. Default 0.
        tol: Stop when every plane's preconditioned residual norm is below ``tol`` times its right-hand side
            norm. Default 1e-6 (about 1e-5 absolute error on [0, 1] images).
        max_iter: Conjugate-gradient iteration cap, or None for the default. Default 200 (the multigrid
            preconditioner needs 6-18 iterations from salt-and-pepper masks to 90% holes at 224 px).
        backend: ``"multigrid"`` (default, the batched solver above) or ``"scipy"``: each image's system assembled
            as a sparse matrix and solved by scipy's sparse LU on the CPU, slow and exact to rounding, kept to check
            the multigrid solver against (they agree to 1e-5 on [0, 1] images; ``tol`` and ``max_iter`` are then
            unused).

    Raises:
        ValueError: a negative ``noise``, a non-positive ``tol`` or ``max_iter``, non-finite ``mean``, or an unknown
            ``backend``.

    Example::

        >>> import torch
        >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> mask = torch.zeros(3, 3, dtype=torch.bool)
        >>> mask[1, 1] = True
        >>> NoisyLinearImputer(noise=0.0)(x, mask)[0, 0, 1, 1]
        tensor(4.)
    """

    def __init__(
        self,
        noise: float = 0.01,
        mean: Sequence[float] | torch.Tensor | float | None = None,
        seed: int = 0,
        tol: float = 1e-6,
        max_iter: int | None = 200,
        backend: Literal["multigrid", "scipy"] = "multigrid",
    ):
        noise = check_real("noise", noise, 0.0)
        check_choice("backend", backend, ("multigrid", "scipy"))
        tol = check_real("tol", tol, 0.0, low_open=True)
        max_iter = 200 if max_iter is None else max_iter
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
            raise ValueError(f"Expected argument `max_iter` to be a positive int or None, but got {max_iter!r}.")
        check_seed(seed)
        values: torch.Tensor | None = None
        if mean is not None:
            values = torch.as_tensor(mean, dtype=torch.float32).flatten()
            if values.numel() == 0 or not torch.isfinite(values).all():
                raise ValueError(f"Expected argument `mean` to be finite per-channel values or None, but got {mean!r}.")
        self.noise: float = float(noise)
        self.mean: torch.Tensor | None = values
        self.seed: int = int(seed)
        self.tol: float = float(tol)
        self.max_iter: int = int(max_iter)
        self.backend: str = backend

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, c = inputs.shape[:2]
        if self.backend == "scipy":
            solution, iterations = solve_neighbour_average_direct(inputs, mask), 0
        else:
            solution, iterations = solve_neighbour_average(inputs, mask, self.tol, self.max_iter)
        if iterations >= self.max_iter:
            warnings.warn(
                f"NoisyLinearImputer: the solve used all max_iter={self.max_iter} iterations and may not have reached "
                f"tol={self.tol}; the fill may be approximate.",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.mean is None:
            mean = inputs.detach().double().mean(dim=(0, 2, 3))
        elif self.mean.numel() in (1, c):
            mean = self.mean.to(device=inputs.device, dtype=torch.float64).expand(c)
        else:
            raise ValueError(f"NoisyLinearImputer has {self.mean.numel()} channel means but `inputs` has {c} channels.")
        everything = mask.reshape(n, c, -1).all(dim=2)[..., None, None]
        solution = torch.where(everything, mean.reshape(1, c, 1, 1), solution)
        if self.noise > 0:
            gen = torch.Generator().manual_seed(self.seed)
            solution = solution + self.noise * torch.randn(inputs.shape, generator=gen, dtype=torch.float64).to(
                inputs.device
            )
        return solution
