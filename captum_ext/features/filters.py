"""The first views of a CNN: its first-layer filters and one input's feature maps, as image grids.

First-layer filters of a trained network show oriented edges, blobs and colour opponents (Krizhevsky et al.
2012, Fig. 3; Zeiler & Fergus 2014); feature maps show where in one input each channel of a layer fires.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.utils import make_grid

from captum_ext._checks import check_finite, check_int
from captum_ext._context import eval_mode
from captum_ext._model import capture_output, resolve_layer
from captum_ext.maps import normalize_minmax

__all__ = ["first_layer_filters", "feature_maps", "first_conv_name"]


def _grid(tiles: torch.Tensor, scale: int, nrow: int | None) -> torch.Tensor:
    """Nearest-upsample (T, C, h, w) tiles by ``scale`` and lay them out in a grid; padding is white (1.0)."""
    tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest") if scale > 1 else tiles
    nrow = nrow or math.ceil(math.sqrt(tiles.shape[0]))
    return make_grid(tiles, nrow=nrow, padding=1, pad_value=1.0)


def first_conv_name(model: nn.Module) -> str:
    """Dotted name of the first ``nn.Conv2d`` in ``model.named_modules()`` order (registration order)."""
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if name is None:
        raise ValueError("Expected the model to contain an nn.Conv2d; pass argument `layer` to choose one.")
    return name


def first_layer_filters(
    model: nn.Module, layer: str | None = None, scale: int = 8, nrow: int | None = None
) -> torch.Tensor:
    """What does the first layer look for? Its convolution kernels as one image grid.

    Reference: Krizhevsky et al. 2012 (Fig. 3), Zeiler & Fergus 2014, "Visualizing and Understanding
    Convolutional Networks".

    Each filter is scaled on its own by its largest |weight|, ``0.5 + w / (2 max|w|)``, so 0.5 (mid-grey) is a
    zero weight, brighter is positive and darker negative. A filter with 3 input channels is one RGB tile;
    otherwise each input channel is a grey tile and the tiles of one filter are adjacent (row-major).

    Args:
        model: the network (not changed).
        layer: Dotted name of an ``nn.Conv2d``; None (default) takes the first ``nn.Conv2d`` in
            ``model.modules()`` order (the patch projection of a ViT counts).
        scale: Nearest-neighbour upsampling of every tile. Default 8.
        nrow: Tiles per grid row; None (default) makes the grid about square.

    Returns:
        The grid (3, H, W) in [0, 1] (grey images repeated on three channels, as ``make_grid`` gives them).

    Raises:
        ValueError: no ``nn.Conv2d`` in the model, or ``layer`` is not an ``nn.Conv2d``, or a bad ``scale``.

    Example::

        >>> from captum_ext.models import SmallCNN
        >>> first_layer_filters(SmallCNN()).shape   # 16 filters 3x3, scale 8: a 4 x 4 grid of 24-px tiles
        torch.Size([3, 101, 101])
    """
    scale = check_int("scale", scale, 1)
    conv = resolve_layer(model, first_conv_name(model) if layer is None else layer)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"Expected argument `layer` to name an nn.Conv2d, but {layer!r} is a {type(conv).__name__}.")
    weight = conv.weight.detach().float().cpu()
    peak = weight.abs().flatten(1).amax(1).clamp(min=1e-12)
    tiles = 0.5 + weight / (2 * peak[:, None, None, None])
    if tiles.shape[1] != 3:
        tiles = tiles.reshape(-1, 1, *tiles.shape[2:])
        nrow = nrow or (tiles.shape[0] // weight.shape[0] if weight.shape[1] > 1 else None)
    return _grid(tiles, scale, nrow)


def feature_maps(
    model: nn.Module, layer: str, inputs: torch.Tensor, scale: int = 1, nrow: int | None = None
) -> torch.Tensor:
    """Where in each input does every channel of ``layer`` fire? One grid of per-channel maps per input.

    Reference: Zeiler & Fergus 2014; Yosinski et al. 2015, "Understanding Neural Networks Through Deep
    Visualization" (live activations).

    The maps of one input share one scale: min-max over all its channels, so a weak channel looks weak.
    The model runs in eval mode under ``torch.no_grad``; its hook is removed afterwards.

    Args:
        model: the network (not changed).
        layer: Dotted name of a submodule whose output is (N, channels, h, w).
        inputs: Images (N, C, H, W).
        scale: Nearest-neighbour upsampling of every map. Default 1.
        nrow: Maps per grid row; None (default) makes the grid about square.

    Returns:
        Grids (N, 3, H', W') in [0, 1], one per input.

    Raises:
        ValueError: ``inputs`` not 4-d, ``layer`` unknown or not giving (N, channels, h, w), or a bad ``scale``.

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> feature_maps(SmallCNN(), "features.conv1", torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 3, 133, 133])
    """
    scale = check_int("scale", scale, 1)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        got = f"a tensor of shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"Expected argument `inputs` to be images (N, C, H, W), but got {got}.")
    check_finite("inputs", inputs)
    with torch.no_grad(), eval_mode(model), capture_output(model, layer) as outputs:
        model(inputs)
    maps = outputs[-1].detach().float().cpu()
    if maps.dim() != 4:
        raise ValueError(f"Expected layer {layer!r} to output (N, channels, h, w), but got shape {tuple(maps.shape)}.")
    check_finite(f"layer {layer!r} outputs", maps, "The model produces NaN or Inf at this layer for these inputs.")
    maps = normalize_minmax(maps)
    return torch.stack([_grid(m[:, None], scale, nrow) for m in maps])
