"""An ImageNet-shaped folder of JPEGs for the benchmarks that read images from disk (not a benchmark itself).

Nothing is downloaded: ``make_image_folder`` writes ``root/{train,test}/<class>/<index>.jpg`` from synthetic,
class-conditional images (a smooth random background plus a coloured shape whose colour and form give the class,
at a random place), deterministic from (seed, split, index) and generated in seconds over a few processes.
``JpegFolder`` reads such a folder back as (float image in [0, 1], label) pairs, decoding with torchvision, and
``JpegFolderDataModule`` wraps its two splits for Lightning.

Usage: .venv/bin/python benchmarks/_disk_images.py ROOT [--train 2000] [--test 500] [--size 224]
"""

from __future__ import annotations

import argparse
import colorsys
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

SPLITS = ("train", "test")
MARKER = ".complete.json"
_FORMAT = 1  # bump when the images drawn for the same parameters change


def _class_colour(label: int, classes: int) -> tuple[int, int, int]:
    """A saturated colour per class, hues spread evenly around the wheel."""
    r, g, b = colorsys.hsv_to_rgb(label / classes, 1.0, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_image(seed: int, split: str, index: int, size: int, classes: int, texture: int = 0) -> Image.Image:
    """The RGB image at ``index`` of ``split``: its class is ``index % classes``. ``texture`` > 0 adds per-pixel noise
    of that amplitude, so the JPEG is as large and as slow to decode as a photograph's (ImageNet: ~110 KB)."""
    label = index % classes
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    # Smooth background: a 4x4 grid of muted colours, upsampled bilinearly.
    grey = rng.uniform(60, 190, size=(4, 4, 1))
    cells = np.clip(grey + rng.normal(0, 20, size=(4, 4, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(cells, "RGB").resize((size, size), Image.BILINEAR)
    # The class: colour (hue) and form (label % 4), jittered in size, place and shade.
    extent = int(size * rng.uniform(0.25, 0.45))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, size=2))
    x1, y1 = x0 + extent, y0 + extent
    shade = rng.uniform(0.75, 1.0)
    colour = tuple(int(c * shade) for c in _class_colour(label, classes))
    draw = ImageDraw.Draw(image)
    form = label % 4
    if form == 0:
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif form == 1:
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    elif form == 2:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
        draw.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=colour)
    if texture:
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-texture, texture + 1, size=(size, size, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    return image


def _write_images(job: tuple[str, str, list[int], int, int, int, int, int]) -> int:
    """Worker: draw and save the images ``indices`` of one split; returns how many it wrote."""
    root, split, indices, seed, size, classes, quality, texture = job
    for index in indices:
        path = Path(root) / split / f"{index % classes:03d}" / f"{index:06d}.jpg"
        draw_image(seed, split, index, size, classes, texture).save(path, "JPEG", quality=quality)
    return len(indices)


def make_image_folder(
    root: str | Path,
    n_train: int,
    n_test: int,
    size: int = 224,
    classes: int = 10,
    seed: int = 0,
    quality: int = 90,
    workers: int = 2,
    texture: int = 0,
) -> Path:
    """Write ``root/{train,test}/<class:03d>/<index:06d>.jpg`` (labels round-robin over ``classes``).

    Idempotent: ``root/.complete.json``, written last, holds the parameters; when it matches, nothing is touched.
    Otherwise the old ``train``/``test`` folders are removed and the images regenerated over ``workers`` processes
    (the images do not depend on ``workers``).
    """
    root = Path(root)
    params = {
        "n_train": n_train,
        "n_test": n_test,
        "size": size,
        "classes": classes,
        "seed": seed,
        "quality": quality,
        "texture": texture,
        "format": _FORMAT,
    }
    marker = root / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == params:
                return root
        except (OSError, ValueError):
            pass
        marker.unlink()
    jobs = []
    chunk_count = max(1, workers) * 4
    for split, n in zip(SPLITS, (n_train, n_test)):
        shutil.rmtree(root / split, ignore_errors=True)
        for label in range(min(classes, n)):
            (root / split / f"{label:03d}").mkdir(parents=True, exist_ok=True)
        for k in range(chunk_count):
            indices = list(range(k, n, chunk_count))
            if indices:
                jobs.append((str(root), split, indices, seed, size, classes, quality, texture))
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            written = sum(pool.imap_unordered(_write_images, jobs))
    else:
        written = sum(_write_images(job) for job in jobs)
    assert written == n_train + n_test, (written, n_train, n_test)
    marker.write_text(json.dumps(params, indent=1))
    return root


class JpegFolder(Dataset):
    """The JPEGs of ``root/split/<class>/*.jpg`` as (float32 image (3, H, W) in [0, 1], int label) pairs; with
    ``crop``, ImageNet's deterministic view: the shorter side resized to ``crop * 8 / 7``, then the centre crop."""

    def __init__(self, root: str | Path, split: str, crop: int | None = None) -> None:
        self.files = sorted(Path(root, split).glob("*/*.jpg"))
        self.labels = [int(path.parent.name) for path in self.files]
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        data = torchvision.io.read_file(str(self.files[i]))
        image = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
        if self.crop is not None:
            image = F.center_crop(F.resize(image, [self.crop * 8 // 7], antialias=True), [self.crop, self.crop])
        return image.float().div_(255), self.labels[i]


class JpegFolderDataModule(pl.LightningDataModule):
    """The train and test splits of a ``make_image_folder`` folder as Lightning data loaders."""

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        crop: int | None = None,
    ) -> None:
        super().__init__()
        self.root, self.crop = Path(root), crop
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_set: JpegFolder | None = None
        self.test_set: JpegFolder | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = JpegFolder(self.root, "train", self.crop)
            self.test_set = JpegFolder(self.root, "test", self.crop)

    def _loader(self, dataset: JpegFolder | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Generate a synthetic ImageNet-shaped folder of JPEGs.")
    parser.add_argument("root", help="folder to write train/ and test/ into")
    parser.add_argument("--train", type=int, default=2000, help="number of training images")
    parser.add_argument("--test", type=int, default=500, help="number of test images")
    parser.add_argument("--size", type=int, default=224, help="side of the square images, in pixels")
    args = parser.parse_args()
    marker = Path(args.root) / MARKER
    before = marker.stat().st_mtime_ns if marker.exists() else None
    start = time.perf_counter()
    make_image_folder(args.root, args.train, args.test, size=args.size)
    seconds = time.perf_counter() - start
    files = args.train + args.test
    if marker.stat().st_mtime_ns == before:
        print(f"{args.root} already holds these {files} files (checked in {seconds * 1e3:.1f} ms)")
    else:
        print(f"{files} files in {seconds:.2f} s ({files / seconds:.0f} files/s) under {args.root}")
