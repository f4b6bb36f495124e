"""Failure modes: the misclassified images, each with the map for its true class and the map for the class the
model chose, so one sees what the model looked at when it went wrong.

Example::

    >>> import torch
    >>> from captum_ext.models import SmallCNN
    >>> _ = torch.manual_seed(0)
    >>> failures = failure_modes(SmallCNN().eval(), "saliency", torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5]))
    >>> len(failures.indices) == int((failures.predictions != failures.labels).sum())
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from captum_ext import plots
from captum_ext._checks import check_int
from captum_ext._context import eval_mode
from captum_ext._model import predict
from captum_ext._results import JSONResult
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.model_output import OutputFn
from captum_ext.normalization import Normalization

__all__ = ["FailureModes", "failure_modes"]


@dataclass
class FailureModes(JSONResult):
    """The misclassified images among those given, in their order (at most ``limit``).

    Attributes:
        indices: (K,) positions in the given batch.
        images: (K, C, H, W) the images.
        labels, predictions: (K,) true and predicted classes.
        true_maps, predicted_maps: (K, H, W) ``"sum_abs"`` maps for the true and for the predicted class.
        explainer: the method's name.
    """

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    predictions: torch.Tensor
    true_maps: torch.Tensor
    predicted_maps: torch.Tensor
    explainer: str

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able values (tensors as nested lists)."""
        return {name: value if isinstance(value, str) else value.tolist() for name, value in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailureModes:
        """The gallery :meth:`to_dict` described."""
        longs = {k: torch.tensor(data[k], dtype=torch.long) for k in ("indices", "labels", "predictions")}
        floats = {k: torch.tensor(data[k], dtype=torch.float32) for k in ("images", "true_maps", "predicted_maps")}
        return cls(**longs, **floats, explainer=data["explainer"])

    def plot(self, normalization: Normalization | None = None) -> Figure:
        """A gallery: the images (titled "label / predicted"), then a row of maps for each class."""
        titles = [f"label {int(t)} / pred {int(p)}" for t, p in zip(self.labels, self.predictions)]
        rows = {f"{self.explainer}: true class": self.true_maps, f"{self.explainer}: predicted": self.predicted_maps}
        return plots.overlay_grid(self.images, rows, titles=titles, normalization=normalization)


def failure_modes(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    limit: int = 8,
    *,
    output_fn: OutputFn | None = None,
) -> FailureModes:
    """The first ``limit`` misclassified images of ``inputs`` with ``explainer``'s maps for the true and the
    predicted class.

    Args:
        model: the classifier, left unchanged.
        explainer: an :class:`~captum_ext.Explainer` or a short name.
        inputs: (N, C, H, W) images; labels: (N,) their classes.
        limit: at most this many failures are explained. Default 8.
        output_fn: reads the model's scores (see :func:`captum_ext.model_output.logits`).

    Returns:
        :class:`FailureModes` (empty tensors when every image is classified correctly).
    """
    recipe = as_explainer(explainer)
    check_int("limit", limit, 1)
    labels = torch.as_tensor(labels, device=inputs.device).reshape(-1)
    if labels.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"Expected argument `labels` to have one class per image ({inputs.shape[0]}), but got {labels.shape[0]}."
        )
    with torch.no_grad(), eval_mode(model):
        predictions = predict(model, inputs, output_fn)
    wrong = torch.nonzero(predictions != labels).reshape(-1)[:limit]
    images = inputs[wrong]
    if len(wrong) == 0:
        empty = inputs.new_zeros(0, *inputs.shape[-2:])
        return FailureModes(wrong.cpu(), images, labels[wrong], predictions[wrong], empty, empty, recipe.name)
    true_maps = recipe.saliency(model, images, labels[wrong], output_fn=output_fn)
    predicted_maps = recipe.saliency(model, images, predictions[wrong], output_fn=output_fn)
    return FailureModes(wrong.cpu(), images, labels[wrong], predictions[wrong], true_maps, predicted_maps, recipe.name)
