"""``top_activating_patches``: which pieces of real data excite a unit most?

For one channel of a layer, each image's strongest position is found, the k images where it is highest are
kept, and the input patch under that position's receptive field is cut out (Zeiler & Fergus 2014, Fig. 2;
Girshick et al. 2014, "Rich feature hierarchies", Fig. 3). The receptive field is computed from the model by
:func:`captum_ext.features.receptive_field`, not guessed from the kernel sizes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from torchvision.utils import make_grid

from captum_ext._checks import check_int, check_seed
from captum_ext._context import eval_mode
from captum_ext._model import capture_output
from captum_ext._results import JSONResult
from captum_ext.features._capture import batch_inputs
from captum_ext.features.receptive_field import receptive_field
from captum_ext.maps import normalize_minmax

__all__ = ["TopPatches", "top_activating_patches"]


@dataclass
class TopPatches(JSONResult):
    """The k input patches that excite one channel most, strongest first.

    Attributes:
        layer: The dotted layer name.
        channel: The channel index.
        activations: (k,) the channel's value at the chosen position of each image.
        indices: (k,) position of each image in the dataloader's iteration order.
        units: (k, 2) the ``(i, j)`` position on the layer's grid.
        boxes: (k, 4) the receptive field in input pixels, ``(x0, y0, x1, y1)`` half-open, clipped to the image.
        patches: (k, C, h, w) the pixels under each box, on a canvas of the full receptive-field size; a box
            clipped by the image border is aligned to the side it was cut at and the rest is ``pad_value``.
        receptive_field: ``(h, w)`` of an unclipped receptive field (that of the layer's centre unit).
        pad_value: The fill of the canvas outside the image.
    """

    layer: str
    channel: int
    activations: torch.Tensor
    indices: torch.Tensor
    units: torch.Tensor
    boxes: torch.Tensor
    patches: torch.Tensor
    receptive_field: tuple[int, int]
    pad_value: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-able dict (tensors as nested lists)."""
        return {
            "layer": self.layer,
            "channel": self.channel,
            "activations": self.activations.tolist(),
            "indices": self.indices.tolist(),
            "units": self.units.tolist(),
            "boxes": self.boxes.tolist(),
            "patches": self.patches.tolist(),
            "receptive_field": list(self.receptive_field),
            "pad_value": self.pad_value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopPatches:
        """The result :meth:`to_dict` described."""
        return cls(
            layer=data["layer"],
            channel=int(data["channel"]),
            activations=torch.tensor(data["activations"], dtype=torch.float32),
            indices=torch.tensor(data["indices"], dtype=torch.long),
            units=torch.tensor(data["units"], dtype=torch.long),
            boxes=torch.tensor(data["boxes"], dtype=torch.long),
            patches=torch.tensor(data["patches"], dtype=torch.float32),
            receptive_field=(int(data["receptive_field"][0]), int(data["receptive_field"][1])),
            pad_value=float(data["pad_value"]),
        )

    def grid(self, nrow: int | None = None, scale: int = 4) -> torch.Tensor:
        """The patches as one image grid (3, H, W), each patch min-max scaled and upsampled by ``scale``."""
        tiles = normalize_minmax(self.patches.float())
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=scale, mode="nearest")
        return make_grid(tiles, nrow=nrow or math.ceil(math.sqrt(len(tiles))), padding=1, pad_value=1.0)

    def plot(self) -> Figure:
        """A matplotlib Figure: one panel per patch, titled with its rank, activation and image index."""
        k = len(self.activations)
        cols = min(k, 8)
        rows = math.ceil(k / cols)
        fig = Figure(figsize=(1.6 * cols, 0.4 + 2.0 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for n, ax in enumerate(axes.flat[:k]):
            patch = self.patches[n].float()
            if patch.shape[0] == 1:
                ax.imshow(patch[0].numpy(), cmap="gray")
            else:
                ax.imshow(normalize_minmax(patch[None])[0].permute(1, 2, 0).numpy())
            ax.set_title(f"#{n + 1} {float(self.activations[n]):.2g}\nimg {int(self.indices[n])}", fontsize=7)
        rf = f"{self.receptive_field[0]}x{self.receptive_field[1]}"
        fig.suptitle(f"{self.layer} channel {self.channel}: top {k} patches (receptive field {rf})", fontsize=9)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        lines = [
            f"TopPatches(layer={self.layer!r}, channel={self.channel}, receptive_field={self.receptive_field})",
            f"{'rank':>4}  {'activation':>11}  {'image':>6}  {'unit':>8}  box (x0, y0, x1, y1)",
        ]
        for n in range(len(self.activations)):
            unit = f"({int(self.units[n, 0])},{int(self.units[n, 1])})"
            lines.append(
                f"{n + 1:>4}  {float(self.activations[n]):>11.4g}  {int(self.indices[n]):>6}  {unit:>8}  {tuple(self.boxes[n].tolist())}"
            )
        return "\n".join(lines)


def top_activating_patches(
    model: nn.Module,
    layer: str,
    channel: int,
    dataloader: Iterable,
    k: int = 16,
    pad_value: float = 0.0,
    probes: int = 16,
    seed: int = 0,
) -> TopPatches:
    """The ``k`` input patches (one per image) on which ``channel`` of ``layer`` is highest.

    Reference: Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks"; Luo et al. 2016
    for the receptive field as a gradient support.

    Every image's strongest position of the channel is its candidate; the k images with the highest values win
    (one patch per image, so near-duplicate windows of one image do not fill the grid). The model runs in eval
    mode under ``torch.no_grad``; the receptive field is then computed with seeded probes (see
    :func:`receptive_field`).

    Args:
        model: the network (not changed).
        layer: Dotted name of a submodule whose output is (N, channels, h, w).
        channel: Channel index on dimension 1 of the layer's output.
        dataloader: Any iterable of image batches (N, C, H, W), or of tuples/lists whose first element is one
            (a ``DataLoader`` of ``(image, label)`` works). Iterated once.
        k: Number of patches. Default 16.
        pad_value: Fill of a patch's canvas outside the image. Default 0.0.
        probes: Random inputs for the receptive field. Default 16.
        seed: Seeds the receptive-field probes. Default 0.

    Returns:
        :class:`TopPatches`; fewer than ``k`` entries if the data holds fewer images.

    Raises:
        ValueError: a bad ``k`` or ``channel``, an empty dataloader, batches of the wrong form, images of
            different sizes, or a layer whose output is not (N, channels, h, w).

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> images = [torch.rand(8, 1, 32, 32) for _ in range(2)]
        >>> result = top_activating_patches(SmallCNN(), "features.relu2", 3, images, k=4)
        >>> result.patches.shape, result.receptive_field
        (torch.Size([4, 1, 8, 8]), (8, 8))
    """
    seed = check_seed(seed)
    check_int("k", k, 1)
    if not isinstance(channel, numbers.Integral) or isinstance(channel, bool) or channel < 0:
        raise ValueError(f"Expected argument `channel` to be a non-negative integer, but got {channel!r}.")
    best_values = torch.empty(0)
    best_index = torch.empty(0, dtype=torch.long)
    best_units = torch.empty(0, 2, dtype=torch.long)
    best_images: torch.Tensor | None = None
    seen = 0
    with torch.no_grad(), eval_mode(model), capture_output(model, layer) as outputs:
        for batch in dataloader:
            x = batch_inputs(batch)
            if best_images is not None and x.shape[1:] != best_images.shape[1:]:
                raise ValueError(
                    f"Expected argument `dataloader` to yield images of one size {tuple(best_images.shape[1:])}, "
                    f"but got {tuple(x.shape[1:])}."
                )
            outputs.clear()
            model(x)
            out = outputs[-1]
            if out.dim() != 4:
                raise ValueError(
                    f"Expected layer {layer!r} to output (N, channels, h, w), but got shape {tuple(out.shape)}."
                )
            if channel >= out.shape[1]:
                raise ValueError(
                    f"Expected argument `channel` to be < {out.shape[1]} (channels of {layer!r}), but got {channel}."
                )
            maps = out[:, channel].float().cpu()
            width = maps.shape[2]
            values, flat = maps.flatten(1).max(dim=1)
            units = torch.stack([flat // width, flat % width], dim=1)
            images = x.detach().cpu()
            index = torch.arange(seen, seen + len(x))
            seen += len(x)
            pool_values = torch.cat([best_values, values])
            keep = torch.topk(pool_values, min(k, len(pool_values))).indices
            best_values = pool_values[keep]
            best_index = torch.cat([best_index, index])[keep]
            best_units = torch.cat([best_units, units])[keep]
            best_images = (images if best_images is None else torch.cat([best_images, images]))[keep]
    if best_images is None:
        raise ValueError("Expected argument `dataloader` to yield at least one batch, but it was empty.")
    shape = tuple(best_images.shape[1:])
    grid = tuple(out.shape[2:])
    centre = (grid[0] // 2, grid[1] // 2)
    boxes = receptive_field(
        model, layer, shape, [tuple(u) for u in best_units.tolist()] + [centre], probes=probes, seed=seed
    )
    full = boxes[-1]
    size = (int(full[3] - full[1]), int(full[2] - full[0]))
    boxes = boxes[:-1]
    height, width = shape[1:]
    patches = torch.full((len(boxes), shape[0], *size), float(pad_value), dtype=best_images.dtype)
    for n, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        h, w = min(y1 - y0, size[0]), min(x1 - x0, size[1])
        top = size[0] - h if y0 == 0 and y1 < height else 0
        left = size[1] - w if x0 == 0 and x1 < width else 0
        patches[n, :, top : top + h, left : left + w] = best_images[n, :, y0 : y0 + h, x0 : x0 + w]
    return TopPatches(
        layer=layer,
        channel=int(channel),
        activations=best_values,
        indices=best_index,
        units=best_units,
        boxes=boxes,
        patches=patches,
        receptive_field=size,
        pad_value=float(pad_value),
    )
