"""``LayerwiseInputXGradient``: input x gradient at every convolution of the network, each layer's map upsampled to
the input and averaged, optionally leaving out the first layers (whose maps are mostly edges).

A map per layer ``m_l = sum_k A_lk * dS/dA_lk`` (the activation times its gradient, summed over channels) shows
what each depth contributes; averaging them after scaling each to a maximum absolute value of 1 per image gives
every depth the same say. All layers come from one forward and one backward pass (after a probe forward that finds
the convolutions' order when ``layers`` is not given).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from captum.attr import Attribution
from torch import nn
from torch.nn import functional as F

from captum_ext._checks import class_targets
from captum_ext._model import forward_order, resolve_layer
from captum_ext.model_output import LogitsModel

__all__ = ["LayerwiseInputXGradient"]


class LayerwiseInputXGradient(Attribution):
    """Input x gradient at each layer, upsampled to the input (bilinear), scaled per image to a maximum absolute
    value of 1, averaged over layers; (N, 1, H, W).

    Args:
        forward_func: the model.
        layers: dotted names of the layers (resolved on the model). Default: every ``nn.Conv2d``, in the order a
            forward pass reaches them.
        skip_first: leave out the first this many of those layers. Default 0.

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> LayerwiseInputXGradient(SmallCNN(), skip_first=1).attribute(torch.rand(2, 1, 32, 32), target=3).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, forward_func: nn.Module, layers: Sequence[str] | None = None, skip_first: int = 0):
        super().__init__(forward_func)
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise TypeError(
                f"Expected argument `layers` to be a list of dotted layer names or None, but got {layers!r}."
            )
        if isinstance(skip_first, bool) or not isinstance(skip_first, int) or skip_first < 0:
            raise ValueError(f"Expected argument `skip_first` to be an int >= 0, but got {skip_first!r}.")
        self.layers, self.skip_first = (list(layers) if layers is not None else None), skip_first

    def _modules(self, inputs: torch.Tensor) -> list[nn.Module]:

        model = self.forward_func.model if isinstance(self.forward_func, LogitsModel) else self.forward_func
        names = self.layers
        if names is None:
            names = forward_order(model, inputs, lambda module: isinstance(module, nn.Conv2d))
        chosen = names[self.skip_first :]
        if not chosen:
            raise ValueError(
                f"Expected at least one layer after skipping the first {self.skip_first} of {len(names)}: {names}."
            )
        return [resolve_layer(model, name) for name in chosen]

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        """(N, 1, H, W): the mean over the layers of each layer's scaled, upsampled input x gradient map."""
        if target is None:
            raise ValueError(
                "Expected argument `target` (class indices); the Explainer passes the predicted class for None."
            )
        modules = self._modules(inputs)
        captured: dict[int, torch.Tensor] = {}
        handles = [
            m.register_forward_hook(lambda m, a, out, i=i: captured.setdefault(i, out)) for i, m in enumerate(modules)
        ]
        try:
            with torch.enable_grad():
                scores = self.forward_func(inputs)
                chosen = class_targets(target, inputs.shape[0], scores.shape[1], scores.device)
                activations = [captured[i] for i in range(len(modules))]
                grads = torch.autograd.grad(scores.gather(1, chosen.reshape(-1, 1)).sum(), activations)
        finally:
            for handle in handles:
                handle.remove()
        total = torch.zeros(inputs.shape[0], 1, *inputs.shape[-2:], device=inputs.device)
        for activation, grad in zip(activations, grads):
            layer_map = (activation.detach() * grad).sum(dim=1, keepdim=True)
            layer_map = F.interpolate(layer_map, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
            scale = layer_map.abs().amax(dim=(1, 2, 3), keepdim=True)
            total += layer_map / torch.where(scale > 0, scale, 1.0)
        return total / len(activations)
