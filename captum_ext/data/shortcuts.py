"""The shortcut zoo: synthetic shape images with a planted shortcut of a known kind and place.

Each image is a shape (class 0 a disc, 1 a square, 2 a triangle, 3 a cross) of random colour, size and position
on a textured background. A shortcut is planted on a share ``p_class`` of the ``shortcut_class`` images (and
``p_other`` of the rest); its pixels are returned as masks, so a discovered region can be scored against the
truth. Kinds (``SHORTCUT_KINDS``):

* ``"patch"``: a uniform magenta square in the bottom-right corner (side ``shortcut_size``);
* ``"watermark"``: text-like white strokes blended at half opacity along the bottom edge;
* ``"border"``: a yellow stripe along the left edge (a scanner's or a film's border);
* ``"frame"``: a thin green frame on all four edges (fixed, but not a box: its bounding box is the image);
* ``"logo"``: a small ring-and-bar emblem at a random position on each image (a recurring object, no fixed place);
* ``"tint"``: a global colour cast (no region: the right audit answer is "not localised");
* ``"none"``: no shortcut (the control).

Example::

    >>> zoo = shortcut_images("patch", n=12, size=64, seed=0)
    >>> zoo.images.shape, zoo.box, bool(zoo.masks[zoo.tagged].any(0).eq(zoo.region).all())
    (torch.Size([12, 3, 64, 64]), (56, 56, 64, 64), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captum_ext._checks import check_choice, check_int, check_real, check_seed
from captum_ext.boxes import Box, box_to_mask, mask_to_box

__all__ = ["SHORTCUT_KINDS", "ShortcutImages", "shortcut_images"]

SHORTCUT_KINDS = ("patch", "watermark", "border", "frame", "logo", "tint", "none")
#: kinds whose pixels are at the same place on every tagged image
FIXED_KINDS = ("patch", "watermark", "border", "frame")
_SHAPES = ("disc", "square", "triangle", "cross")


@dataclass
class ShortcutImages:
    """Images with a planted shortcut and its ground truth.

    Attributes:
        images: (N, 3, H, W) float in [0, 1].
        labels: (N,) long class of the shape.
        tagged: (N,) bool, whether the shortcut is on the image.
        masks: (N, H, W) bool, the shortcut's pixels on each image (all False on untagged images and for
            ``"tint"``/``"none"``).
        kind: the shortcut kind. shortcut_class: the class it predicts (None for ``"none"``).
        region: (H, W) bool, the fixed region of a fixed-location kind; None for ``"logo"``, ``"tint"``, ``"none"``.
        box: the region's bounding box ``(x0, y0, x1, y1)``, or None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    tagged: torch.Tensor
    masks: torch.Tensor
    kind: str
    shortcut_class: int | None
    region: torch.Tensor | None
    box: Box | None


