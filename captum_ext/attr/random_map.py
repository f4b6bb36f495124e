"""``RandomAttribution``: a seeded random map, the baseline every faithfulness benchmark needs."""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import Attribution

from captum_ext._checks import check_seed

__all__ = ["RandomAttribution"]


class RandomAttribution(Attribution):
    """Uniform random attributions in [0, 1), shaped like the inputs; ignores the model and the target.

    Ranking pixels by this map is a random ranking (ROAR's ``"random"`` baseline, Hooker et al. 2019).

    Args:
        forward_func: the model (kept for Captum's contract, never called).
        seed: seeds the instance's own generator, used when ``attribute`` gets none: successive calls give new
            maps, the same sequence for the same seed, and the global RNG is never read. Default 0.

    Example::

        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> RandomAttribution(torch.nn.Identity()).attribute(torch.zeros(2, 1, 4, 4), generator=gen).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(self, forward_func: Any, seed: int = 0):
        super().__init__(forward_func)
        self.generator = torch.Generator().manual_seed(check_seed(seed))

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute(self, inputs, target: Any = None, generator: torch.Generator | None = None):
        """Return uniform noise shaped like ``inputs`` (a tensor or a tuple of tensors), drawn from ``generator``
        (default: the instance's own seeded generator)."""
        generator = generator if generator is not None else self.generator
        single = isinstance(inputs, torch.Tensor)
        tensors = (inputs,) if single else tuple(inputs)
        out = tuple(torch.rand(t.shape, generator=generator).to(device=t.device, dtype=t.dtype) for t in tensors)
        return out[0] if single else out
