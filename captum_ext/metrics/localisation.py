"""Localisation metrics: how much of a map's positive relevance falls inside a given region, and does the map's
box find the object?

Arras, Osman & Samek (2022), "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural network
explanations", Information Fusion 81: *relevance mass accuracy* and *relevance rank accuracy*; Zhang et al.
(2018), "Top-down neural attention by excitation backprop", IJCV: the *pointing game*; Selvaraju et al. (2017),
"Grad-CAM", ICCV (after Zhou et al.'s CAM, CVPR 2016): the *top-1 localisation error*, where a map is binarised at
15% of its maximum and the box around its largest connected component must overlap the object's box with
IoU >= 0.5, for a correctly classified image.

Only the positive part of a map is used: a (N, C, H, W) attribution is reduced to ``sum_c max(a, 0)`` (the
``"positive"`` reduction of :func:`captum_ext.maps.reduce_channels`), a (N, H, W) map to ``max(a, 0)``.
For each image, with ``R`` the positive map and ``G`` the region (``K = |G|`` pixels):

* relevance mass  ``sum_{p in G} R_p / sum_p R_p`` (0 for a map with no positive relevance);
* rank accuracy   ``|top_K(R) ∩ G| / K``, the top-K pixels ranked by :func:`captum_ext.maps.rank_pixels`
  (ties broken by a fixed seeded permutation, never by position);
* pointing game   1 if the single top-ranked pixel lies in ``G`` and the map has positive relevance, else 0
  (no tolerance margin, unlike Zhang et al.'s 15 pixels).

The functions return one value per image; the torchmetrics ``Metric`` classes accumulate their sum and count
(``dist_reduce_fx="sum"``, so they sync under DDP) and ``compute()`` returns the mean over all images seen.
The chance level of all three is the region's area share ``K / (H * W)``.

Example::

    >>> import torch
    >>> from captum_ext.metrics import RelevanceMass, PointingGame
    >>> region = torch.zeros(4, 4, dtype=torch.bool); region[:2, :2] = True
    >>> maps = torch.zeros(2, 4, 4); maps[0, 0, 0] = 3.0; maps[0, 3, 3] = 1.0; maps[1, 3, 3] = 1.0
    >>> metric = RelevanceMass(region)
    >>> metric.update(maps)
    >>> metric.compute()
    tensor(0.3750)
    >>> pointing = PointingGame(region)
    >>> pointing.update(maps)
    >>> pointing.compute()
    tensor(0.5000)
"""

from __future__ import annotations

from typing import cast

import torch
from torchmetrics import Metric

from captum_ext import boxes as _boxes
from captum_ext import maps as _maps
from captum_ext._checks import check_finite, check_seed
from captum_ext.boxes import box_iou, masks_to_boxes
from captum_ext.metrics._mean import MeanOverImages

__all__ = [
    "positive_map",
    "relevance_mass",
    "relevance_rank_accuracy",
    "pointing_game",
    "RelevanceMass",
    "RelevanceRankAccuracy",
    "PointingGame",
    "largest_component_box",
    "box_iou",  # from captum_ext.boxes
    "localisation_error",
    "LocalisationError",
]


def positive_map(attributions: torch.Tensor) -> torch.Tensor:
    """The (N, H, W) positive evidence of (N, H, W) or (N, C, H, W) ``attributions`` (channels summed after ReLU).

    Raises:
        ValueError: ``attributions`` is not a 3-d or 4-d floating tensor, or holds NaN or Inf.
    """
    if (
        not isinstance(attributions, torch.Tensor)
        or attributions.dim() not in (3, 4)
        or not attributions.is_floating_point()
    ):
        got = (
            f"shape {tuple(attributions.shape)}, dtype {attributions.dtype}"
            if isinstance(attributions, torch.Tensor)
            else type(attributions).__name__
        )
        raise ValueError(
            f"Expected argument `attributions` to be a float (N, H, W) or (N, C, H, W) tensor, but got {got}."
        )
    check_finite("attributions", attributions, "A NaN map has no relevance mass (it would count as 0).")
    if attributions.dim() == 4:
        return _maps.reduce_channels(attributions, "positive")
    return attributions.clamp(min=0)