def _int_between(name: str, value: object, low: int, high: int) -> int:
    checked = check_int(name, value, low)
    if checked > high:
        raise ValueError(f"Expected argument `{name}` to be an integer from {low} to {high}, but got {checked}.")
    return checked


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> torch.Tensor:
    """(H, W) bool: a filled shape centred at (cx, cy) with half-width ``radius`` (pixels)."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dx, dy = xs - cx, ys - cy
    if shape == "disc":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (dx.abs() <= 0.8 * radius) & (dy.abs() <= 0.8 * radius)
    if shape == "triangle":  # apex up, base at cy + radius
        return (dy <= radius) & (dy >= -radius) & (dx.abs() <= (dy + radius) / 2)
    bar = 0.35 * radius  # cross
    return ((dx.abs() <= bar) & (dy.abs() <= radius)) | ((dy.abs() <= bar) & (dx.abs() <= radius))


def _watermark(size: int, length: int, height: int) -> torch.Tensor:
    """(height, length) bool: fixed text-like glyphs (vertical strokes with bars), the same on every image."""
    gen = torch.Generator().manual_seed(1234)
    glyphs = torch.zeros(height, length, dtype=torch.bool)
    x = 0
    while x + 3 <= length:
        width = int(torch.randint(2, 4, (), generator=gen))
        glyphs[:, x] = True  # a stem
        row = int(torch.randint(0, height, (), generator=gen))
        glyphs[row, x : x + width] = True  # a bar
        if bool(torch.rand((), generator=gen) < 0.5):
            glyphs[:, min(x + width - 1, length - 1)] = True  # a second stem
        x += width + 1
    return glyphs


def _region(kind: str, size: int, shortcut_size: int) -> torch.Tensor:
    """The fixed region of a fixed-location kind, (H, W) bool."""
    s = shortcut_size
    if kind == "patch":
        return box_to_mask((size - s, size - s, size, size), (size, size))
    if kind == "watermark":
        height = max(3, s // 2)
        mask = torch.zeros(size, size, dtype=torch.bool)
        x0, y0 = (size - 2 * s) // 2, size - height - 1
        mask[y0 : y0 + height, x0 : x0 + 2 * s] = _watermark(size, 2 * s, height)
        return mask
    if kind == "border":
        return box_to_mask((0, 0, max(2, s // 3), size), (size, size))
    width = max(1, s // 6)  # frame
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[width:-width, width:-width] = False
    return mask


_COLOURS = {
    "patch": (1.0, 0.0, 1.0),
    "watermark": (1.0, 1.0, 1.0),
    "border": (1.0, 0.9, 0.0),
    "frame": (0.0, 1.0, 0.3),
    "logo": (0.0, 0.9, 1.0),
}


def _logo(size: int, shortcut_size: int, gen: torch.Generator) -> torch.Tensor:
    """(H, W) bool: a ring with a bar through it, of side ``shortcut_size``, at a random place."""
    s = shortcut_size
    ys, xs = torch.meshgrid(torch.arange(s) + 0.5 - s / 2, torch.arange(s) + 0.5 - s / 2, indexing="ij")
    r = (xs**2 + ys**2).sqrt()
    emblem = ((r <= s / 2) & (r >= s / 2 - max(1.0, s / 6))) | (ys.abs() <= max(0.5, s / 12))
    x0, y0 = (int(torch.randint(0, size - s + 1, (), generator=gen)) for _ in range(2))
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0 : y0 + s, x0 : x0 + s] = emblem
    return mask


def shortcut_images(
    kind: str,
    n: int = 600,
    size: int = 64,
    num_classes: int = 3,
    shortcut_class: int = 0,
    p_class: float = 0.9,
    p_other: float = 0.0,
    shortcut_size: int | None = None,
    seed: int = 0,
) -> ShortcutImages:
    """``n`` shape images (classes in turn) with a planted shortcut of ``kind`` (see the module docstring).

    Args:
        kind: one of ``SHORTCUT_KINDS``.
        n: number of images. Default 600.
        size: image side in pixels, 32 to 512. Default 64.
        num_classes: 2 to 4 shape classes. Default 3.
        shortcut_class: the class the shortcut is planted on. Default 0.
        p_class: share of the shortcut class's images that carry it. Default 0.9.
        p_other: share of the other images that carry it. Default 0.0.
        shortcut_size: the shortcut's side in pixels (patch, logo; the watermark is twice as long). Default
            ``size // 8``.
        seed: everything random (shapes, colours, background, which images are tagged, logo places). Default 0.

    Returns:
        :class:`ShortcutImages`.

    Raises:
        ValueError: an unknown ``kind``, sizes or shares out of range.
    """
    kind = check_choice("kind", kind, SHORTCUT_KINDS)
    n = check_int("n", n, 1)
    size = _int_between("size", size, 32, 512)
    num_classes = _int_between("num_classes", num_classes, 2, len(_SHAPES))
    shortcut_class = _int_between("shortcut_class", shortcut_class, 0, num_classes - 1)
    p_class = check_real("p_class", p_class, 0.0, 1.0)
    p_other = check_real("p_other", p_other, 0.0, 1.0)
    s = size // 8 if shortcut_size is None else _int_between("shortcut_size", shortcut_size, 4, size // 2)
    gen = torch.Generator().manual_seed(check_seed(seed))

    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    # background: a smooth random colour field plus pixel noise
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    background = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = 0.25 + 0.4 * background + 0.08 * torch.randn(n, 3, size, size, generator=gen)
    low, high = 0.2 * size, 0.8 * size  # shapes stay off the corners and edges the fixed shortcuts use
    for i in range(n):
        radius = float(size * (0.12 + 0.08 * torch.rand((), generator=gen)))
        cx, cy = (float(low + radius / 2 + (high - low - radius) * torch.rand((), generator=gen)) for _ in range(2))
        shape = _shape_mask(_SHAPES[int(labels[i])], size, cx, cy, radius)
        colour = 0.2 + 0.8 * torch.rand(3, 1, 1, generator=gen)
        images[i] = torch.where(shape, colour, images[i])
    share = torch.where(labels == shortcut_class, p_class, p_other)
    tagged = (torch.rand(n, generator=gen) < share) & (kind != "none")
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    region = _region(kind, size, s) if kind in FIXED_KINDS else None
    for i in torch.nonzero(tagged)[:, 0].tolist():
        if kind == "tint":
            images[i] = images[i] + torch.tensor([0.12, -0.06, -0.06])[:, None, None]
            continue
        masks[i] = region if region is not None else _logo(size, s, gen)
        colour = torch.tensor(_COLOURS[kind])[:, None, None]
        alpha = 0.5 if kind == "watermark" else 1.0
        images[i] = torch.where(masks[i], alpha * colour + (1 - alpha) * images[i], images[i])
    return ShortcutImages(
        images=images.clamp(0, 1),
        labels=labels,
        tagged=tagged,
        masks=masks,
        kind=kind,
        shortcut_class=None if kind == "none" else shortcut_class,
        region=region,
        box=None if region is None else mask_to_box(region),
    )
