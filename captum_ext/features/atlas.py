"""Activation atlas (Carter et al., "Activation Atlas", Distill 2019): what a layer represents across many images.

One activation vector per image (the layer's channels at one random spatial position) is laid out in 2-D (t-SNE
from scikit-learn, or UMAP with ``method="umap"`` when ``umap-learn`` is installed); a ``grid`` x ``grid`` grid over the
layout averages the vectors that fall in each cell (cells with fewer than ``min_count`` are left empty); each cell's
mean vector is shown by feature visualisation (:class:`~captum_ext.features.ActivationMaximization` with a direction
objective) and attributed to the classes by ``h . d logit_c / d h`` averaged over the cell's vectors (the
activation times the gradient of each class logit at that position). A class activation atlas uses only the
images of one class (``class_filter``).

Example::

    >>> import torch
    >>> from captum_ext.models import SmallCNN
    >>> atlas = activation_atlas(SmallCNN(), "features.relu3", torch.rand(40, 1, 32, 32), grid=3, min_count=2, steps=2)
    >>> atlas.directions.shape[1], atlas.attribution.shape[1]
    (64, 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from captum_ext._checks import check_int, check_seed
from captum_ext._context import eval_mode, full_precision, gradients_enabled
from captum_ext._model import capture_output
from captum_ext._results import JSONResult
from captum_ext.features.activation_maximization import ActivationMaximization
from captum_ext.model_output import OutputFn, logits

__all__ = ["ActivationAtlas", "activation_atlas", "layout_2d"]


@dataclass
class ActivationAtlas(JSONResult):
    """An activation atlas of ``layer``.

    Attributes:
        layer: the layer's dotted name; grid: cells per side.
        positions: (N, 2) layout of the activation vectors in [0, 1]^2.
        member_cell: (N,) index into ``cells`` of each vector's cell, -1 for a vector in a cell left empty.
        cells: (K, 2) (row, column) of the occupied cells; counts: (K,) vectors in each.
        directions: (K, channels) mean activation vector of each cell.
        attribution: (K, classes) mean ``h . d logit_c / d h`` of the cell's vectors.
        images: (K, C, H, W) feature visualisation of each cell's direction.
        labels: (N,) the images' labels, when given.
    """

    layer: str
    grid: int
    positions: torch.Tensor
    member_cell: torch.Tensor
    cells: torch.Tensor
    counts: torch.Tensor
    directions: torch.Tensor
    attribution: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able values (tensors as nested lists)."""
        return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActivationAtlas:
        """The atlas :meth:`to_dict` described."""

        def tensor(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(data[key], dtype=dtype)

        return cls(
            layer=data["layer"],
            grid=int(data["grid"]),
            positions=tensor("positions", torch.float32),
            member_cell=tensor("member_cell", torch.long),
            cells=tensor("cells", torch.long),
            counts=tensor("counts", torch.long),
            directions=tensor("directions", torch.float32),
            attribution=tensor("attribution", torch.float32),
            images=tensor("images", torch.float32),
            labels=None if data.get("labels") is None else tensor("labels", torch.long),
        )

    def top_classes(self) -> torch.Tensor:
        """(K,) the class each cell supports most."""
        return self.attribution.argmax(dim=1)

    def plot(self) -> Figure:
        """The atlas: each occupied cell's visualisation at its place, titled with its top class and member count."""
        fig = Figure(figsize=(1.1 * self.grid, 1.1 * self.grid))
        axes = fig.subplots(self.grid, self.grid, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        tops = self.top_classes()
        for k, (row, col) in enumerate(self.cells.tolist()):
            image = self.images[k].detach().float().cpu()
            image = (image - image.min()) / (image.max() - image.min()).clamp(min=1e-12)
            ax = axes[self.grid - 1 - row, col]  # row 0 at the bottom, as the layout's y axis
            shown = image.permute(1, 2, 0) if image.shape[0] == 3 else image.mean(0)  # RGB, else the channel mean
            ax.imshow(shown.numpy(), cmap="gray")
            ax.set_title(f"class {int(tops[k])} ({int(self.counts[k])})", fontsize=6)
        fig.suptitle(f"activation atlas of {self.layer}", fontsize=8)
        return fig


def layout_2d(vectors: torch.Tensor, method: str = "tsne", seed: int = 0) -> torch.Tensor:
    """(N, 2) positions in [0, 1]^2 of (N, D) ``vectors``: t-SNE (scikit-learn) or UMAP (``umap-learn``), each axis
    min-max scaled."""
    seed = check_seed(seed)
    data = vectors.detach().double().cpu().numpy()
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = max(1.0, min(30.0, (len(data) - 1) / 3))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(data)
    elif method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ImportError(
                "method='umap' needs umap-learn (pip install umap-learn); method='tsne' needs nothing."
            ) from err
        points = umap.UMAP(n_components=2, random_state=seed).fit_transform(data)
    else:
        raise ValueError(f"Expected argument `method` to be 'tsne' or 'umap', but got {method!r}.")
    points = torch.from_numpy(np.asarray(points, dtype=np.float64))
    low, high = points.amin(0), points.amax(0)
    return ((points - low) / (high - low).clamp(min=1e-12)).float()


def _vectors_and_attribution(
    model: nn.Module, layer: str, inputs: torch.Tensor, seed: int, output_fn: OutputFn | None, chunk: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, channels) activation at one random position per image, and (N, classes) ``h . d logit_c / d h`` there;
    ``chunk`` images per forward pass (and one backward pass per class each)."""
    gen = torch.Generator().manual_seed(seed)
    vectors, attributions = [], []
    with eval_mode(model), gradients_enabled(), full_precision(inputs.device), capture_output(model, layer) as outputs:
        for start in range(0, inputs.shape[0], chunk):
            outputs.clear()
            scores = logits(model(inputs[start : start + chunk].detach()), output_fn)
            activation = outputs[-1]
            if activation.dim() != 4:
                raise ValueError(
                    f"Expected layer {layer!r} to output (N, channels, h, w), but got shape {tuple(activation.shape)}."
                )
            n, _, h, w = activation.shape
            rows = torch.randint(h, (n,), generator=gen).to(inputs.device)
            cols = torch.randint(w, (n,), generator=gen).to(inputs.device)
            index = torch.arange(n, device=inputs.device)
            vector = activation[index, :, rows, cols].detach()
            attribution = torch.empty(n, scores.shape[1], device=inputs.device)
            for c in range(scores.shape[1]):
                (grad,) = torch.autograd.grad(scores[:, c].sum(), activation, retain_graph=c < scores.shape[1] - 1)
                attribution[:, c] = (vector * grad[index, :, rows, cols]).sum(dim=1)
            vectors.append(vector.float())
            attributions.append(attribution)
    return torch.cat(vectors), torch.cat(attributions)


def activation_atlas(
    model: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    grid: int = 8,
    min_count: int = 3,
    class_filter: int | None = None,
    method: str = "tsne",
    steps: int = 128,
    seed: int = 0,
    output_fn: OutputFn | None = None,
) -> ActivationAtlas:
    """Build the activation atlas of ``layer`` from ``inputs`` (see the module docstring).

    Args:
        model: the classifier, left unchanged; layer: dotted name of a layer with (N, channels, h, w) output.
        inputs: (N, C, H, W) images, a few hundred or more; labels: their classes (needed for ``class_filter``).
        grid: cells per side. Default 8. min_count: vectors a cell needs to be shown. Default 3.
        class_filter: build a class activation atlas from the images of this class only. Default None.
        method: ``"tsne"`` (default) or ``"umap"``. steps: feature-visualisation steps per cell. Default 128.
        seed: seeds the positions, the layout and the visualisations. Default 0.
    """
    seed = check_seed(seed)
    check_int("grid", grid, 1)
    check_int("min_count", min_count, 1)
    if class_filter is not None:
        if labels is None:
            raise ValueError(
                "Expected argument `labels` with `class_filter` (a class activation atlas keeps one class)."
            )
        keep = torch.as_tensor(labels).reshape(-1) == class_filter
        inputs, labels = inputs[keep.to(inputs.device)], torch.as_tensor(labels)[keep]
    if inputs.shape[0] < 3:
        raise ValueError(f"Expected at least 3 images for a layout, but got {inputs.shape[0]}.")
    vectors, attribution = _vectors_and_attribution(model, layer, inputs, seed, output_fn)
    positions = layout_2d(vectors, method, seed)
    cell_of = (positions * grid).floor().long().clamp(0, grid - 1)
    flat = cell_of[:, 1] * grid + cell_of[:, 0]  # row from y, column from x
    occupied, member, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    shown = counts >= min_count
    renumber = torch.cumsum(shown.long(), 0) - 1
    member_cell = torch.where(shown[member], renumber[member], torch.full_like(member, -1))
    chosen = occupied[shown]
    directions = (
        torch.stack([vectors[(member_cell == k).to(vectors.device)].mean(0) for k in range(len(chosen))])
        if len(chosen)
        else vectors.new_zeros(0, vectors.shape[1])
    )
    cell_attribution = (
        torch.stack([attribution[(member_cell == k).to(attribution.device)].mean(0) for k in range(len(chosen))])
        if len(chosen)
        else attribution.new_zeros(0, attribution.shape[1])
    )
    images = (
        ActivationMaximization(model, tuple(inputs.shape[1:]), steps=steps, seed=seed, output_fn=output_fn).visualize(
            layer=layer, direction=directions
        )
        if len(chosen)
        else inputs.new_zeros(0, *inputs.shape[1:])
    )
    cells = torch.stack([chosen // grid, chosen % grid], dim=1)
    return ActivationAtlas(
        layer,
        grid,
        positions,
        member_cell,
        cells,
        counts[shown],
        directions.cpu(),
        cell_attribution.detach().cpu(),
        images.detach(),
        None if labels is None else torch.as_tensor(labels).reshape(-1).cpu(),
    )
