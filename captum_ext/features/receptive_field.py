"""Which input pixels can a unit of a layer see? Its receptive field, computed from the model's gradients.

The receptive field of the unit at position (i, j) of a layer is the support of the gradient of that unit with
respect to the input (Luo et al. 2016, "Understanding the Effective Receptive Field in Deep Convolutional
Neural Networks"). A single input can leave holes (a ReLU that is off, a max-pool that picks another pixel),
so the support is the union over ``probes`` seeded Gaussian inputs of the gradient of the unit's sum over
channels. Nothing about the architecture is assumed: padding, dilation, pooling and border clipping are
whatever the model does.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from captum_ext._checks import check_int, check_seed
from captum_ext._context import eval_mode, gradients_enabled
from captum_ext._model import capture_output

__all__ = ["receptive_field"]


def receptive_field(
    model: nn.Module,
    layer: str,
    input_shape: Sequence[int],
    units: Sequence[tuple[int, int]],
    probes: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """The bounding box of the receptive field of each unit position ``(i, j)`` of ``layer``.

    Args:
        model: the network (not changed; run in eval mode, gradients taken only with respect to the probes).
        layer: Dotted name of a submodule whose output is (N, channels, h, w).
        input_shape: ``(C, H, W)`` of the model's input.
        units: Positions ``(i, j)`` (row, column) on the layer's (h, w) grid.
        probes: Random inputs whose gradient supports are united. Default 16.
        seed: Seeds the probes. Default 0.

    Returns:
        A long tensor (U, 4) of boxes ``(x0, y0, x1, y1)`` in input pixels, half-open (torchvision order),
        clipped to the image.

    Raises:
        ValueError: bad ``input_shape``, ``units`` or ``probes``; a position outside the layer's grid; a layer
            whose output is not 4-d; a unit no input pixel reaches.

    Example::

        >>> from captum_ext.models import SmallCNN
        >>> receptive_field(SmallCNN(), "features.conv2", (1, 32, 32), [(4, 4)]).tolist()   # 8 x 8 pixels
        [[5, 5, 13, 13]]
    """
    seed = check_seed(seed)
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if len(shape) != 3 or not all(isinstance(s, numbers.Integral) and s > 0 for s in shape):
        raise ValueError(f"Expected argument `input_shape` to be (C, H, W) positive ints, but got {input_shape!r}.")
    check_int("probes", probes, 1)
    positions = [tuple(int(v) for v in u) for u in units] if isinstance(units, Sequence) else []
    if not positions or any(len(p) != 2 for p in positions):
        raise ValueError(f"Expected argument `units` to be a non-empty list of (i, j) positions, but got {units!r}.")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(int(seed))
    count = len(positions)
    noise = torch.randn((count * probes, *shape), generator=gen)
    with eval_mode(model), gradients_enabled(), capture_output(model, layer) as outputs:
        x = noise.to(device=device, dtype=dtype).clone().requires_grad_(True)
        model(x)
        out = outputs[-1]
        if out.dim() != 4:
            raise ValueError(
                f"Expected layer {layer!r} to output (N, channels, h, w), but got shape {tuple(out.shape)}."
            )
        h, w = out.shape[2:]
        for i, j in positions:
            if not (0 <= i < h and 0 <= j < w):
                raise ValueError(
                    f"Expected every unit position in argument `units` to lie in the layer's {h} x {w} grid, but got {(i, j)}."
                )
        rows = torch.tensor([p[0] for p in positions], device=device).repeat_interleave(probes)
        cols = torch.tensor([p[1] for p in positions], device=device).repeat_interleave(probes)
        unit = out[torch.arange(out.shape[0], device=device), :, rows, cols].sum()
        (grad,) = torch.autograd.grad(unit, [x])
    support = (grad.detach() != 0).any(dim=1).reshape(count, probes, *shape[1:]).any(dim=1).cpu()
    boxes = torch.empty(count, 4, dtype=torch.long)
    for n, mask in enumerate(support):
        ys, xs = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        if len(ys) == 0:
            raise ValueError(
                f"Expected some input pixel to reach unit {positions[n]} of layer {layer!r}, but its gradient is zero everywhere."
            )
        boxes[n] = torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1])
    return boxes
