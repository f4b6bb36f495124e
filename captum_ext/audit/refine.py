"""Refine a discovered region by intervention: grow and shrink its box by what removing and pasting it does.

Relevance finds *where* to look, but per-pixel maps sit on a shortcut's edges and coarse maps (Grad-CAM cells) spill
over its neighbourhood, so the box drawn around the relevance is often a part, or a blur, of the region the model
reads. The model itself says where the region ends. For class ``c`` the **effect** of a box ``G`` is

    effect(G) = mean over c's images of [p_c(x) - p_c(x with G imputed)]          (necessity: removing it hurts)
              + mean over other images of [p_c(x with G pasted from a c image) - p_c(x)]   (sufficiency: it alone
                                                                                            pushes towards c)

with ``p_c`` the softmax probability. Removal alone would stop at a part of a patch whose every part is needed,
pasting alone at a part of one whose every part suffices; the sum keeps the box until both are whole.

:func:`refine_box` first widens the box on all sides at once, doubling the margin, never past ``max_area``, and keeps
the narrowest widening whose effect is within 5% of the best (a corner of a patch that is read as a whole gains
nothing from one side at a time). Then, one side at a time and the most effective move first, it shrinks while the effect stays within 5% of the
largest seen, grows where a move adds at least 5% of the effect (and 0.02), and shrinks again: the smallest box that
removes and pastes as much as the widened one. Moves start at a quarter of the box's side (shrinking) or 1/32 of the
image's (growing) and halve down to one pixel.

Example::

    >>> truth = (2, 3, 6, 7)                                   # the model reads the pixels of this box
    >>> def effect(box):                                       # share of the truth covered, less a cost per pixel
    ...     x0, y0, x1, y1 = box
    ...     inter = max(0, min(x1, 6) - max(x0, 2)) * max(0, min(y1, 7) - max(y0, 3))
    ...     return inter / 16 - 0.001 * (x1 - x0) * (y1 - y0)
    >>> refine_box(effect, (2, 3, 4, 5), (16, 16), max_area=0.5)   # starts on the box's top-left corner
    (2, 3, 6, 7)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from captum_ext.boxes import Box, box_to_mask

__all__ = ["InterventionEffect", "refine_box"]

_GAIN = 0.05  # a grown side must add this share of the effect...
_MIN_GAIN = 0.02  # ...and at least this much (probability units)
_TOLERANCE = 0.05  # a shrunk side may lose this share of the largest effect seen


def _moved(box: Box, side: int, step: int, size: tuple[int, int]) -> Box:
    """``box`` with one side (0 left, 1 top, 2 right, 3 bottom) moved outwards by ``step`` (inwards if negative),
    clipped to the image; an empty result stays as it is."""
    x0, y0, x1, y1 = box
    h, w = size
    if side == 0:
        x0 = min(max(0, x0 - step), x1 - 1)
    elif side == 1:
        y0 = min(max(0, y0 - step), y1 - 1)
    elif side == 2:
        x1 = max(min(w, x1 + step), x0 + 1)
    else:
        y1 = max(min(h, y1 + step), y0 + 1)
    return x0, y0, x1, y1


def _dilated(box: Box, by: int, size: tuple[int, int]) -> Box:
    """``box`` widened by ``by`` pixels on every side, clipped to the image."""
    x0, y0, x1, y1 = box
    return max(0, x0 - by), max(0, y0 - by), min(size[1], x1 + by), min(size[0], y1 + by)


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def refine_box(
    effect: Callable[[Box], float], box: Box, size: tuple[int, int], max_area: float, step: int | None = None
) -> Box:
    """Grow, then shrink, ``box`` by ``effect`` (see the module docstring); the box never exceeds ``max_area``
    (a share of the ``size`` = (H, W) image) unless it started larger. ``step`` defaults to 1/32 of the side."""
    h, w = size
    limit = max_area * h * w
    coarse = max(1, round(max(h, w) / 32)) if step is None else step
    seen: dict[Box, float] = {}

    def measured(candidate: Box) -> float:
        if candidate not in seen:
            seen[candidate] = float(effect(candidate))
        return seen[candidate]

    # 1. widen on every side at once, doubling: a part of a region whose parts do nothing alone (pasting a corner
    #    of a patch read as a whole) gains nothing from one side at a time. Keep the narrowest within tolerance.
    widened, by = [box], coarse
    while _area(bigger := _dilated(box, by, size)) <= limit and bigger != widened[-1]:
        widened.append(bigger)
        by *= 2
    best = max(measured(b) for b in widened)
    box = next(b for b in widened if measured(b) >= best - _TOLERANCE * abs(best))
    # 2. one side at a time, the best move first, strides halving down to a pixel: shrink, grow, shrink again
    box = _shrink(measured, box, size, max(seen.values()))
    box = _grow(measured, box, coarse, size, limit)
    return _shrink(measured, box, size, max(seen.values()))


def _best_move(measured: Callable[[Box], float], box: Box, stride: int, size: tuple[int, int]) -> Box | None:
    """The most effective of the four boxes with one side moved by ``stride`` (outwards if positive)."""
    moves = [moved for side in range(4) if (moved := _moved(box, side, stride, size)) != box]
    return max(moves, key=measured, default=None)


def _grow(measured: Callable[[Box], float], box: Box, stride: int, size: tuple[int, int], limit: float) -> Box:
    """Move the best side out while the move adds at least ``_GAIN`` of the effect (and ``_MIN_GAIN``), halving
    ``stride`` when no move does, never past ``limit`` pixels."""
    while stride >= 1:
        move = _best_move(measured, box, stride, size)
        gain = max(_MIN_GAIN, _GAIN * abs(measured(box)))
        if move is not None and _area(move) <= limit and measured(move) >= measured(box) + gain:
            box = move
        else:
            stride //= 2
    return box


def _shrink(measured: Callable[[Box], float], box: Box, size: tuple[int, int], reference: float) -> Box:
    """Move the best side in while the effect stays within ``_TOLERANCE`` of ``reference`` (the largest effect seen,
    so that small losses do not add up), from a quarter of the box's shorter side down to a pixel: the tolerance is
    spent on the strips that matter least."""
    stride = max(1, min(box[2] - box[0], box[3] - box[1]) // 4)
    while stride >= 1:
        move = _best_move(measured, box, -stride, size)
        if move is not None and measured(move) >= reference - _TOLERANCE * abs(reference):
            box = move
        else:
            stride //= 2
    return box


class InterventionEffect:
    """``effect(box)`` of the module docstring for class ``cls``, on fixed images: ``members`` (images of the class,
    predicted as it) and ``others`` (images of other classes not predicted as it), each pasted on from
    ``sources`` (images of the class, cycled). ``probability(images) -> (N,)`` gives ``p_cls``.

    Example::

        >>> import torch
        >>> probability = lambda x: x[:, 0, 0, 0]                 # a "model" that reads the top-left pixel
        >>> members, others = torch.ones(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
        >>> fill = lambda x, mask: torch.where(mask, 0.0, x)      # the imputer: black
        >>> InterventionEffect(probability, members, others, members, fill)((0, 0, 2, 2))
        2.0
    """

    def __init__(
        self,
        probability: Callable[[torch.Tensor], torch.Tensor],
        members: torch.Tensor,
        others: torch.Tensor,
        sources: torch.Tensor,
        fill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ):
        self.probability, self.fill = probability, fill
        self.members, self.others = members, others
        self.sources = sources[torch.arange(len(others)) % len(sources)] if len(sources) else sources
        self.size = (members if len(members) else others).shape[-2:]
        self.members_before = probability(members) if len(members) else None
        self.others_before = probability(others) if len(others) and len(sources) else None

    def __call__(self, box: Box) -> float:
        mask = box_to_mask(box, (int(self.size[0]), int(self.size[1])))
        total = 0.0
        if self.members_before is not None:
            total += float((self.members_before - self.probability(self.fill(self.members, mask))).mean())
        if self.others_before is not None:
            pasted = torch.where(mask, self.sources, self.others)
            total += float((self.probability(pasted) - self.others_before).mean())
        return total
