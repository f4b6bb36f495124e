"""Per-epoch cost of every callback at its defaults, as a share of the epoch it rides on (issue #22).

A ResNet-18 (``torchvision``, 10 classes, no weights) trains on ``--train-images`` seeded synthetic 3x112x112 images
(``benchmarks/callbacks.py``'s ``Synthetic``: the class shifts one block's mean) for ``--epochs`` epochs, once bare and once with every callback of
``captum_ext.callbacks`` attached at its defaults (``ShortcutMonitor`` given input x gradient and the planted block of
class 0, ``RandomizationMonitor`` saliency: their required arguments). Each
callback's own work (its ``run``) is timed; the table gives the last epoch's seconds per callback and their share of
a bare epoch (training and validation, measured in the same process). Goal: <= 5% each at the defaults.

Usage: .venv/bin/python benchmarks/callback_overhead.py [--train-images 2000] [--epochs 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from callbacks import Synthetic, block  # benchmarks/callbacks.py, beside this script
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.models import resnet18

import captum_ext.callbacks as callbacks_module
from captum_ext.callbacks import RandomizationMonitor, ShortcutMonitor
from captum_ext.callbacks.base import ExplanationCallback
from captum_ext.models import ClassifierModule

SIDE = 112


def every_callback() -> list[ExplanationCallback]:
    """One instance of each callback the package exports, at its defaults."""
    region = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    region[block(0, SIDE)] = True
    made = []
    for name in callbacks_module.__all__:
        cls = getattr(callbacks_module, name)
        if isinstance(cls, type) and issubclass(cls, ExplanationCallback) and cls is not ExplanationCallback:
            required = {ShortcutMonitor: ("input_x_gradient", region), RandomizationMonitor: ("saliency",)}
            made.append(cls(*required.get(cls, ())))
    return made


def _timed(callback: ExplanationCallback, seconds: list[float]) -> None:
    run = callback.run

    @functools.wraps(run)
    def timed(trainer, pl_module):
        start = time.perf_counter()
        run(trainer, pl_module)
        seconds.append(time.perf_counter() - start)

    callback.run = timed  # type: ignore[method-assign]


def _fit(datamodule: Synthetic, epochs: int, callbacks: list) -> float:
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(tempfile.mkdtemp(), name="bench"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(ClassifierModule(resnet18(num_classes=10)), datamodule=datamodule)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    data = Synthetic(args.train_images, side=SIDE)
    epoch = _fit(data, args.epochs, []) / args.epochs
    callbacks = every_callback()
    seconds: dict[str, list[float]] = {type(c).__name__: [] for c in callbacks}
    for callback in callbacks:
        _timed(callback, seconds[type(callback).__name__])
    _fit(data, args.epochs, callbacks)
    print(
        f"\nResNet-18, {args.train_images} images of 3x{SIDE}x{SIDE}, {args.threads} threads: bare epoch {epoch:.1f} s"
    )
    print(f"{'callback':<22} | {'s, last epoch':>13} | {'share of an epoch':>17} | {'first epoch s':>13}")
    for name, times in seconds.items():
        last = times[-1] if times else 0.0
        first = times[0] if times else 0.0
        print(f"{name:<22} | {last:>13.2f} | {last / epoch:>16.1%} | {first:>13.2f}")
    total = sum(t[-1] for t in seconds.values() if t)
    print(f"{'all together':<22} | {total:>13.2f} | {total / epoch:>16.1%} |")


if __name__ == "__main__":
    main()
