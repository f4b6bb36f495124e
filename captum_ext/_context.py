"""Context managers that change a model only for the duration of a call and always restore it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "gradients_enabled", "full_precision"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own ``training`` flag on exit (also on error)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def gradients_enabled() -> Iterator[None]:
    """Allow autograd even inside ``torch.no_grad()`` or ``torch.inference_mode()`` (e.g. a validation loop).

    Tensors created in inference mode must be cloned inside this block before they can require grad.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


#: Device types on which ``torch.autocast`` can be switched off.
_AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu")


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Autocast switched off for the block, on ``device``'s type: inside a mixed-precision (``"bf16-mixed"``,
    ``"16-mixed"``) step, maps and scores are computed in the model's own dtype (float32), not in half precision.

    Example::

        >>> with torch.autocast("cpu", dtype=torch.bfloat16), full_precision(torch.device("cpu")):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    if device.type not in _AUTOCAST_DEVICES:
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield
