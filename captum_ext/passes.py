"""The model passes a check makes: ``count_passes`` counts them, ``forward_batch_size`` sizes their batches.

A check's cost is bounded below by the model passes it must make: a deletion curve forwards ``N * (steps + 1)``
images, the cascading randomisation test makes ``L + 1`` attribution passes (each a forward and a backward), and so
on. ``count_passes(model)`` counts them while a block runs, so that the cost of any check can be compared with the
cost of exactly those passes run bare (``benchmarks/limits.py`` does this for every check).

Example::

    >>> import torch
    >>> from captum_ext.metrics.faithfulness import perturbation_curve
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> with count_passes(model) as passes:
    ...     _ = perturbation_curve(model, torch.rand(5, 1, 4, 4), torch.rand(5, 4, 4), 0, steps=4)
    >>> passes.forward, passes.backward
    (25, 0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from captum_ext._checks import check_int
from captum_ext.model_output import logits

__all__ = ["PassCount", "count_passes", "forward_batch_size", "check_batch_size"]

#: Input values a no-grad forward batch holds by default on the CPU: 8 RGB images at 224 px, 98 at 64 px.
CPU_FORWARD_VALUES = 8 * 3 * 224 * 224


def check_batch_size(batch_size: object) -> int | None:
    """``batch_size`` if it is a positive int, None if it is None (then :func:`forward_batch_size` decides), else a
    ValueError naming `batch_size`."""
    return None if batch_size is None else check_int("batch_size", batch_size, 1)


def forward_batch_size(sample: torch.Tensor) -> int:
    """Images per no-grad forward pass when a check forwards many perturbed copies of ``sample``'s images.

    On an accelerator 512 images. On the CPU a batch of :data:`CPU_FORWARD_VALUES` input values (at most 256
    images): larger batches spill the caches and run slower per image (torchvision ResNet-18 on 2 cores, ms per
    image: 18 at batch 4-8 and 21 at batch 16 for 224 px; 1.5 at batch 64-96 and 1.7 at batch 128 for 64 px).

    Example::

        >>> forward_batch_size(torch.zeros(1, 3, 224, 224)), forward_batch_size(torch.zeros(1, 3, 64, 64))
        (8, 98)
    """
    if sample.device.type != "cpu":
        return 512
    return max(1, min(256, CPU_FORWARD_VALUES // max(1, sample[0].numel())))


@dataclass
class PassCount:
    """Images sent through a model while :func:`count_passes` was active.

    Attributes:
        forward: images forwarded (with or without gradients), summed over calls.
        backward: images whose output was backpropagated (each also counted in ``forward``).
        calls: forward calls (batches).
    """

    forward: int = 0
    backward: int = 0
    calls: int = 0


@contextlib.contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count the images ``model`` forwards and backpropagates inside the block.

    A forward hook on ``model`` counts each call's batch (the first dimension of its first tensor input) and, when
    the output's class scores (read by :func:`captum_ext.model_output.logits`) require gradients, a hook on that
    tensor counts the batch again each time a gradient flows back through it. Deep copies made inside the block
    (the sanity tests randomise copies) carry the hook and are counted too. The hook is removed on exit, also on
    error; the model is otherwise untouched.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}.")
    count = PassCount()

    def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
        batch = next((t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0), 0)
        count.forward += batch
        count.calls += 1
        try:
            scores = logits(output)
        except TypeError:  # an output only a user's output_fn can read: its backward passes are not counted
            return
        if scores.requires_grad:
            scores.register_hook(lambda _grad: setattr(count, "backward", count.backward + batch))

    handle = model.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()
