"""Capture one layer's output (or input) during a forward pass; the hook lives only inside the ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from captum_ext.batches import IMAGE_KEYS
from captum_ext.explainer import resolve_layer

__all__ = ["capture_output", "batch_inputs"]


@contextlib.contextmanager
def capture_output(model: nn.Module, layer: str, use_input: bool = False) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives ``layer``'s output (a tensor) at every forward, or its first input when
    ``use_input``; the hook is removed on exit, also when the forward raises."""
    module = resolve_layer(model, layer)
    outputs: list[torch.Tensor] = []

    def record(value: object, what: str) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Expected layer {layer!r} to {what} a tensor, but it {what}s {type(value).__name__}.")
        outputs.append(value)

    if use_input:
        handle = module.register_forward_pre_hook(lambda mod, args: record(args[0] if args else None, "take"))
    else:
        handle = module.register_forward_hook(lambda mod, args, output: record(output, "output"))
    try:
        yield outputs
    finally:
        handle.remove()


def batch_inputs(batch: object, name: str = "dataloader") -> torch.Tensor:
    """The input images of a dataloader batch: the batch itself if a tensor, else its first element, else a dict's
    image entry (the keys of :data:`captum_ext.batches.IMAGE_KEYS`)."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(batch, Mapping):
        x = next((batch[key] for key in IMAGE_KEYS if key in batch), batch)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"Expected argument `{name}` to yield images (N, C, H, W) or tuples starting with them, but got {got}."
        )
    return x
