"""``RandomAttribution``: a seeded random map, the baseline every faithfulness benchmark needs."""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import Attribution

__all__ = ["RandomAttribution"]


class RandomAttribution(Attribution):
    """Uniform random attributions in [0, 1), shaped like the inputs; ignores the model and the target.

    Ranking pixels by this map is a random ranking (ROAR's ``"random"`` baseline, Hooker et al. 2019).

    Args:
        forward_func: the model (kept for Captum's contract, never called).

    Example::

        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> RandomAttribution(torch.nn.Identity()).attribute(torch.zeros(2, 1, 4, 4), generator=gen).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(self, forward_func: Any):
        super().__init__(forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute(self, inputs, target: Any = None, generator: torch.Generator | None = None):
        """Return uniform noise shaped like ``inputs`` (a tensor or a tuple of tensors), drawn from ``generator``
        (default: a fresh generator seeded with 0, so the global RNG is never read)."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        single = isinstance(inputs, torch.Tensor)
        tensors = (inputs,) if single else tuple(inputs)
        out = tuple(torch.rand(t.shape, generator=generator).to(device=t.device, dtype=t.dtype) for t in tensors)
        return out[0] if single else out
