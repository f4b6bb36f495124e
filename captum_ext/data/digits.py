"""``CleverHansDigits``: scikit-learn's 8x8 digits, upsampled, noisy, with a planted shortcut tag.

The tag is a small bright patch (the "copyright notice" of Lapuschkin et al. 2019) put on most images of one
class and few of the others, so a model can learn to read the tag instead of the digit. The ``control``
variant tags the same share of images independently of the label: the same pixels, no shortcut.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Literal, cast

import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset

from captum_ext._checks import check_choice, check_int, check_real, check_seed

__all__ = ["CleverHansDigits", "EpochShuffle"]

Split = Literal["train", "val", "test"]
#: split name -> (images, labels, tagged, untagged images)
_Splits = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
_CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


class EpochShuffle(Sampler[int]):
    """A random order per epoch that depends on ``(seed, epoch)`` only; ``set_epoch`` (called by Lightning) picks it.

    For full epochs the orders are those of ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    in successive epochs (that loader draws one base seed and two permutations from its generator per epoch), so
    switching to it changed no fit; unlike that loader it is stateless, so a resumed fit reproduces them.

    Example::

        >>> sampler = EpochShuffle(5, seed=0)
        >>> sampler.set_epoch(3)
        >>> first = list(sampler)
        >>> sampler.set_epoch(0); sampler.set_epoch(3)
        >>> list(sampler) == first and sorted(first) == [0, 1, 2, 3, 4]
        True
    """

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.epoch = check_int("size", size, 0), check_seed(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, 0)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):  # what the shuffling DataLoader drew in the earlier epochs
            torch.empty((), dtype=torch.int64).random_(generator=gen)
            torch.randperm(self.size, generator=gen)
            torch.randperm(self.size, generator=gen)
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        return iter(torch.randperm(self.size, generator=gen).tolist())


class CleverHansDigits(pl.LightningDataModule):
    """The digits data module with a planted shortcut, for tests, examples and the demo.

    Each image is ``clip(amplitude * digit + noise * N(0, 1), 0, 1)``, with the digit's strokes in [0, 1]
    after bilinear upsampling to ``size`` x ``size``. When ``shortcut_class`` is not None, a
    ``tag_size`` x ``tag_size`` patch of value ``tag_value`` is pasted on a fraction ``p_class`` of that class's
    images and ``p_other`` of the rest (in every split). With ``control=True`` each image is tagged with the
    same overall probability, independently of its label.

    Calibrated with the defaults: SmallCNN trained 15 epochs reaches ~0.77 test accuracy; on the shortcut
    class's test images 1.00 with the tag and ~0.71 on the same images without it.

    Args:
        size: Image side, at least ``tag_size + 2``. Default 32.
        amplitude: Contrast of the digit. Default 0.3.
        noise: Standard deviation of the Gaussian pixel noise. Default 0.35.
        rgb: Three channels (each with its own noise) instead of one. Default False.
        shortcut_class: The class the tag is planted on, or None for no tag. Default 0.
        p_class: Share of the shortcut class's images that carry the tag. Default 0.9.
        p_other: Share of the other classes' images that carry the tag. Default 0.02.
        control: Tag independently of the label (same overall share). Default False.
        tag_size: Side of the square tag in pixels. Default 5.
        tag_location: ``"bottom_right"``, ``"bottom_left"``, ``"top_right"``, ``"top_left"`` or a
            ``(row, col)`` top-left corner. Default ``"bottom_right"``.
        tag_pattern: ``"solid"`` or ``"checker"``. Default ``"solid"``.
        tag_value: Pixel value of the tag. Default 1.0.
        val_fraction, test_fraction: Split sizes. Default 0.2 each.
        batch_size: Default 64.
        seed: Seeds the noise, the tags and the splits. Default 0.

    Example::

        >>> dm = CleverHansDigits()
        >>> x, y, tagged = dm.split("test")
        >>> tuple(x.shape[1:]), float(x.min()) >= 0.0, float(x.max()) <= 1.0
        ((1, 32, 32), True, True)
        >>> dm.region_mask.sum().item()
        25
    """

    def __init__(
        self,
        size: int = 32,
        amplitude: float = 0.3,
        noise: float = 0.35,
        rgb: bool = False,
        shortcut_class: int | None = 0,
        p_class: float = 0.9,
        p_other: float = 0.02,
        control: bool = False,
        tag_size: int = 5,
        tag_location: str | tuple[int, int] = "bottom_right",
        tag_pattern: Literal["solid", "checker"] = "solid",
        tag_value: float = 1.0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("amplitude", amplitude), ("noise", noise), ("tag_value", tag_value)):
            check_real(name, value, 0.0)
        for name, value in (("p_class", p_class), ("p_other", p_other)):
            if not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise ValueError(f"Expected argument `{name}` to be a probability in [0, 1], but got {value!r}.")
        check_int("tag_size", tag_size, 1)
        if not isinstance(size, int) or size < tag_size + 2 or size < 8:
            raise ValueError(
                f"Expected argument `size` to be an int >= max(8, tag_size + 2) = {max(8, tag_size + 2)} so the "
                f"tag fits with a margin, but got {size!r}."
            )
        if shortcut_class is not None and shortcut_class not in range(10):
            raise ValueError(
                f"Expected argument `shortcut_class` to be None or a digit 0..9, but got {shortcut_class!r}."
            )
        check_choice("tag_pattern", tag_pattern, ("solid", "checker"))
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                "Expected arguments `val_fraction` and `test_fraction` in (0, 1) with a sum below 1, "
                f"but got {val_fraction!r} and {test_fraction!r}."
            )
        self.size = size
        self.amplitude = float(amplitude)
        self.noise = float(noise)
        self.rgb = rgb
        self.shortcut_class = shortcut_class
        self.p_class = float(p_class)
        self.p_other = float(p_other)
        self.control = control
        self.tag_size = tag_size
        self.tag_origin = self._tag_origin(tag_location)
        self.tag_pattern = tag_pattern
        self.tag_value = float(tag_value)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.batch_size = batch_size
        self.seed = check_seed(seed)
        self._splits: _Splits | None = None

    def _tag_origin(self, location: str | tuple[int, int]) -> tuple[int, int]:
        far = self.size - self.tag_size - 1
        corners = {"bottom_right": (far, far), "bottom_left": (far, 1), "top_right": (1, far), "top_left": (1, 1)}
        if isinstance(location, str):
            if location not in corners:
                raise ValueError(
                    f"Expected argument `tag_location` to be one of {', '.join(map(repr, _CORNERS))} or a "
                    f"(row, col) tuple, but got {location!r}."
                )
            return corners[location]
        if (
            not isinstance(location, (tuple, list))
            or len(location) != 2
            or not all(isinstance(v, int) and 0 <= v <= self.size - self.tag_size for v in location)
        ):
            raise ValueError(
                f"Expected argument `tag_location` to be a corner name or a (row, col) tuple with both in "
                f"[0, {self.size - self.tag_size}], but got {location!r}."
            )
        return int(location[0]), int(location[1])

    @property
    def channels(self) -> int:
        """Number of image channels (1 or 3)."""
        return 3 if self.rgb else 1

    @property
    def region_mask(self) -> torch.Tensor:
        """The tag's (H, W) bool mask."""
        mask = torch.zeros(self.size, self.size, dtype=torch.bool)
        r, c = self.tag_origin
        mask[r : r + self.tag_size, c : c + self.tag_size] = True
        return mask

    @property
    def region_box(self) -> tuple[int, int, int, int]:
        """The tag as a half-open ``(x0, y0, x1, y1)`` box (torchvision's order)."""
        r, c = self.tag_origin
        return (c, r, c + self.tag_size, r + self.tag_size)

    def tag_patch(self) -> torch.Tensor:
        """The tag's pixel values, (C, tag_size, tag_size)."""
        patch = torch.full((self.tag_size, self.tag_size), self.tag_value)
        if self.tag_pattern == "checker":
            idx = torch.arange(self.tag_size)
            patch = patch * ((idx[:, None] + idx[None, :]) % 2 == 0)
        return patch.expand(self.channels, -1, -1).clone()

    def apply_tag(self, images: torch.Tensor) -> torch.Tensor:
        """Return a copy of (N, C, H, W) ``images`` with the tag pasted on every image."""
        out = images.clone()
        r, c = self.tag_origin
        out[..., r : r + self.tag_size, c : c + self.tag_size] = self.tag_patch()
        return out

    def _build(self) -> None:
        digits = load_digits()
        raw = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        n = len(labels)
        gen = torch.Generator().manual_seed(self.seed)
        clean = F.interpolate(raw[:, None], size=(self.size, self.size), mode="bilinear", align_corners=False)
        clean = clean.clamp(0, 1).expand(-1, self.channels, -1, -1)
        noisy = (self.amplitude * clean + self.noise * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
        u = torch.rand(n, generator=gen)
        if self.shortcut_class is None:
            tagged = torch.zeros(n, dtype=torch.bool)
        elif self.control:
            prior = float((labels == self.shortcut_class).float().mean())
            overall = self.p_class * prior + self.p_other * (1 - prior)
            tagged = u < overall
        else:
            p = torch.where(labels == self.shortcut_class, self.p_class, self.p_other)
            tagged = u < p
        images = torch.where(tagged[:, None, None, None], self.apply_tag(noisy), noisy)
        order = torch.randperm(n, generator=gen)
        n_test, n_val = int(round(n * self.test_fraction)), int(round(n * self.val_fraction))
        parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        self._splits = {k: (images[i], labels[i], tagged[i], noisy[i]) for k, i in parts.items()}

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            self._build()

    def split(self, name: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images (N, C, H, W), labels (N,), tagged (N,) bool)`` of the ``"train"``, ``"val"`` or ``"test"`` split."""
        check_choice("name", name, ("train", "val", "test"))
        self.setup()
        images, labels, tagged, _ = cast(_Splits, self._splits)[name]  # built by setup()
        return images, labels, tagged

    def shortcut_test_images(self, tagged: bool = True, split: Split = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """All images of the shortcut class in ``split``, every one with the tag (``tagged=True``) or none.

        The two calls return the same images, so their accuracies compare like for like.
        """
        if self.shortcut_class is None:
            raise ValueError("This CleverHansDigits has no shortcut: `shortcut_class` is None.")
        self.split(split)
        _, labels, _, untagged_images = cast(_Splits, self._splits)[split]  # built by split()
        keep = labels == self.shortcut_class
        images = untagged_images[keep]
        return (self.apply_tag(images) if tagged else images), labels[keep]

    @property
    def train_mean(self) -> torch.Tensor:
        """Per-channel mean of the training images, (C,): the fill value of ``MeanImputer``."""
        return self.split("train")[0].mean(dim=(0, 2, 3))

    def dataset(self, name: Split) -> TensorDataset:
        """The split as a ``TensorDataset`` of (image, label)."""
        images, labels, _ = self.split(name)
        return TensorDataset(images, labels)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by :class:`EpochShuffle`: epoch *e*'s order depends on (seed, e) only, so a fit resumed from a
        checkpoint sees the orders an uninterrupted fit would (Lightning calls ``set_epoch``)."""
        train = self.dataset("train")
        base_seeds = torch.Generator().manual_seed(self.seed)  # DataLoader draws its worker base seed from it
        return DataLoader(
            train, batch_size=self.batch_size, sampler=EpochShuffle(len(train), self.seed), generator=base_seeds
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("test"), batch_size=self.batch_size)
