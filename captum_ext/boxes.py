"""Boxes and masks, in one convention: a box is half-open ``(x0, y0, x1, y1)`` in pixels, torchvision's order
(columns ``x0:x1``, rows ``y0:y1``), an empty box is ``(0, 0, 0, 0)``, and a mask is an (H, W) bool tensor.

Used by the Clever Hans audit (a region given as a box, the box of a discovered region) and by the top-1
localisation error (the box of a map's largest component against the object's box).

Example::

    >>> import torch
    >>> mask = box_to_mask((1, 0, 3, 2), (4, 4))
    >>> mask_to_box(mask)
    (1, 0, 3, 2)
    >>> box_iou(torch.tensor([[0, 0, 2, 2]]), torch.tensor([[1, 1, 3, 3]]))
    tensor([0.1429])
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["Box", "check_box", "box_to_mask", "mask_to_box", "masks_to_boxes", "box_iou", "largest_component_box"]

Box = tuple[int, int, int, int]


def check_box(box: Any, size: tuple[int, int] | None = None, name: str = "box") -> Box:
    """``box`` as a tuple if it is four ints ``0 <= x0 < x1 <= W``, ``0 <= y0 < y1 <= H`` (``size`` = (H, W) when
    given); otherwise a ValueError naming the argument."""
    ok = (
        isinstance(box, (tuple, list))
        and len(box) == 4
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in box)
    )
    if ok:
        x0, y0, x1, y1 = (int(v) for v in box)
        h, w = size if size is not None else (y1, x1)
        ok = 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    if not ok:
        bounds = f"0 <= x0 < x1 <= {size[1]} and 0 <= y0 < y1 <= {size[0]}" if size else "0 <= x0 < x1 and 0 <= y0 < y1"
        raise ValueError(
            f"Expected argument `{name}` to be an (H, W) bool mask or a non-empty half-open (x0, y0, x1, y1) box "
            f"of ints with {bounds}, but got {box!r}."
        )
    return x0, y0, x1, y1


def box_to_mask(box: Sequence[int], size: tuple[int, int], name: str = "box") -> torch.Tensor:
    """(H, W) bool mask of a box; errors name the argument ``name``.

    Raises:
        ValueError: not four ints with ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H``.
    """
    x0, y0, x1, y1 = check_box(box, size, name)
    mask = torch.zeros(*size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def mask_to_box(mask: torch.Tensor) -> Box:
    """The bounding box of a non-empty (H, W) bool mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) long bounding boxes of (N, H, W) bool masks; an empty mask gets the empty box."""
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.long)
    for i, mask in enumerate(masks.cpu()):
        if mask.any():
            boxes[i] = torch.tensor(mask_to_box(mask))
    return boxes


def _area(box: torch.Tensor) -> torch.Tensor:
    return ((box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)).double()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) intersection over union of paired (N, 4) boxes; 0 when both are empty."""
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = (width * height).double()
    union = _area(a) + _area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union)).float()


def largest_component_box(heat: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """(N, 4) long boxes around the largest 8-connected component of each (H, W) map's pixels at or above
    ``threshold`` x its maximum (Grad-CAM's 15%); a map whose maximum is not positive gets the empty box.

    Example::

        >>> heat = torch.zeros(1, 6, 6); heat[0, 1:3, 1:4] = 1.0; heat[0, 5, 5] = 0.9
        >>> largest_component_box(heat).tolist()
        [[1, 1, 4, 3]]
    """
    from scipy import ndimage

    if not isinstance(heat, torch.Tensor) or heat.dim() != 3:
        got = tuple(heat.shape) if isinstance(heat, torch.Tensor) else type(heat).__name__
        raise ValueError(f"Expected argument `heat` to be (N, H, W) maps, but got {got}.")
    threshold = float(threshold)
    if not 0 < threshold <= 1:
        raise ValueError(f"Expected argument `threshold` to be in (0, 1], but got {threshold!r}.")
    heat = heat.detach().cpu()
    boxes = torch.zeros(heat.shape[0], 4, dtype=torch.long)
    for i, one in enumerate(heat):
        peak = float(one.max())
        if peak <= 0:
            continue
        labels, count = ndimage.label((one >= threshold * peak).numpy(), structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        boxes[i] = torch.tensor(mask_to_box(torch.from_numpy(labels == 1 + int(np.argmax(sizes)))))
    return boxes
