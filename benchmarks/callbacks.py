"""Cost of ``AttributionMonitor``, measured side by side in one run.

Prints, for the tiny demo (SmallCNN on CleverHansDigits, 1x32x32) and a ResNet-18 on 3x64x64 inputs (4,000
seeded synthetic training images per epoch):
  1. the monitor's median time per check after the first (maps of saliency and integrated gradients on 16 probe images, deletion and
     insertion AUC, overlay grids, TensorBoard writes) / the bare Captum time for the same two attributions on the
     same probe set and the same weights                                                       target <= 1.5
  2. the fit wall time with ``AttributionMonitor()`` at its defaults / without it              target <= 1.25
     (on the tiny demo an epoch is shorter than one integrated-gradients pass: that ratio says little)

Usage: .venv/bin/python benchmarks/callbacks.py [--epochs 2] [--train-images 4000] [--threads 2] [--skip-resnet]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from captum.attr import IntegratedGradients, Saliency
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18

from captum_ext.callbacks import AttributionMonitor
from captum_ext.data import CleverHansDigits
from captum_ext.models import ClassifierModule, SmallCNN


class TimedMonitor(AttributionMonitor):
    """``AttributionMonitor`` that records the wall time of each of its checks."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seconds: list[float] = []

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        super().run(trainer, pl_module)
        self.seconds.append(time.perf_counter() - start)


def block(cls: int, side: int = 64) -> tuple[slice, slice]:
    """Rows and columns of the (side / 4)-pixel block whose mean class ``cls`` shifts."""
    r, c, b = *divmod(cls, 4), side // 4
    return slice(b * r, b * r + b), slice(b * c, b * c + b)


class Synthetic(pl.LightningDataModule):
    """Seeded 3 x side x side images whose class shifts the mean of one (side / 4)-pixel block (learnable, no
    download)."""

    def __init__(self, train: int, val: int = 256, batch_size: int = 64, side: int = 64):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        n = train + val
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = torch.rand(n, 3, side, side, generator=gen)
        for cls in range(10):
            rows, cols = block(cls, side)
            images[labels == cls, :, rows, cols] += 0.5
        self.train_set = TensorDataset(images[:train], labels[:train])
        self.val_set = TensorDataset(images[train:], labels[train:])
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def _fit(make_model, datamodule, epochs: int, monitor: TimedMonitor | None) -> tuple[float, pl.LightningModule]:
    torch.manual_seed(0)
    module = ClassifierModule(make_model())
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(tempfile.mkdtemp(), name="bench"),
        callbacks=[monitor] if monitor else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return time.perf_counter() - start, module


def _bare_captum_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 3) -> float:
    model.eval()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        Saliency(model).attribute(x.clone().requires_grad_(), target=y)
        IntegratedGradients(model).attribute(x.clone().requires_grad_(), target=y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _case(name: str, make_model, datamodule, epochs: int) -> None:
    bare_fit, _ = _fit(make_model, datamodule, epochs, None)
    monitor = TimedMonitor()
    monitored_fit, module = _fit(make_model, datamodule, epochs, monitor)
    probe = monitor.probe_set
    bare = _bare_captum_seconds(module, probe.inputs, probe.labels)
    warm = monitor.seconds[1:] or monitor.seconds  # the first check also chooses the probe set and warms up
    check = statistics.median(warm)
    print(f"== {name}: {epochs} epoch(s)")
    print(
        f"  monitor check {check:.3f} s (first {monitor.seconds[0]:.3f} s) / bare Captum (Saliency + IG, 16 images) "
        f"{bare:.3f} s = {check / bare:.2f}  (target <= 1.5)"
    )
    print(
        f"  fit with monitor {monitored_fit:.1f} s / without {bare_fit:.1f} s = {monitored_fit / bare_fit:.2f}  (target <= 1.25)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    _case("SmallCNN, CleverHansDigits 1x32x32 (1,077 training images)", SmallCNN, CleverHansDigits(), args.epochs)
    if not args.skip_resnet:
        _case(
            f"ResNet-18, 3x64x64 ({args.train_images} training images)",
            lambda: resnet18(num_classes=10),
            Synthetic(args.train_images),
            args.epochs,
        )


if __name__ == "__main__":
    main()
