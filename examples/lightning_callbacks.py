"""Attach captum-ext's monitors to a Lightning Trainer and watch the explanations in TensorBoard.

python examples/lightning_callbacks.py [--fast] [--out runs/examples/callbacks]
tensorboard --logdir runs/examples/callbacks
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from captum_ext.callbacks import AttributionMonitor, ShortcutMonitor
from captum_ext.data import CleverHansDigits
from captum_ext.models import ClassifierModule, SmallCNN


def main(out: str, fast: bool) -> None:
    data = CleverHansDigits()  # digits with a planted tag on 90% of the zeros
    torch.manual_seed(0)
    monitors = [
        AttributionMonitor(explainers=("saliency", "integrated_gradients"), num_samples=8 if fast else 16),
        ShortcutMonitor("input_x_gradient", region=data.region_mask, threshold=3.0, patience=2),
    ]
    trainer = pl.Trainer(
        max_epochs=3 if fast else 15,
        logger=TensorBoardLogger(out, name=""),
        callbacks=monitors,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(ClassifierModule(SmallCNN()), datamodule=data)
    print(f"TensorBoard: tensorboard --logdir {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/examples/callbacks")
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()
    main(args.out, args.fast)
