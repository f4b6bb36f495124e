"""``EmbeddingProjector``: a layer's activations on the probe set, for TensorBoard's projector and as a PCA figure.

The classic view (e.g. the PCA of ResNet-18's 512 x 1000 class weights): the penultimate activations of the probe
images, coloured by class, and the last linear layer's class weight vectors, both on their first two principal
components.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import cast

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from captum_ext import maps
from captum_ext._checks import check_int
from captum_ext._context import eval_mode
from captum_ext._model import capture_output, forward_order, resolve_layer
from captum_ext.batches import Unpack
from captum_ext.callbacks.base import ExplanationCallback
from captum_ext.model_output import OutputFn

__all__ = ["EmbeddingProjector", "last_linear_layer", "capture_activations", "pca"]


def last_linear_layer(model: nn.Module, inputs: torch.Tensor) -> str:
    """Dotted name of the last ``nn.Linear`` in forward-execution order (found by a one-sample probe forward)."""
    order = forward_order(model, inputs, lambda module: isinstance(module, nn.Linear))
    if not order:
        raise ValueError("Expected the model to contain an nn.Linear for the default layer; pass `layer=` explicitly.")
    return order[-1]


def capture_activations(model: nn.Module, layer: str, inputs: torch.Tensor, use_input: bool) -> torch.Tensor:
    """(N, D) flattened output of ``layer`` (or its input when ``use_input``), in eval mode without gradients.

    The hook is removed even when the forward raises.
    """
    with torch.no_grad(), eval_mode(model), capture_output(model, layer, use_input) as captured:
        model(inputs)
    return captured[-1].detach().flatten(1).float()


def pca(data: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Coordinates of the (M, D) rows on their first ``k`` principal components, (M, k), in float64.

    Each component's sign is fixed so that its largest-magnitude loading is positive (deterministic output).
    """
    x = data.double() - data.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    components = vh[:k]
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    out = x @ components.T
    if out.shape[1] < k:
        out = F.pad(out, (0, k - out.shape[1]))
    return out


class EmbeddingProjector(ExplanationCallback):
    """How does the model separate the classes? Probe activations to TensorBoard's projector, and a PCA figure.

    Logs on rank 0 to a ``TensorBoardLogger``: the activations with labels and thumbnails (projector tag
    ``embedding/<layer>``) and a figure ``embedding/pca`` with the activations (coloured by label) and the last
    ``nn.Linear``'s class weights on their first two principal components. PCA and t-SNE pictures of activations
    are a view, not a measurement: distances in them are distorted.

    Args:
        layer: dotted name of the layer whose output is embedded. Default the *input* of the last ``nn.Linear`` in
            forward order (the penultimate features).
        every_n_epochs: Default 1.
        num_samples: probe images, balanced over classes. Default 256. (``max_samples``, its name before, still
            works, with a FutureWarning.)
        thumbnail_size: side of the projector's thumbnails (images are downsampled if larger). Default 32.
        probe, classes, seed, probe_scan, output_fn, unpack: see :class:`~captum_ext.callbacks.base.ExplanationCallback`.

    Raises:
        ValueError: an invalid count, or (at the first epoch) a layer that is not in the model.

    Example::

        >>> import pytorch_lightning as pl
        >>> from pytorch_lightning.loggers import TensorBoardLogger
        >>> from captum_ext.data import CleverHansDigits
        >>> from captum_ext.models import ClassifierModule, SmallCNN
        >>> import tempfile
        >>> logger = TensorBoardLogger(tempfile.mkdtemp(), name="demo")
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[EmbeddingProjector(num_samples=20)],
        ...                      logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False)
        >>> trainer.fit(ClassifierModule(SmallCNN()), datamodule=CleverHansDigits())
    """

    def __init__(
        self,
        layer: str | None = None,
        *,
        thumbnail_size: int = 32,
        num_samples: int = 256,
        every_n_epochs: int = 1,
        probe: Dataset | tuple[torch.Tensor, torch.Tensor] | None = None,
        classes: Sequence[int] | None = None,
        seed: int = 0,
        probe_scan: int = 4096,
        output_fn: OutputFn | None = None,
        unpack: Unpack | None = None,
        max_samples: int | None = None,
    ):
        if max_samples is not None:  # the name before issue #17, when every callback's probe size became num_samples
            if num_samples != 256:
                raise ValueError("Expected only one of arguments `num_samples` and `max_samples` (its old name).")
            warnings.warn(
                "EmbeddingProjector(max_samples=...) is deprecated; pass num_samples=... (the same meaning).",
                FutureWarning,
                stacklevel=2,
            )
            num_samples = check_int("max_samples", max_samples, 1)
        super().__init__(
            every_n_epochs=every_n_epochs,
            num_samples=num_samples,
            probe=probe,
            classes=classes,
            seed=seed,
            probe_scan=probe_scan,
            output_fn=output_fn,
            unpack=unpack,
        )
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"Expected argument `layer` to be a dotted module name (str) or None, but got {layer!r}.")
        check_int("thumbnail_size", thumbnail_size, 4)
        self.layer = layer
        self.thumbnail_size = thumbnail_size

    def _state_key_fields(self) -> dict:
        return {"layer": self.layer, "num_samples": self.num_samples, "seed": self.seed}

    def dry_run(self, pl_module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        classifier = last_linear_layer(pl_module, inputs)
        capture_activations(pl_module, self.layer or classifier, inputs, use_input=self.layer is None)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        probe = self.probe(trainer, pl_module)
        inputs, _ = probe.shard()
        classifier = last_linear_layer(pl_module, probe.inputs)
        layer = self.layer or classifier
        batch = inputs if len(inputs) else probe.inputs[:1]  # an empty shard still needs the feature size
        features = capture_activations(pl_module, layer, batch, use_input=self.layer is None)[: len(inputs)]
        features = self.gather(trainer, features, probe)
        writer = self.tensorboard(trainer)
        if writer is None:
            return
        thumbs = maps.normalize_minmax(probe.inputs.detach().float().cpu())
        if max(thumbs.shape[-2:]) > self.thumbnail_size:
            thumbs = F.interpolate(thumbs, size=(self.thumbnail_size,) * 2, mode="bilinear", antialias=True).clamp(0, 1)
        labels = probe.labels.cpu().tolist()
        writer.add_embedding(
            features.cpu(), metadata=labels, label_img=thumbs, global_step=trainer.global_step, tag=f"embedding/{layer}"
        )
        linear = cast(nn.Linear, resolve_layer(pl_module, classifier))  # found by last_linear_layer
        weights = linear.weight.detach().float().cpu()
        name = layer if self.layer else f"input of {layer}"
        self.log_figure(trainer, "embedding/pca", _pca_figure(features.cpu(), probe.labels.cpu(), weights, name))


def _pca_figure(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, layer: str) -> Figure:
    fig = Figure(figsize=(9, 4.2))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    coords = pca(features).numpy()
    scatter = left.scatter(coords[:, 0], coords[:, 1], c=labels.numpy(), cmap="tab10", s=12)
    left.legend(*scatter.legend_elements(), fontsize=7, title="class", loc="best")
    left.set_title(f"activations of {layer} (PCA)", fontsize=9)
    wcoords = pca(weights).numpy()
    right.scatter(wcoords[:, 0], wcoords[:, 1], c=range(len(wcoords)), cmap="tab10", s=30)
    for cls, (x, y) in enumerate(wcoords):
        right.annotate(str(cls), (x, y), fontsize=8)
    right.set_title(f"class weights {tuple(weights.shape)} (PCA)", fontsize=9)
    fig.tight_layout()
    return fig
