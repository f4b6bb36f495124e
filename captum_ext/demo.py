"""``captum-ext demo``: the whole story on the embedded digits, in a few minutes on a laptop CPU.

Trains SmallCNN on :class:`~captum_ext.data.CleverHansDigits` (with its planted shortcut tag) under a
``TensorBoardLogger`` in ``<out>/tensorboard``, then writes ``<out>/summary.json`` and prints a summary table and
the ``tensorboard`` command.

Example::

    >>> from captum_ext.demo import run_demo
    >>> summary = run_demo("runs/demo", fast=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from captum_ext.data import CleverHansDigits
from captum_ext.models import ClassifierModule, SmallCNN

__all__ = ["run_demo", "write_json_atomic"]


def write_json_atomic(data: dict, path: str | os.PathLike) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and an atomic rename (no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def run_demo(out: str | os.PathLike = "runs/demo", seed: int = 0, fast: bool = False, progress: bool = True) -> dict:
    """Run the demo and return its summary (also written to ``<out>/summary.json``).

    Args:
        out: output folder. Default ``runs/demo``.
        seed: seeds data, model and every random step. Default 0.
        fast: fewer epochs and smaller probes (the mode ``make test`` runs). Default False.
        progress: show Lightning's progress bar. Default True.

    Returns:
        The summary dict: accuracies, and the paths of what was written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = CleverHansDigits(seed=seed)
    epochs = 8 if fast else 15
    logger = TensorBoardLogger(save_dir=str(out), name="tensorboard")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SmallCNN()
        trainer = pl.Trainer(
            max_epochs=epochs,
            logger=logger,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            accelerator="cpu",
            deterministic=True,
        )
        module = ClassifierModule(model)
        trainer.fit(module, datamodule=datamodule)
    model.eval()
    x, y, _ = datamodule.split("test")
    tagged, y0 = datamodule.shortcut_test_images(tagged=True)
    clean, _ = datamodule.shortcut_test_images(tagged=False)
    summary = {
        "seed": seed,
        "fast": fast,
        "epochs": epochs,
        "test_accuracy": _accuracy(model, x, y),
        "shortcut_class": datamodule.shortcut_class,
        "shortcut_class_accuracy_tagged": _accuracy(model, tagged, y0),
        "shortcut_class_accuracy_untagged": _accuracy(model, clean, y0),
        "tensorboard_logdir": str(out / "tensorboard"),
        "tensorboard_version": logger.log_dir,
    }
    write_json_atomic(summary, out / "summary.json")
    return summary


def print_summary(summary: dict) -> None:
    """Print the demo summary as a short table and the TensorBoard command."""
    rows = [
        ("test accuracy", f"{summary['test_accuracy']:.3f}"),
        (f"class {summary['shortcut_class']} accuracy, tagged", f"{summary['shortcut_class_accuracy_tagged']:.3f}"),
        (f"class {summary['shortcut_class']} accuracy, tag removed", f"{summary['shortcut_class_accuracy_untagged']:.3f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\ncaptum-ext demo summary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"\nsummary: {Path(summary['tensorboard_logdir']).parent / 'summary.json'}")
    print(f"TensorBoard: tensorboard --logdir {summary['tensorboard_logdir']}")
