"""The argument checks every public entry point shares, so all of them word the error the same way: integers,
real numbers (NaN never passes), finite tensors and class targets."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

__all__ = [
    "Target",
    "TargetSource",
    "check_int",
    "check_bool",
    "check_classes",
    "check_seed",
    "check_real",
    "check_callable",
    "check_choice",
    "check_finite",
    "check_target_source",
    "class_targets",
]

#: Class indices: an int for every image, a sequence or tensor with one per image, or None (the predicted class).
Target = int | Sequence[int] | torch.Tensor | None

#: Where a callback or an audit takes each image's class from: its ``"label"`` or the model's ``"prediction"``.
TargetSource = Literal["label", "prediction"]


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool, else a TypeError naming the argument: a truthy string such as ``"no"`` or a number
    is not taken for a flag.

    Example::

        >>> check_bool("keep", "yes")
        Traceback (most recent call last):
        ...
        TypeError: Expected argument `keep` to be True or False, but got 'yes'.
    """
    if not isinstance(value, bool):
        raise TypeError(f"Expected argument `{name}` to be True or False, but got {value!r}.")
    return value


def check_classes(classes: object) -> list[int] | None:
    """``classes`` as a list of ints, or None: a non-empty sequence of distinct class indices (ints >= 0, not bools).
    A repeated class is an error, not silently merged: it usually means a typo.

    Example::

        >>> check_classes((3, 1))
        [3, 1]
        >>> check_classes([0, 0])
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `classes` to be a non-empty sequence of distinct class indices (ints >= 0) or None, but got [0, 0].
    """
    if classes is None:
        return None
    if (
        isinstance(classes, (str, bytes))
        or not isinstance(classes, Sequence)
        or not classes
        or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and int(c) >= 0 for c in classes)
        or len({int(c) for c in classes}) != len(classes)
    ):
        raise ValueError(
            "Expected argument `classes` to be a non-empty sequence of distinct class indices (ints >= 0) or None, "
            f"but got {classes!r}."
        )
    return [int(c) for c in classes]


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) of at least ``minimum``; otherwise a ValueError
    naming the argument and the expected form.

    Example::

        >>> check_int("steps", 8, 1)
        8
        >>> check_int("steps", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `steps` to be an int >= 1, but got 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an int >= {minimum}, but got {value!r}.")
    return int(value)


def check_seed(seed: object) -> int:
    """``seed`` as an ``int``: a TypeError naming `seed` unless it is an integer (not a bool), a ValueError if it is
    negative. Every public ``seed=`` argument goes through it.

    Example::

        >>> check_seed(3)
        3
        >>> check_seed(1.5)
        Traceback (most recent call last):
        ...
        TypeError: Expected argument `seed` to be an int >= 0, but got 1.5.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"Expected argument `seed` to be an int >= 0, but got {seed!r}.")
    if seed < 0:
        raise ValueError(f"Expected argument `seed` to be an int >= 0, but got {seed!r}.")
    return int(seed)


def check_real(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool, never NaN or infinite) in the interval;
    otherwise a ValueError naming the argument and the interval.

    Example::

        >>> check_real("std", 0.5, 0.0, low_open=True)
        0.5
        >>> check_real("std", float("nan"), 0.0, low_open=True)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `std` to be a positive real number, but got nan.
    """
    v: float | None = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        v = float(value)
    if v is None or not ((v > low if low_open else v >= low) and (v < high if high_open else v <= high)):
        if low == 0 and high == math.inf:
            form = "a positive real number" if low_open else "a non-negative real number"
        elif low == -math.inf and high == math.inf:
            form = "a finite real number"
        else:
            left = "(" if low_open or low == -math.inf else "["
            right = ")" if high_open or high == math.inf else "]"
            form = f"{'a positive' if low == 0 and low_open else 'a'} real number in {left}{low:g}, {high:g}{right}"
        raise ValueError(f"Expected argument `{name}` to be {form}, but got {value!r}.")
    return v


def check_callable(name: str, value: object, form: str) -> Callable[..., Any] | None:
    """``value`` if it is callable or None, else a TypeError naming the argument and the ``form`` it should have.

    Example::

        >>> check_callable("unpack", "image", "item -> (images, labels)")
        Traceback (most recent call last):
        ...
        TypeError: Expected argument `unpack` to be a callable (item -> (images, labels)) or None, but got str.
    """
    if value is None or callable(value):
        return value
    raise TypeError(f"Expected argument `{name}` to be a callable ({form}) or None, but got {type(value).__name__}.")


def check_finite(name: str, tensor: torch.Tensor, cause: str = "") -> torch.Tensor:
    """``tensor`` if every value is finite; otherwise a ValueError naming ``name``, NaN or Inf, the index of the
    first bad value and (optionally) the likely ``cause``.

    Example::

        >>> check_finite("inputs", torch.tensor([[0.0, float("nan")]]))
        Traceback (most recent call last):
        ...
        ValueError: Expected `inputs` to be finite, but it holds NaN at index (0, 1).
    """
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):  # NaN and Inf reach the sum: one pass
        return tensor
    finite = torch.isfinite(tensor)
    if bool(finite.all()):  # the sum overflowed; every value is finite
        return tensor
    index = tuple(int(i) for i in (~finite).nonzero()[0])
    kind = "NaN" if bool(torch.isnan(tensor[index])) else "Inf"
    raise ValueError(
        f"Expected `{name}` to be finite, but it holds {kind} at index {index}.{' ' + cause if cause else ''}"
    )


