"""``concept_iou``: Network Dissection's score, how well does each unit of a layer segment each concept?

Bau et al. 2017, "Network Dissection: Quantifying Interpretability of Deep Visual Representations". For unit
u with activation maps ``A_u(x)`` (h, w), the threshold ``T_u`` is the ``quantile`` of all its activation
values over the dataset (all images and positions; 0.995 in the paper). The unit's mask on image x is
``S_u(x) > T_u`` with ``S_u`` the map upsampled bilinearly to the concept mask's size, and

    ``IoU(u, c) = sum_x |M_u(x) & L_c(x)| / sum_x |M_u(x) | L_c(x)|``

over the whole dataset, with ``L_c(x)`` the concept's mask. A unit is called a detector of its best concept
when that IoU exceeds ``iou_threshold`` (0.04 in the paper). The strict ``>`` keeps a ReLU unit that is zero on
more than ``1 - quantile`` of all positions (threshold 0) from covering the whole image.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn import functional as F

from captum_ext._context import eval_mode
from captum_ext._model import capture_output
from captum_ext._results import JSONResult

__all__ = ["ConceptIoU", "concept_iou"]


@dataclass
class ConceptIoU(JSONResult):
    """Network Dissection scores of every unit of one layer against every concept.

    Attributes:
        layer: The dotted layer name.
        concepts: The concept names, one per mask channel.
        iou: (units, concepts) the dataset-wide IoU.
        thresholds: (units,) the activation threshold ``T_u``.
        quantile: The quantile that set the thresholds.
        iou_threshold: The IoU above which a unit counts as a detector.
        detectors: The verdict: ``{unit: (concept name, IoU)}`` for every unit whose best IoU exceeds
            ``iou_threshold``.
    """

    layer: str
    concepts: list[str]
    iou: torch.Tensor
    thresholds: torch.Tensor
    quantile: float
    iou_threshold: float
    detectors: dict[int, tuple[str, float]]

    def to_dict(self) -> dict:
        """A JSON-able dict (tensors as nested lists, detector keys as strings)."""
        return {
            "layer": self.layer,
            "concepts": list(self.concepts),
            "iou": self.iou.tolist(),
            "thresholds": self.thresholds.tolist(),
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "detectors": {str(u): [c, v] for u, (c, v) in self.detectors.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConceptIoU:
        """The result :meth:`to_dict` described (detector keys back to ints)."""
        return cls(
            layer=data["layer"],
            concepts=list(data["concepts"]),
            iou=torch.tensor(data["iou"], dtype=torch.float32),
            thresholds=torch.tensor(data["thresholds"], dtype=torch.float32),
            quantile=float(data["quantile"]),
            iou_threshold=float(data["iou_threshold"]),
            detectors={int(u): (c, float(v)) for u, (c, v) in data["detectors"].items()},
        )

    def plot(self) -> Figure:
        """A matplotlib Figure: the IoU matrix, units by concepts, detectors marked."""
        units, concepts = self.iou.shape
        fig = Figure(figsize=(1.2 + 0.9 * concepts, 1.0 + 0.25 * units))
        ax = fig.add_subplot(1, 1, 1)
        image = ax.imshow(self.iou.numpy(), aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_xticks(range(concepts), self.concepts, rotation=45, ha="right")
        ax.set_ylabel("unit")
        for unit, (name, _) in self.detectors.items():
            ax.text(self.concepts.index(name), unit, "*", ha="center", va="center", color="red")
        ax.set_title(
            f"Network Dissection IoU, {self.layer} (q={self.quantile}; * = IoU > {self.iou_threshold})", fontsize=9
        )
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        lines = [
            f"ConceptIoU(layer={self.layer!r}, quantile={self.quantile}, iou_threshold={self.iou_threshold}, "
            f"detectors={len(self.detectors)} of {self.iou.shape[0]} units)",
            f"{'unit':>5}  {'threshold':>10}  {'best concept':<16}  {'IoU':>6}  detector",
        ]
        best_iou, best = self.iou.max(dim=1)
        for unit in range(self.iou.shape[0]):
            lines.append(
                f"{unit:>5}  {float(self.thresholds[unit]):>10.4g}  {self.concepts[int(best[unit])]:<16}  "
                f"{float(best_iou[unit]):>6.3f}  {'yes' if unit in self.detectors else 'no'}"
            )
        return "\n".join(lines)


def _split_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    if (
        not isinstance(batch, (tuple, list))
        or len(batch) < 2
        or not isinstance(batch[0], torch.Tensor)
        or not isinstance(batch[1], torch.Tensor)
        or batch[0].dim() != 4
        or batch[1].dim() not in (3, 4)
        or len(batch[1]) != len(batch[0])
    ):
        shapes: list[tuple[int, ...] | str] | str
        if isinstance(batch, (tuple, list)):
            shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in batch]
        else:
            shapes = type(batch).__name__
        raise ValueError(
            "Expected argument `dataloader` to yield (images (N, C, H, W), masks (N, K, Hm, Wm) or (N, Hm, Wm)), "
            f"but got {shapes}."
        )
    masks = batch[1] if batch[1].dim() == 4 else batch[1][:, None]
    return batch[0], masks != 0


def _linear_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile of (U, M) values with linear interpolation (numpy's default), for any M."""
    ordered = values.sort(dim=1).values
    pos = q * (ordered.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, ordered.shape[1] - 1)
    return ordered[:, lo] + (pos - lo) * (ordered[:, hi] - ordered[:, lo])


