"""Class activation maps at a layer: ``CAM`` (Zhou et al., CVPR 2016) and ``GradCAMPlusPlus`` (Chattopadhyay et
al., WACV 2018), as Captum ``LayerAttribution`` classes: (N, 1, h, w) maps at the layer's resolution (the
``Explainer`` upsamples them to the input, as it does Grad-CAM's).

* CAM weighs the layer's channels by the classifier's weights: ``CAM_c = sum_k w_ck A_k``. It is defined for a
  layer followed by global average pooling and one linear layer; there it equals Grad-CAM up to the positive factor
  ``h * w`` (Grad-CAM's weights are ``w_ck / (h * w)``) and Grad-CAM's ReLU. Any other head is refused.
* Grad-CAM++ weighs each position's positive gradient by ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (the paper's
  closed form for an exponential of the score, written with the score's own gradients ``g``), so several instances
  of a class each get their share instead of the largest one dominating.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import LayerAttribution
from torch import nn

from captum_ext._checks import class_targets

__all__ = ["CAM", "GradCAMPlusPlus"]


def _layer_output(forward_func: nn.Module, layer: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer's (N, K, h, w) output, the model's (N, classes) scores) from one forward pass; the layer's output
    stays in the autograd graph of the scores."""
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, out: Any) -> Any:
        captured.append(out)
        return out.clone() if isinstance(out, torch.Tensor) else out  # an in-place ReLU after it changes the copy

    handle = layer.register_forward_hook(keep)
    try:
        scores = forward_func(inputs)
    finally:
        handle.remove()
    if len(captured) != 1 or not isinstance(captured[0], torch.Tensor) or captured[0].dim() != 4:
        got = (
            "no output"
            if not captured
            else f"{len(captured)} calls"
            if len(captured) > 1
            else type(captured[0]).__name__
        )
        raise ValueError(f"Expected the layer to produce one (N, K, h, w) tensor per forward pass, but got {got}.")
    return captured[0], scores


def _targets(target: Any, n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    if target is None:
        raise ValueError(
            "Expected argument `target` (class indices); the Explainer passes the predicted class for None."
        )
    return class_targets(target, n, num_classes, device)  # one class for all, or one per image


class CAM(LayerAttribution):
    """Class activation mapping: the layer's channels weighted by the linear classifier that follows its global
    average pool.

    Args:
        forward_func: the model (the scores are read from its output).
        layer: the layer whose output is pooled and classified (``layer4`` of a ResNet).
        classifier: the ``nn.Linear`` after the pool. Default: the model's last ``nn.Linear`` whose input size is
            the layer's channel count.

    The head is checked on every batch: the scores must equal ``classifier(A.mean((2, 3)))``; otherwise a
    ValueError says that CAM needs a GAP + linear head (use Grad-CAM for other heads).

    Example::

        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(weights=None).eval()
        >>> CAM(model, model.layer4).attribute(torch.rand(2, 3, 64, 64), target=[1, 2]).shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(self, forward_func: nn.Module, layer: nn.Module, classifier: nn.Linear | None = None):
        super().__init__(forward_func, layer)
        if classifier is not None and not isinstance(classifier, nn.Linear):
            raise TypeError(
                f"Expected argument `classifier` to be an nn.Linear or None, but got {type(classifier).__name__}."
            )
        self.classifier = classifier

    def _find_classifier(self, channels: int) -> nn.Linear:
        if self.classifier is not None:
            return self.classifier
        linears = [m for m in self.forward_func.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
        if not linears:
            raise ValueError(
                f"CAM needs the layer (here {channels} channels) to be followed by global average pooling and an "
                f"nn.Linear with in_features={channels}; none was found. Use Grad-CAM for this model."
            )
        return linears[-1]

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        """(N, 1, h, w) maps ``sum_k w_ck A_k`` for each image's target class ``c`` (signed, not ReLU'd)."""
        with torch.no_grad():
            activations, scores = _layer_output(self.forward_func, self.layer, inputs)
            classifier = self._find_classifier(activations.shape[1])
            pooled = classifier(activations.mean(dim=(2, 3)))
            if pooled.shape != scores.shape or not torch.allclose(
                pooled, scores, rtol=1e-4, atol=1e-4 * float(scores.abs().max()) + 1e-6
            ):
                raise ValueError(
                    "CAM needs the model's scores to be the classifier applied to the layer's global average pool, but "
                    "they differ here (another head, or the wrong `layer`). Use Grad-CAM for this model."
                )
            weights = classifier.weight[
                _targets(target, inputs.shape[0], classifier.weight.shape[0], inputs.device)
            ]  # (N, K)
            return torch.einsum("nk,nkhw->nhw", weights.to(activations.dtype), activations).unsqueeze(1)


class GradCAMPlusPlus(LayerAttribution):
    """Grad-CAM++ at ``layer``: ``ReLU(sum_k w_k A_k)`` with ``w_k = sum_ij alpha_kij ReLU(g_kij)`` and
    ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (0 where the denominator is 0), ``g`` the target score's gradient.

    Example::

        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(weights=None).eval()
        >>> GradCAMPlusPlus(model, model.layer4).attribute(torch.rand(2, 3, 64, 64), target=0).shape
        torch.Size([2, 1, 2, 2])
    """

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        """(N, 1, h, w) non-negative maps for each image's target class."""
        with torch.enable_grad():
            activations, scores = _layer_output(self.forward_func, self.layer, inputs)
            chosen = scores.gather(
                1, _targets(target, inputs.shape[0], scores.shape[1], scores.device).reshape(-1, 1)
            ).sum()
            (grads,) = torch.autograd.grad(chosen, activations)
        activations, grads = activations.detach(), grads.detach()
        squared = grads.pow(2)
        denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * grads.pow(3)
        alpha = torch.where(denominator != 0, squared / torch.where(denominator != 0, denominator, 1.0), 0.0)
        weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(dim=1, keepdim=True).clamp(min=0)
