"""Random-logit test (Sixt et al., ICML 2020): is the map for the true class different from the map for a random
other class? A method whose maps barely depend on the class explained (SSIM near 1) shows the input, not the
model's reason for this class; lower is better.

The other class is drawn uniformly among the rest, once per true class, from ``seed``; the two maps are compared
with 2-D SSIM (:func:`captum_ext.metrics.similarity.ssim_similarity`, on ``|map|`` scaled to [0, 1], 7x7 windows).
Quantus 0.6.0 flattens each map to one long row before its SSIM, so its window runs along rows and across row ends.

Example::

    >>> import torch
    >>> from captum_ext import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> random_logit(net, Explainer("saliency"), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), num_classes=3).shape
    torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn

from captum_ext import maps
from captum_ext._checks import check_finite, check_int, check_seed, class_targets
from captum_ext._context import eval_mode
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.metrics._mean import MeanOverImages
from captum_ext.metrics.similarity import ssim_similarity
from captum_ext.model_output import OutputFn, logits

__all__ = ["random_logit", "other_classes", "RandomLogit"]


def other_classes(target: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """(N,) a class other than ``target[i]`` for each image: for each true class one other class, drawn uniformly
    among the ``num_classes - 1`` others from ``seed`` (the same for every image of that class, so the choice does not
    depend on the batch or a DDP shard).

    Example::

        >>> bool((other_classes(torch.tensor([0, 1, 2]), 3) != torch.tensor([0, 1, 2])).all())
        True
    """
    seed = check_seed(seed)
    check_int("num_classes", num_classes, 2)
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, (num_classes,), generator=gen).to(target.device)
    return (target + shift[target]) % num_classes


def random_logit(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    target,
    num_classes: int | None = None,
    attributions: torch.Tensor | None = None,
    seed: int = 0,
    reduce: maps.Reduction = "sum",
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(N,) SSIM between the map for ``target`` (``attributions``, or computed) and the map for a random other class.

    Args:
        model: the classifier; explainer: an :class:`~captum_ext.Explainer` or a short name.
        inputs: (N, C, H, W); target: the explained classes.
        num_classes: the model's class count. Default None: read from its output on one image.
        attributions: the maps for ``target``, (N, C, H, W). Default None: computed.
        seed: seeds the choice of the other classes. Default 0.
        reduce: channel reduction before SSIM (:func:`captum_ext.maps.reduce_channels`). Default ``"sum"``.
    """
    seed = check_seed(seed)
    recipe = as_explainer(explainer)
    if num_classes is None:
        with torch.no_grad(), eval_mode(model):
            num_classes = int(logits(model(inputs[:1]), output_fn).shape[1])
    target = class_targets(target, inputs.shape[0], num_classes, inputs.device)
    if attributions is None:
        attributions = recipe.attribute(model, inputs, target, output_fn=output_fn)
    elif attributions.shape != inputs.shape:
        raise ValueError(
            f"Expected argument `attributions` to have the inputs' shape {tuple(inputs.shape)}, but got "
            f"{tuple(attributions.shape)}."
        )
    check_finite("attributions", attributions)
    other = recipe.attribute(model, inputs, other_classes(target, num_classes, seed), output_fn=output_fn)
    return ssim_similarity(
        maps.reduce_channels(attributions.detach(), reduce), maps.reduce_channels(other, reduce)
    ).float()


class RandomLogit(MeanOverImages):
    """Mean over images of :func:`random_logit`; DDP-synced; lower is better."""

    higher_is_better = False

    def __init__(
        self,
        explainer: Explainer | str,
        num_classes: int | None = None,
        seed: int = 0,
        reduce: maps.Reduction = "sum",
        output_fn: OutputFn | None = None,
        **kwargs,
    ) -> None:
        seed = check_seed(seed)
        super().__init__(**kwargs)
        self.explainer = as_explainer(explainer)
        self.num_classes = check_int("num_classes", num_classes, 2) if num_classes is not None else None
        maps.check_reduction(reduce)
        self.seed, self.reduce, self.output_fn = seed, reduce, output_fn

    def update(self, model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor | None, target) -> None:
        """Add a batch: the model, the inputs, their maps for ``target`` (or None) and the explained classes."""
        self.add(
            random_logit(
                model,
                self.explainer,
                inputs,
                target,
                self.num_classes,
                attributions,
                self.seed,
                self.reduce,
                self.output_fn,
            )
        )
