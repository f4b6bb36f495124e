"""``class_scores``: the target-class score of many images, forwarded in chunks (no gradients, eval mode). The
images can be built chunk by chunk, so a metric that perturbs each image thousands of times never holds them all."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from captum_ext._checks import check_finite
from captum_ext._context import eval_mode, full_precision
from captum_ext._model import model_device
from captum_ext.model_output import OutputFn, logits

__all__ = ["class_scores", "check_several_classes"]


def check_several_classes(scores: torch.Tensor, hint: str = "") -> None:
    """A ValueError for (B, 1) scores: the softmax of one class is 1 whatever the input, so a probability-based
    score would be a constant that looks like a measurement."""
    if scores.dim() == 2 and scores.shape[1] == 1:
        raise ValueError(
            "Expected the model to score at least 2 classes for a softmax probability, but it returns 1 (the softmax "
            f"of one class is always 1, so every score would be the same){hint}."
        )


def class_scores(
    model: nn.Module,
    images: torch.Tensor | Callable[[int, int], torch.Tensor],
    targets: torch.Tensor,
    batch_size: int = 128,
    apply_softmax: bool = False,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(B,) float32 score (logit, or probability with ``apply_softmax``) of ``targets[i]`` for image ``i``,
    ``batch_size`` images per forward pass. ``images`` is a (B, C, H, W) tensor or a function ``(start, stop)`` that
    builds images ``start`` to ``stop - 1`` (B is then ``len(targets)``).

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> class_scores(net, torch.zeros(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])).shape
        torch.Size([5])
    """
    build = images if callable(images) else (lambda start, stop: images[start:stop])
    out = []
    with torch.no_grad(), eval_mode(model), full_precision(model_device(model)):
        for start in range(0, len(targets), batch_size):
            scores = check_finite(
                "model outputs",
                logits(model(build(start, min(start + batch_size, len(targets)))), output_fn),
                "The model produces NaN or Inf for these images; a score computed from them would mean nothing.",
            )
            if apply_softmax:
                check_several_classes(scores)
                scores = torch.softmax(scores, dim=1)
            out.append(scores.gather(1, targets[start : start + batch_size, None].to(scores.device))[:, 0].float())
    return torch.cat(out) if out else torch.zeros(0)