def check_region(region: torch.Tensor, size: tuple[int, int] | None = None, n: int | None = None) -> torch.Tensor:
    """Validate a bool region, (H, W) or (when ``n`` is given) (N, H, W), non-empty, matching ``size`` if given."""
    if not isinstance(region, torch.Tensor) or region.dtype != torch.bool:
        got = f"dtype {region.dtype}" if isinstance(region, torch.Tensor) else type(region).__name__
        raise TypeError(f"Expected argument `region` to be a bool tensor of shape (H, W), but got {got}.")
    shapes: list[tuple[int, ...]] = [size] if size is not None else [tuple(region.shape[-2:])]
    if n is not None and size is not None:
        shapes.append((n, *size))
    if region.dim() not in ((2, 3) if n is not None else (2,)) or tuple(region.shape) not in [tuple(s) for s in shapes]:
        want = " or ".join(str(tuple(s)) for s in shapes) if size is not None else "(H, W)"
        raise ValueError(f"Expected argument `region` to have shape {want}, but got {tuple(region.shape)}.")
    if not bool(region.reshape(-1, *region.shape[-2:]).flatten(1).any(1).all()):
        raise ValueError("Expected argument `region` to contain at least one True pixel, but got an empty region.")
    return region


def _prepare(attributions: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = positive_map(attributions)
    n, h, w = positive.shape
    region = check_region(region, (h, w), n).to(positive.device)
    return positive, region.expand(n, h, w)


def relevance_mass(attributions: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each image's positive relevance inside ``region`` (Arras et al. 2022, relevance mass accuracy).

    Args:
        attributions: (N, H, W) or (N, C, H, W) maps; only the positive part counts.
        region: (H, W) or (N, H, W) bool mask, non-empty.

    Returns:
        (N,) float tensor in [0, 1]; 0 for a map with no positive relevance.

    Raises:
        ValueError, TypeError: malformed ``attributions`` or ``region``.
    """
    positive, region = _prepare(attributions, region)
    inside = (positive * region).flatten(1).sum(1)
    total = positive.flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def relevance_rank_accuracy(attributions: torch.Tensor, region: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Share of the K most relevant pixels that lie in the K-pixel ``region`` (Arras et al. 2022).

    Args:
        attributions: (N, H, W) or (N, C, H, W) maps; only the positive part counts.
        region: (H, W) or (N, H, W) bool mask, non-empty.
        seed: seeds the tie-breaking permutation of :func:`captum_ext.maps.rank_pixels`. Default 0.

    Returns:
        (N,) float tensor in [0, 1].
    """
    positive, region = _prepare(attributions, region)
    n = positive.shape[0]
    flat_region = region.reshape(n, -1)
    ranking = _maps.rank_pixels(positive, seed)
    k = flat_region.sum(1)
    hits = torch.gather(flat_region, 1, ranking)
    within_top = torch.arange(ranking.shape[1], device=ranking.device)[None, :] < k[:, None]
    return (hits & within_top).sum(1).to(positive.dtype) / k.to(positive.dtype)


def pointing_game(attributions: torch.Tensor, region: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """1.0 where the most relevant pixel lies in ``region``, else 0.0 (Zhang et al. 2018, without tolerance).

    A map with no positive relevance is a miss. Ties for the maximum are broken by a seeded permutation.

    Args:
        attributions: (N, H, W) or (N, C, H, W) maps; only the positive part counts.
        region: (H, W) or (N, H, W) bool mask, non-empty.
        seed: seeds the tie-breaking permutation. Default 0.

    Returns:
        (N,) float tensor of 0.0 / 1.0.
    """
    positive, region = _prepare(attributions, region)
    n = positive.shape[0]
    top = _maps.rank_pixels(positive, seed)[:, :1]
    hit = torch.gather(region.reshape(n, -1), 1, top)[:, 0]
    return (hit & (positive.flatten(1).amax(1) > 0)).to(positive.dtype)


class _RegionMetric(Metric):
    """Mean over images of a per-image localisation score against a fixed (H, W) region."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    total: torch.Tensor  # states added by add_state
    count: torch.Tensor

    def __init__(self, region: torch.Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        check_region(region)
        self.region = region.detach().clone()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _score(self, attributions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, attributions: torch.Tensor) -> None:
        """Add a batch of (N, H, W) or (N, C, H, W) attributions."""
        positive = positive_map(attributions)
        check_region(self.region, cast("tuple[int, int]", tuple(positive.shape[-2:])))  # (N, H, W) maps
        scores = self._score(positive)
        self.total += scores.sum().to(self.total)
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        """Mean score over all images seen (float32 scalar)."""
        return (self.total / self.count).float()


class RelevanceMass(_RegionMetric):
    """Mean share of positive relevance inside ``region`` (Arras et al. 2022); chance level is its area share.

    Args:
        region: (H, W) bool mask, non-empty.
        **kwargs: passed to ``torchmetrics.Metric`` (``dist_sync_on_step``, ``process_group``, ...).

    Raises:
        TypeError: ``region`` is not a bool tensor. ValueError: not (H, W), empty, or a batch of another size.

    Example::

        >>> import torch
        >>> region = torch.tensor([[True, False], [False, False]])
        >>> metric = RelevanceMass(region)
        >>> metric.update(torch.tensor([[[3.0, 1.0], [0.0, -5.0]]]))
        >>> metric.compute()
        tensor(0.7500)
    """

    def _score(self, attributions: torch.Tensor) -> torch.Tensor:
        return relevance_mass(attributions, self.region)


class RelevanceRankAccuracy(_RegionMetric):
    """Mean share of the K most relevant pixels inside the K-pixel ``region`` (Arras et al. 2022).

    Args:
        region: (H, W) bool mask, non-empty.
        seed: seeds the tie-breaking permutation. Default 0.
        **kwargs: passed to ``torchmetrics.Metric``.

    Example::

        >>> import torch
        >>> region = torch.tensor([[True, True], [False, False]])
        >>> metric = RelevanceRankAccuracy(region)
        >>> metric.update(torch.tensor([[[3.0, 1.0], [2.0, 0.0]]]))
        >>> metric.compute()
        tensor(0.5000)
    """

    def __init__(self, region: torch.Tensor, seed: int = 0, **kwargs) -> None:
        super().__init__(region, **kwargs)
        self.seed = check_seed(seed)

    def _score(self, attributions: torch.Tensor) -> torch.Tensor:
        return relevance_rank_accuracy(attributions, self.region, self.seed)


class PointingGame(_RegionMetric):
    """Share of images whose most relevant pixel lies in ``region`` (Zhang et al. 2018, no tolerance).

    Args:
        region: (H, W) bool mask, non-empty.
        seed: seeds the tie-breaking permutation. Default 0.
        **kwargs: passed to ``torchmetrics.Metric``.

    Example::

        >>> import torch
        >>> region = torch.tensor([[True, False], [False, False]])
        >>> metric = PointingGame(region)
        >>> metric.update(torch.tensor([[[3.0, 1.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]))
        >>> metric.compute()
        tensor(0.5000)
    """

    def __init__(self, region: torch.Tensor, seed: int = 0, **kwargs) -> None:
        super().__init__(region, **kwargs)
        self.seed = check_seed(seed)

    def _score(self, attributions: torch.Tensor) -> torch.Tensor:
        return pointing_game(attributions, self.region, self.seed)


def largest_component_box(attributions: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """:func:`captum_ext.boxes.largest_component_box` of the positive part of (N, C, H, W) attributions or (N, H, W)
    maps: (N, 4) long ``(x0, y0, x1, y1)`` boxes.

    Example::

        >>> heat = torch.zeros(1, 1, 6, 6); heat[0, 0, 1:3, 1:4] = 1.0
        >>> largest_component_box(heat).tolist()
        [[1, 1, 4, 3]]
    """
    return _boxes.largest_component_box(positive_map(attributions), threshold)


def _as_boxes(boxes: torch.Tensor, n: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) boxes from (N, 4) / (4,) boxes or (N, H, W) / (H, W) bool object masks (their bounding boxes)."""
    if isinstance(boxes, torch.Tensor) and boxes.dtype == torch.bool:
        return masks_to_boxes(check_region(boxes, size, n).expand(n, *size))
    if not isinstance(boxes, torch.Tensor) or boxes.shape not in ((4,), (n, 4)) or boxes.is_floating_point():
        got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(
            f"Expected argument `boxes` to be (N, 4) integer (x0, y0, x1, y1) boxes or (N, H, W) bool object "
            f"masks, but got {got}."
        )
    out = boxes.reshape(-1, 4).expand(n, 4).long().cpu()
    h, w = size
    inside = (out[:, 0] >= 0) & (out[:, 0] < out[:, 2]) & (out[:, 2] <= w)
    inside &= (out[:, 1] >= 0) & (out[:, 1] < out[:, 3]) & (out[:, 3] <= h)
    if not bool(inside.all()):
        bad = out[~inside][0].tolist()
        raise ValueError(
            f"Expected argument `boxes` to be half-open (x0, y0, x1, y1) boxes with 0 <= x0 < x1 <= {w} and "
            f"0 <= y0 < y1 <= {h}, but got {bad} (boxes were (top, left, bottom, right) before issue #17)."
        )
    return out


def localisation_error(
    attributions: torch.Tensor,
    boxes: torch.Tensor,
    predictions: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.15,
    iou: float = 0.5,
) -> torch.Tensor:
    """Top-1 localisation error per image (Grad-CAM's protocol): 0.0 when the image is classified correctly and the
    box of its map (:func:`largest_component_box`) overlaps the object's box with IoU >= ``iou``, else 1.0.

    Args:
        attributions: (N, H, W) or (N, C, H, W) maps, usually for the predicted class; only the positive part counts.
        boxes: the objects' (N, 4) ``(x0, y0, x1, y1)`` boxes (:mod:`captum_ext.boxes`: half-open, torchvision's order), or (N, H, W) / (H, W)
            bool masks whose bounding boxes are used.
        predictions, labels: (N,) predicted and true classes.
        threshold: binarisation level, a share of each map's maximum. Default 0.15.
        iou: the overlap needed. Default 0.5.

    Returns:
        (N,) float tensor of 0.0 / 1.0.
    """
    found = largest_component_box(attributions, threshold)
    n = found.shape[0]
    truth = _as_boxes(boxes, n, cast("tuple[int, int]", tuple(attributions.shape[-2:])))  # (..., H, W) maps
    predictions, labels = torch.as_tensor(predictions).reshape(-1).cpu(), torch.as_tensor(labels).reshape(-1).cpu()
    if predictions.shape != (n,) or labels.shape != (n,):
        raise ValueError(
            f"Expected arguments `predictions` and `labels` to have shape ({n},), but got "
            f"{tuple(predictions.shape)} and {tuple(labels.shape)}."
        )
    correct = (predictions == labels) & (box_iou(found, truth) >= iou)
    return (~correct).float().to(attributions.device)


class LocalisationError(MeanOverImages):
    """Top-1 localisation error over all images seen (:func:`localisation_error`); lower is better. Sum and count
    states, synced under DDP.

    Example::

        >>> heat = torch.zeros(2, 8, 8); heat[:, 2:6, 2:6] = 1.0
        >>> metric = LocalisationError()
        >>> metric.update(heat, torch.tensor([2, 2, 6, 6]), predictions=torch.tensor([1, 0]), labels=torch.tensor([1, 1]))
        >>> metric.compute()   # the first is found, the second misclassified
        tensor(0.5000)
    """

    higher_is_better = False

    def __init__(self, threshold: float = 0.15, iou: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold, self.iou = float(threshold), float(iou)
        if not 0 < self.threshold <= 1 or not 0 < self.iou <= 1:
            raise ValueError(f"Expected arguments `threshold` and `iou` in (0, 1], but got {threshold!r} and {iou!r}.")

    def update(
        self, attributions: torch.Tensor, boxes: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor
    ) -> None:
        """Add a batch: maps, object boxes or masks, predicted and true classes."""
        self.add(localisation_error(attributions, boxes, predictions, labels, self.threshold, self.iou))
