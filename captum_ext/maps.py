"""Saliency-map helpers: channel reduction, upsampling, normalising, ranking and top-k masks.

Every metric, benchmark and audit reads attributions through these functions, so "the map" means the same
thing everywhere.

Example::

    >>> import torch
    >>> from captum_ext import maps
    >>> attr = torch.tensor([[[[1.0, -3.0]], [[-2.0, 0.5]]]])   # (N=1, C=2, H=1, W=2)
    >>> maps.reduce_channels(attr, "sum_abs")
    tensor([[[3.0000, 3.5000]]])
    >>> maps.top_k_mask(maps.reduce_channels(attr, "sum_abs"), 0.5)
    tensor([[[False,  True]]])
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, cast

import torch
from torch.nn import functional as F

from captum_ext._checks import check_choice, check_finite, check_seed

__all__ = [
    "Reduction",
    "REDUCTIONS",
    "check_reduction",
    "reduce_channels",
    "upsample",
    "normalize_minmax",
    "normalize_percentile",
    "normalize_sum",
    "rank_pixels",
    "top_k_mask",
    "mask_from_ranking",
    "pixel_count",
]

Reduction = Literal["sum_abs", "sum", "positive", "max_abs"]
REDUCTIONS: tuple[str, ...] = ("sum_abs", "sum", "positive", "max_abs")


def _check_rank(maps: torch.Tensor, rank: int, name: str, form: str) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != rank:
        got = f"a tensor of shape {tuple(maps.shape)}" if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"Expected argument `{name}` to be a {rank}-d tensor {form}, but got {got}.")


def _check_maps(maps: object) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() < 1:
        raise ValueError(f"Expected argument `maps` to be a (N, ...) tensor, but got {type(maps).__name__}.")
    check_finite("maps", maps)


def check_reduction(reduce: object) -> Reduction:
    """``reduce`` if it is one of :data:`REDUCTIONS`, else a ValueError naming the argument and the choices."""
    check_choice("reduce", reduce, REDUCTIONS)
    return cast(Reduction, reduce)  # one of REDUCTIONS, the strings of Reduction


def reduce_channels(attributions: torch.Tensor, reduce: Reduction = "sum_abs") -> torch.Tensor:
    """Reduce (N, C, H, W) attributions to (N, H, W) maps.

    ``"sum_abs"``: sum of |a| over channels (ROAR/ROAD ranking, sanity checks); ``"sum"``: signed sum;
    ``"positive"``: sum of max(a, 0), the positive evidence (audits); ``"max_abs"``: max of |a|.
    """
    _check_rank(attributions, 4, "attributions", "(N, C, H, W)")
    check_reduction(reduce)
    check_finite("attributions", attributions)
    if reduce == "sum_abs":
        return attributions.abs().sum(1)
    if reduce == "sum":
        return attributions.sum(1)
    if reduce == "positive":
        return attributions.clamp(min=0).sum(1)
    return attributions.abs().amax(1)  # "max_abs"


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (N, h, w) or (N, C, h, w) maps to ``size`` = (H, W) (bilinear, ``align_corners=False``)."""
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4):
        raise ValueError("Expected argument `maps` to be a tensor of shape (N, h, w) or (N, C, h, w).")
    squeeze = maps.dim() == 3
    x = maps[:, None] if squeeze else maps
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(x.float(), size=tuple(size), mode=mode, **kwargs)
    return out[:, 0] if squeeze else out


def normalize_minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a (N, ...) batch to [0, 1] (float64 stays float64, anything else becomes float32); a
    constant map becomes all zeros. NaN or Inf is refused (it has no place on the scale)."""
    _check_maps(maps)
    flat = maps.reshape(maps.shape[0], -1)
    flat = flat if flat.dtype == torch.float64 else flat.float()
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def normalize_sum(maps: torch.Tensor) -> torch.Tensor:
    """Divide each non-negative map of a (N, ...) batch by its sum (a distribution over pixels); an all-zero map
    stays zero. Keeps the dtype. NaN or Inf is refused.

    Example::

        >>> normalize_sum(torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]]]))
        tensor([[[0.2500, 0.7500]],
        <BLANKLINE>
                [[0.0000, 0.0000]]])
    """
    _check_maps(maps)
    total = maps.reshape(maps.shape[0], -1).sum(1).reshape(-1, *[1] * (maps.dim() - 1))
    return torch.where(total > 0, maps / total.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def normalize_percentile(maps: torch.Tensor, q: float = 99.0) -> torch.Tensor:
    """Divide each map by its ``q``-th percentile of |map| and clip to [-1, 1] (robust to a few hot pixels)."""
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 < q <= 100:
        raise ValueError(f"Expected argument `q` to be a percentile in (0, 100], but got {q!r}.")
    _check_maps(maps)
    flat = maps.reshape(maps.shape[0], -1).float()
    scale = torch.quantile(flat.abs(), q / 100.0, dim=1, keepdim=True)
    out = torch.where(scale > 0, flat / scale.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.clamp(-1, 1).reshape(maps.shape)


def rank_pixels(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Pixel indices of each (H, W) map, most relevant first: (N, H*W) long.

    Ties are broken by one fixed random permutation of the pixels drawn from ``seed`` (never by position, which
    would favour the top-left corner of constant regions), the same for every map: an image's ranking does not
    depend on its place in the batch, so chunked, sharded (DDP) and whole-batch runs agree.

    Example::

        >>> tied = torch.zeros(3, 2, 2)
        >>> bool((rank_pixels(tied) == rank_pixels(tied[1:2])).all())   # position in the batch does not matter
        True
    """
    _check_rank(maps, 3, "maps", "(N, H, W)")
    check_finite("maps", maps, "A NaN pixel has no rank.")
    check_seed(seed)
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(flat.shape[1], generator=gen).to(flat.device).expand(n, -1)
    order = torch.sort(torch.gather(flat, 1, perm), dim=1, descending=True, stable=True).indices
    return torch.gather(perm, 1, order)


def top_k_mask(maps: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Bool (N, H, W) mask of the ``round(fraction * H * W)`` most relevant pixels of each map."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
        raise ValueError(f"Expected argument `fraction` to be a real number in [0, 1], but got {fraction!r}.")
    ranking = rank_pixels(maps, seed)
    return mask_from_ranking(ranking, fraction, maps.shape[1:])


def pixel_count(fraction: float, pixels: int) -> int:
    """How many of ``pixels`` a ``fraction`` selects: ``fraction * pixels`` rounded half up (not to even), the one
    rule shared by masks, ROAR/KAR views and deletion/insertion steps.

    Example::

        >>> pixel_count(0.5, 5), pixel_count(0.1, 1024)
        (3, 102)
    """
    return int(math.floor(fraction * pixels + 0.5))


def mask_from_ranking(ranking: torch.Tensor, fraction: float, size: tuple[int, int]) -> torch.Tensor:
    """Bool (N, H, W) mask of the first :func:`pixel_count` ``(fraction, H * W)`` pixels of a (N, H*W) ``ranking``."""
    n, hw = ranking.shape
    k = pixel_count(fraction, hw)
    mask = torch.zeros(n, hw, dtype=torch.bool, device=ranking.device)
    mask.scatter_(1, ranking[:, :k], True)
    return mask.reshape(n, *size)
