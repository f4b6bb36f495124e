"""Matplotlib figures shared by results, callbacks and the report: map overlays and perturbation curves.

:func:`display_images`, :func:`overlay` and :func:`overlay_image` return tensors (what TensorBoard's ``add_image``
takes); the others return a ``matplotlib.figure.Figure`` built without pyplot's global state (safe in callbacks and
threads). Every map is drawn one way: ``|map|`` scaled by its 99th percentile and colour-mapped over the image. :func:`figure_to_png` and :func:`figure_to_array` turn one into PNG bytes or an (H, W, 3) uint8 array.

Example::

    >>> import torch
    >>> from captum_ext import plots
    >>> fig = plots.overlay_grid(torch.rand(4, 1, 32, 32), {"saliency": torch.rand(4, 32, 32)})
    >>> plots.figure_to_array(fig).shape[-1]
    3
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from captum_ext import maps as _maps
from captum_ext.normalization import Normalization

__all__ = [
    "display_images",
    "overlay",
    "overlay_image",
    "overlay_grid",
    "perturbation_figure",
    "figure_to_png",
    "figure_to_array",
]


def display_images(images: torch.Tensor, normalization: Normalization | None = None) -> torch.Tensor:
    """(N, C, H, W) model inputs as (N, 3, H, W) RGB in [0, 1]: back in pixel space (clamped) with the model's
    ``normalization``, else min-max scaled per image; one channel is repeated, more than three are averaged."""
    images = images.detach().float().cpu()
    if normalization is not None:
        images = normalization.to_pixels(images).clamp(0, 1)
    base = images if images.shape[1] == 3 else images.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return base if normalization is not None else _maps.normalize_minmax(base)


def overlay(
    images: torch.Tensor,
    saliency: torch.Tensor,
    alpha: float = 0.5,
    cmap: str = "inferno",
    normalization: Normalization | None = None,
) -> torch.Tensor:
    """Blend (N, C, H, W) images (see :func:`display_images`) with (N, H, W) maps (|map| scaled by its 99th
    percentile, colour-mapped).

    Returns:
        (N, 3, H, W) float RGB in [0, 1].
    """
    return _blend(display_images(images, normalization), saliency, alpha, cmap)


def _blend(base: torch.Tensor, saliency: torch.Tensor, alpha: float, cmap: str) -> torch.Tensor:
    """:func:`overlay` on images already made displayable (so several maps share one :func:`display_images`)."""
    import matplotlib

    heat = _maps.normalize_percentile(saliency.detach().float().cpu().abs())
    coloured = torch.from_numpy(matplotlib.colormaps[cmap](heat.numpy())[..., :3]).float().permute(0, 3, 1, 2)
    return ((1 - alpha) * base + alpha * coloured).clamp(0, 1)


def overlay_image(
    images: torch.Tensor, saliency: torch.Tensor, ncol: int = 8, normalization: Normalization | None = None
) -> torch.Tensor:
    """A (3, H', W') image grid for ``SummaryWriter.add_image``: rows of ``ncol`` inputs, each followed by the row
    of their :func:`overlay` blends (what the callbacks log; :func:`overlay_grid` draws the same blends as a figure)."""
    from torchvision.utils import make_grid

    base = display_images(images, normalization)
    blended = _blend(base, saliency, 0.5, "inferno")
    tiles = []
    for start in range(0, len(images), ncol):
        chunk = slice(start, start + ncol)
        pad = ncol - len(base[chunk])
        filler = torch.ones(pad, *base.shape[1:])
        tiles += [base[chunk], filler, blended[chunk], filler]
    return make_grid(torch.cat(tiles), nrow=ncol, padding=2, pad_value=1.0)


def overlay_grid(
    images: torch.Tensor,
    maps_by_name: Mapping[str, torch.Tensor],
    titles: Sequence[str] | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    normalization: Normalization | None = None,
) -> Figure:
    """A figure: one row of images, then one row per named (N, H, W) map blended over them by :func:`overlay`.

    Args:
        images: (N, C, H, W) inputs.
        maps_by_name: ``{name: (N, H, W) map}``.
        titles: optional per-column titles (e.g. "label 3 / pred 3").
        alpha: opacity of the map. Default 0.55.
        cmap: colormap of the map. Default ``"inferno"``.
        normalization: the model's input normalisation, to show the images in pixel space. Default None.
    """
    n = images.shape[0]
    rows = 1 + len(maps_by_name)
    fig = Figure(figsize=(1.3 * n + 1.2, 1.3 * rows))
    axes = fig.subplots(rows, n, squeeze=False)
    base = display_images(images, normalization)
    panels = [base] + [_blend(base, values, alpha, cmap) for values in maps_by_name.values()]
    for i, panel in enumerate(panels):
        for j in range(n):
            axes[i, j].imshow(panel[j].permute(1, 2, 0).numpy())
        if i:
            axes[i, 0].set_ylabel(list(maps_by_name)[i - 1], fontsize=8)
    if titles is not None:
        for j in range(n):
            axes[0, j].set_title(titles[j], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def perturbation_figure(curves: Mapping[str, Mapping[str, torch.Tensor]], title: str = "") -> Figure:
    """One panel per perturbation mode (e.g. ``"deletion"``, ``"insertion"``), each with the mean over images of
    every named (N, steps + 1) curve against the perturbed fraction: the probability curves and, next to them, the
    accuracy curves (:func:`captum_ext.metrics.faithfulness.perturbation_curve` with ``top1=True``).

    Example::

        >>> curves = {"deletion": {"probability": torch.rand(4, 9), "accuracy": torch.ones(4, 9)}}
        >>> len(perturbation_figure(curves).axes)
        1
    """
    fig = Figure(figsize=(4.5 * len(curves), 3.6))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (mode, series) in zip(axes, curves.items()):
        for name, values in series.items():
            mean = values.detach().float().mean(dim=0).cpu()
            ax.plot(torch.linspace(0, 1, len(mean)).tolist(), mean.tolist(), marker="o", markersize=3, label=name)
        ax.set_xlabel(f"fraction {'removed' if mode == 'deletion' else 'kept'}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(mode)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_to_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array (what ``SummaryWriter.add_image(dataformats="HWC")`` takes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