def concept_iou(
    model: nn.Module,
    layer: str,
    dataloader: Iterable,
    quantile: float = 0.995,
    concepts: Sequence[str] | None = None,
    iou_threshold: float = 0.04,
) -> ConceptIoU:
    """Score every unit (channel) of ``layer`` against every concept mask: Network Dissection's IoU.

    Reference: Bau et al. 2017, "Network Dissection: Quantifying Interpretability of Deep Visual
    Representations", CVPR.

    The dataloader is iterated twice: once to set each unit's threshold at ``quantile`` of its activations (all
    stored, low resolution, so memory is units x images x h x w floats), once to count intersections and
    unions. Both passes must see the same images; their order may differ. The model runs in eval mode under
    ``torch.no_grad``.

    Args:
        model: the network (not changed).
        layer: Dotted name of a submodule whose output is (N, units, h, w).
        dataloader: Iterable of ``(images (N, C, H, W), masks)`` tuples (further elements are ignored), with
            ``masks`` (N, K, Hm, Wm) for K concepts or (N, Hm, Wm) for one; nonzero means inside the concept.
        quantile: The activation quantile that sets each unit's threshold, in (0, 1). Default 0.995.
        concepts: K names; None (default) names them "0", "1", ...
        iou_threshold: The IoU a unit must exceed to be called a detector. Default 0.04.

    Returns:
        :class:`ConceptIoU` with ``iou`` (units, K) and the verdict ``detectors``.

    Raises:
        ValueError: a bad ``quantile``, ``iou_threshold`` or ``concepts``; batches of the wrong form; an
            empty dataloader; a layer whose output is not 4-d.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Identity())                  # unit 0 is the image itself
        >>> x = torch.zeros(4, 1, 8, 8); x[:, :, 2:4, 2:4] = 1.0  # a bright square ...
        >>> masks = x[:, 0] > 0                                   # ... is the concept
        >>> concept_iou(model, "0", [(x, masks)], quantile=0.9, concepts=["square"]).iou
        tensor([[1.]])
    """
    ok = isinstance(quantile, numbers.Real) and not isinstance(quantile, bool) and 0 < quantile < 1
    if not ok:
        raise ValueError(f"Expected argument `quantile` to be a number in (0, 1), but got {quantile!r}.")
    if not isinstance(iou_threshold, numbers.Real) or isinstance(iou_threshold, bool) or not 0 <= iou_threshold <= 1:
        raise ValueError(f"Expected argument `iou_threshold` to be a number in [0, 1], but got {iou_threshold!r}.")
    with torch.no_grad(), eval_mode(model), capture_output(model, layer) as outputs:

        def unit_maps(images: torch.Tensor) -> torch.Tensor:
            outputs.clear()
            model(images)
            out = outputs[-1]
            if out.dim() != 4:
                raise ValueError(
                    f"Expected layer {layer!r} to output (N, units, h, w), but got shape {tuple(out.shape)}."
                )
            return out.detach().float().cpu()

        values = [unit_maps(_split_batch(batch)[0]).transpose(0, 1).flatten(1) for batch in dataloader]
        if not values:
            raise ValueError("Expected argument `dataloader` to yield at least one batch, but it was empty.")
        thresholds = _linear_quantile(torch.cat(values, dim=1), float(quantile))
        del values
        inter: torch.Tensor | None = None
        for batch in dataloader:
            images, masks = _split_batch(batch)
            maps = F.interpolate(unit_maps(images), size=masks.shape[2:], mode="bilinear", align_corners=False)
            unit_masks = (maps > thresholds[None, :, None, None]).flatten(2).double()  # (N, U, P)
            concept_masks = masks.cpu().flatten(2).double()  # (N, K, P)
            batch_inter = torch.einsum("nup,nkp->uk", unit_masks, concept_masks)
            batch_units, batch_concepts = unit_masks.sum(dim=(0, 2)), concept_masks.sum(dim=(0, 2))
            if inter is None:
                inter, unit_area, concept_area = batch_inter, batch_units, batch_concepts
            elif batch_inter.shape != inter.shape:
                raise ValueError(
                    f"Expected every batch of argument `dataloader` to hold {inter.shape[1]} concept masks, "
                    f"but got {batch_inter.shape[1]}."
                )
            else:
                inter, unit_area, concept_area = (
                    inter + batch_inter,
                    unit_area + batch_units,
                    concept_area + batch_concepts,
                )
    union = unit_area[:, None] + concept_area[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter)).float()
    names = [str(i) for i in range(iou.shape[1])] if concepts is None else [str(c) for c in concepts]
    if len(names) != iou.shape[1]:
        raise ValueError(
            f"Expected argument `concepts` to name all {iou.shape[1]} concepts, but got {len(names)} names."
        )
    best_iou, best = iou.max(dim=1)
    detectors = {
        unit: (names[int(best[unit])], float(best_iou[unit]))
        for unit in range(iou.shape[0])
        if float(best_iou[unit]) > iou_threshold
    }
    return ConceptIoU(
        layer=layer,
        concepts=names,
        iou=iou,
        thresholds=thresholds,
        quantile=float(quantile),
        iou_threshold=float(iou_threshold),
        detectors=detectors,
    )