def check_choice(name: str, value: object, choices: Sequence[str]) -> Any:
    """``value`` if it is one of ``choices``, else a ValueError naming the argument and listing them.

    Example::

        >>> check_choice("order", "lerf", ("morf", "lerf"))
        'lerf'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {', '.join(map(repr, choices))}, but got {value!r}.")
    return value


def check_target_source(target: object) -> TargetSource:
    """``target`` if it is ``"label"`` or ``"prediction"``, else a ValueError naming `target`.

    Example::

        >>> check_target_source("label")
        'label'
    """
    return check_choice("target", target, ("label", "prediction"))


def class_targets(
    target: object, n: int, num_classes: int | None, device: torch.device | str = "cpu", name: str = "target"
) -> torch.Tensor:
    """The one target rule: an int, a sequence of ints or an integer tensor (0-d or (n,)) as an (n,) long tensor of
    class indices in ``[0, num_classes)``. Floats, bools and negative indices are refused (``-1`` would silently
    select the last class).

    Args:
        target: the class index or the per-sample indices.
        n: the batch size.
        num_classes: the model's class count, or None when unknown (only the lower bound is checked).
        device: where the result lives. Default the CPU.
        name: the argument name used in errors. Default ``"target"``.

    Raises:
        TypeError: not an int, a sequence of ints or an integer tensor.
        ValueError: the wrong length, or an index outside ``[0, num_classes)``.

    Example::

        >>> class_targets(3, 2, 10)
        tensor([3, 3])
        >>> class_targets([0, 10], 2, 10)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `target` to hold class indices in [0, 10), but got 10 at position 1.
    """
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(
                f"Expected argument `{name}` to hold integer class indices, but got a tensor of {target.dtype}."
            )
        index = target.detach().reshape(-1) if target.dim() == 0 else target.detach()
        if target.dim() == 0:
            index = index.expand(n)
    elif isinstance(target, numbers.Integral) and not isinstance(target, bool):
        index = torch.full((n,), int(target), dtype=torch.long)
    elif isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target):
            raise TypeError(
                f"Expected argument `{name}` to be a sequence of int class indices, but got {list(target)!r}."
            )
        index = torch.tensor([int(t) for t in target], dtype=torch.long)
    else:
        raise TypeError(
            f"Expected argument `{name}` to be an int, a sequence of ints or an integer tensor, but got {target!r}."
        )
    if index.shape != (n,):
        raise ValueError(
            f"Expected argument `{name}` to be an int or hold one index per input ({n},), but got shape {tuple(index.shape)}."
        )
    index = index.to(device=device, dtype=torch.long, copy=True)  # a normal tensor even if made in inference mode
    upper = num_classes if num_classes is not None else None
    bad = (index < 0) if upper is None else (index < 0) | (index >= upper)
    if bool(bad.any()):
        position = int(bad.nonzero()[0, 0])
        interval = f"[0, {upper})" if upper is not None else "[0, classes)"
        raise ValueError(
            f"Expected argument `{name}` to hold class indices in {interval}, but got {int(index[position])} at position {position}."
        )
    return index
