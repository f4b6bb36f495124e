"""The one rule for reading class scores out of whatever a model's forward returns.

Every entry point that calls a model (the Explainer and through it every Captum method, the metrics, ROAD and ROAR,
the sanity checks, the audit, rollout and the callbacks) reads its output through :func:`logits`:

1. a user-given ``output_fn(output) -> Tensor`` wins;
2. a tensor is taken as it is;
3. an object with a tensor ``.logits`` (Hugging Face ``ImageClassifierOutput``, ...) gives that;
4. a mapping with a ``"logits"`` key gives that value;
5. a tuple or list gives its first element (``(logits, aux)``, torchvision's Inception in training mode, ...).

Anything else is a ``TypeError`` that names the output's type and says to pass ``output_fn=``.

Captum itself indexes the forward's output by ``target``, so the Explainer hands Captum a :class:`LogitsModel`:
an ``nn.Module`` that wraps the user's model (without changing it) and returns the unwrapped logits.

Example::

    >>> import torch
    >>> logits((torch.ones(2, 3), "aux")).shape
    torch.Size([2, 3])
    >>> logits({"logits": torch.zeros(1, 5)}).shape
    torch.Size([1, 5])
    >>> logits({"scores": torch.zeros(1, 5)}, output_fn=lambda out: out["scores"]).shape
    torch.Size([1, 5])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from captum_ext._checks import check_callable
from captum_ext._context import full_precision

__all__ = ["OutputFn", "logits", "check_output_fn", "LogitsModel", "with_logits"]

OutputFn = Callable[[Any], torch.Tensor]


def check_output_fn(output_fn: object) -> OutputFn | None:
    """``output_fn`` if it is callable or None, else a TypeError naming the argument."""
    return check_callable("output_fn", output_fn, "model output -> (N, classes) tensor")


def logits(output: Any, output_fn: OutputFn | None = None) -> torch.Tensor:
    """The class-score tensor in a model's ``output`` (see the module docstring for the rule).

    Raises:
        TypeError: no tensor could be found, or ``output_fn`` returned something other than a tensor.
    """
    if output_fn is not None:
        scores: object = output_fn(output)  # a user's function: checked below
        if not isinstance(scores, torch.Tensor):
            raise TypeError(
                f"Expected argument `output_fn` to return a tensor, but it returned {type(scores).__name__}."
            )
        return scores
    if isinstance(output, torch.Tensor):
        return output
    scores = getattr(output, "logits", None)
    if scores is None and isinstance(output, Mapping):
        scores = output.get("logits")
    if scores is None and isinstance(output, (tuple, list)) and output:
        scores = output[0]
    if not isinstance(scores, torch.Tensor):
        raise TypeError(
            f"Expected the model to return class scores: a tensor, an object with `.logits`, a dict with 'logits' or a "
            f"tuple whose first element is the scores, but got {type(output).__name__}; pass `output_fn=` (a function "
            "from the model's output to the (N, classes) tensor)."
        )
    return scores


class LogitsModel(nn.Module):
    """``model`` seen through :func:`logits`: its forward returns the unwrapped class-score tensor.

    It holds ``model`` as its only child and changes nothing of it (mode, weights, hooks stay the model's own), so
    Captum's hooks on ``model``'s layers and ReLUs work through it.

    Example::

        >>> class TupleNet(nn.Module):
        ...     def forward(self, x):
        ...         return x.flatten(1)[:, :3], None
        >>> LogitsModel(TupleNet())(torch.ones(2, 1, 2, 2)).shape
        torch.Size([2, 3])
    """

    def __init__(self, model: nn.Module, output_fn: OutputFn | None = None):
        super().__init__()
        self.model = model
        self.output_fn = check_output_fn(output_fn)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
        with full_precision(device):  # scores in the model's own dtype, also inside a mixed-precision step
            return logits(self.model(*args, **kwargs), self.output_fn)


def with_logits(model: nn.Module, output_fn: OutputFn | None = None) -> LogitsModel:
    """``model`` wrapped in a :class:`LogitsModel` (a ``LogitsModel`` given with no ``output_fn`` is returned as it
    is).

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``output_fn`` is not callable.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}.")
    if isinstance(model, LogitsModel) and output_fn is None:
        return model
    return LogitsModel(model, output_fn)
