"""``class_scores``: the target-class score of many images, forwarded in chunks (no gradients, eval mode)."""

from __future__ import annotations

import torch
from torch import nn

from captum_ext._context import eval_mode
from captum_ext.model_output import OutputFn, logits

__all__ = ["class_scores"]


def class_scores(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int = 128,
    apply_softmax: bool = False,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(B,) float32 score (logit, or probability with ``apply_softmax``) of ``targets[i]`` for ``images[i]``,
    ``batch_size`` images per forward pass.

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> class_scores(net, torch.zeros(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])).shape
        torch.Size([5])
    """
    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            scores = logits(model(images[start : start + batch_size]), output_fn)
            if apply_softmax:
                scores = torch.softmax(scores, dim=1)
            out.append(scores.gather(1, targets[start : start + batch_size, None].to(scores.device))[:, 0].float())
    return torch.cat(out) if out else images.new_zeros(0)
