"""The one rule for taking images and labels out of a dataset item or a dataloader batch.

Every entry point that reads data (the callbacks' probe sets, ROAD and ROAR, the audit, accuracy) goes through
:func:`unpack_batch`:

1. a user-given ``unpack(item) -> (images, labels)`` wins;
2. a tuple or list gives its first two elements (``(image, label, ...)``);
3. a mapping gives the first of the keys :data:`IMAGE_KEYS` present and the first of :data:`LABEL_KEYS` present
   (``{"image": x, "label": y}``, Hugging Face's ``{"pixel_values": x, "labels": y}``, ...).

Anything else is a ``TypeError`` naming the item's type (and, for a mapping, its keys) and pointing to ``unpack=``.

Example::

    >>> import torch
    >>> x, y = unpack_batch({"pixel_values": torch.zeros(2, 3, 8, 8), "labels": torch.tensor([1, 0])})
    >>> tuple(x.shape), y.tolist()
    ((2, 3, 8, 8), [1, 0])
    >>> unpack_batch({"img": 1, "cls": 2}, unpack=lambda b: (b["img"], b["cls"]))
    (1, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from captum_ext._checks import check_callable

__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "Unpack", "unpack_batch", "check_unpack", "with_images"]

IMAGE_KEYS: tuple[str, ...] = ("image", "images", "pixel_values", "x", "input", "inputs", "img")
LABEL_KEYS: tuple[str, ...] = ("label", "labels", "target", "targets", "y", "class", "cls")

Unpack = Callable[[Any], tuple[Any, Any]]


def check_unpack(unpack: object) -> Unpack | None:
    """``unpack`` if it is callable or None, else a TypeError naming the argument."""
    return check_callable("unpack", unpack, "item or batch -> (images, labels)")


def unpack_batch(item: Any, unpack: Unpack | None = None) -> tuple[Any, Any]:
    """``(images, labels)`` of one dataset item or one batch (see the module docstring for the rule).

    Raises:
        TypeError: the item has no recognisable images and labels, or ``unpack`` returned no pair.
    """
    if unpack is not None:
        pair = unpack(item)
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(
                f"Expected argument `unpack` to return an (images, labels) pair, but it returned {type(pair).__name__}."
            )
        return pair[0], pair[1]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    if isinstance(item, Mapping):
        image_key = next((k for k in IMAGE_KEYS if k in item), None)
        label_key = next((k for k in LABEL_KEYS if k in item), None)
        if image_key is not None and label_key is not None:
            return item[image_key], item[label_key]
        keys = ", ".join(map(repr, list(item)[:10]))
        raise TypeError(
            f"Expected a dict item with an image key ({', '.join(IMAGE_KEYS)}) and a label key "
            f"({', '.join(LABEL_KEYS)}), but got the keys {keys}; pass `unpack=` (item -> (images, labels))."
        )
    raise TypeError(
        f"Expected an (images, labels, ...) tuple or a dict with image and label keys, but got {type(item).__name__}; "
        "pass `unpack=` (item -> (images, labels))."
    )


def with_images(item: Any, images: Any) -> Any:
    """``item`` (a tuple, list or dict read by the default rule) with its images replaced, in the same structure, so
    a pipeline that builds modified data (ROAR's masked views) hands your module the batches it expects.

    Example::

        >>> with_images({"image": 0, "label": 3, "path": "a.png"}, 1)
        {'image': 1, 'label': 3, 'path': 'a.png'}

    Raises:
        TypeError: an item the default rule cannot read.
    """
    unpack_batch(item)  # the same error as the rule for anything else
    if isinstance(item, (tuple, list)):
        return type(item)([images, *item[1:]]) if isinstance(item, list) else (images, *item[1:])
    key = next(k for k in IMAGE_KEYS if k in item)
    return {**item, key: images}
