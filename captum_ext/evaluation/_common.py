"""Helpers the ROAR and ROAD runners share: taking "an explainer", and plain test accuracy of a model."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from captum_ext._context import eval_mode
from captum_ext.batches import Unpack, unpack_batch
from captum_ext.model_output import OutputFn, logits

__all__ = ["check_fractions", "model_device", "predict", "accuracy"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def predict(model: nn.Module, inputs: torch.Tensor, output_fn: OutputFn | None = None) -> torch.Tensor:
    """(N,) argmax class of the model's scores (read by the package's output rule); call it under ``no_grad``."""
    return logits(model(inputs), output_fn).argmax(dim=1)


def accuracy(
    model: nn.Module, batches: Iterable, output_fn: OutputFn | None = None, unpack: Unpack | None = None
) -> float:
    """Share of the batches' images (read by :func:`captum_ext.batches.unpack_batch`) whose argmax prediction equals
    the label; eval mode, no grad."""
    device = model_device(model)
    correct = total = 0
    with torch.no_grad(), eval_mode(model):
        for batch in batches:
            x, y = unpack_batch(batch, unpack)
            x, y = x.to(device), torch.as_tensor(y).to(device)
            correct += int((predict(model, x, output_fn) == y).sum())
            total += int(y.numel())
    return correct / total if total else float("nan")


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The fractions as distinct floats in [0, 1], or a ValueError naming `fractions`."""
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Iterable):
        raise ValueError(f"Expected argument `fractions` to be a sequence of numbers in [0, 1], but got {fractions!r}.")
    values = list(fractions)
    if (
        not values
        or not all(isinstance(f, numbers.Real) and 0 <= f <= 1 for f in values)
        or len(set(values)) != len(values)
    ):
        raise ValueError(f"Expected argument `fractions` to be distinct numbers in [0, 1], but got {fractions!r}.")
    return [float(f) for f in values]
