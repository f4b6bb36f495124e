"""Matplotlib figures shared by results, callbacks and the report: overlays, curves and class-mean maps.

All functions return a ``matplotlib.figure.Figure`` built without pyplot's global state (safe in callbacks and
threads). :func:`figure_to_png` and :func:`figure_to_array` turn one into PNG bytes or an (H, W, 3) uint8 array.

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
    "overlay_grid",
    "curve_figure",
    "perturbation_figure",
    "class_mean_figure",
    "figure_to_png",
    "figure_to_array",
]


def _image(img: torch.Tensor, normalization: Normalization | None = None) -> np.ndarray:
    """(C, H, W) model input -> (H, W) or (H, W, 3) in [0, 1] for imshow: back in pixel space (clamped) with the
    model's ``normalization``, else min-max scaled."""
    img = img.detach().float().cpu()[None]
    arr = (normalization.to_pixels(img).clamp(0, 1) if normalization is not None else _maps.normalize_minmax(img))[0]
    return arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()


def overlay_grid(
    images: torch.Tensor,
    maps_by_name: Mapping[str, torch.Tensor],
    titles: Sequence[str] | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    normalization: Normalization | None = None,
) -> Figure:
    """A grid: one row of images, then one row per named (N, H, W) map overlaid on them (min-max per map).

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
    for j in range(n):
        axes[0, j].imshow(_image(images[j], normalization), cmap="gray")
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=7)
    for i, (name, values) in enumerate(maps_by_name.items(), start=1):
        normed = _maps.normalize_minmax(values.detach().float().cpu())
        for j in range(n):
            axes[i, j].imshow(_image(images[j], normalization), cmap="gray")
            axes[i, j].imshow(normed[j].numpy(), cmap=cmap, alpha=alpha)
        axes[i, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def curve_figure(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    errors: Mapping[str, Sequence[float]] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    xticklabels: Sequence[str] | None = None,
) -> Figure:
    """Line plot of named curves over ``x``, with optional error bars (one list per curve)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, ys in curves.items():
        yerr = None if errors is None else errors.get(name)
        ax.errorbar(list(x), list(ys), yerr=yerr, marker="o", capsize=3, label=name)
    if xticklabels is not None:
        ax.set_xticks(list(x))
        ax.set_xticklabels(list(xticklabels), rotation=45, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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


def class_mean_figure(
    means: Mapping[int | str, torch.Tensor], region: torch.Tensor | None = None, cmap: str = "inferno"
) -> Figure:
    """One panel per class: its mean (H, W) map, with the (H, W) bool ``region`` outlined when given."""
    keys = list(means)
    fig = Figure(figsize=(1.6 * len(keys) + 0.5, 2.0))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        ax.imshow(means[key].detach().float().cpu().numpy(), cmap=cmap)
        if region is not None:
            ax.contour(region.float().cpu().numpy(), levels=[0.5], colors="cyan", linewidths=1.0)
        ax.set_title(f"class {key}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
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
