"""ROAR at ImageNet shape (issue #22): per-task overhead, ranking storage and loader throughput on JPEG folders.

For each size (default 2,000 and 20,000 training images, 500 test images, written by ``benchmarks/_disk_images.py``
as photo-like 320 px JPEGs of ~35 KB, read through ImageNet's deterministic view: resize to 256, centre crop 224),
with a SmallCNN at 224 px, saliency and the random ranking, one fraction:

  1. ``captum-ext roar --plan`` once (the whole dataset read: fingerprint, base model, rankings), timed;
  2. one ``--run-index 0`` task trains run 0 (two batches: the run's length is not the point);
  3. the same ``--run-index 0`` task again, now done, timed over ``--tries`` processes: what every finished or
     requeued array task costs, Python start-up and imports included. Beside it, in this process, what the same
     task cost before #22: a full pass over the data to fingerprint it (``cache.data_fingerprint``);
  4. ranking storage: bytes per pixel position of the shard files;
  5. the retraining loader (``RankedMaskDataset``: rankings memory-mapped, half the pixels imputed with the mean,
     masking in the workers) against a plain DataLoader over the same files, both with ``--workers`` workers and
     batch 64, alternating, best of ``--tries``: images per second and their ratio.

Usage: .venv/bin/python benchmarks/roar_scale.py [--sizes 2000 20000] [--root /tmp/captum_ext_photos] [--tries 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from _disk_images import JpegFolderDataModule, make_image_folder  # noqa: E402

from captum_ext.evaluation import cache, roar_plan  # noqa: E402
from captum_ext.evaluation.retraining import RankedMaskDataset  # noqa: E402
from captum_ext.imputation import MeanImputer  # noqa: E402
from captum_ext.models import ClassifierModule, SmallCNN  # noqa: E402

SIZE = 224


def make_module() -> ClassifierModule:
    """The module factory of the benchmark's configs: a narrow SmallCNN for RGB 224 px images."""
    return ClassifierModule(SmallCNN(in_channels=3, num_classes=10, image_size=SIZE, width=8), num_classes=10)


def _cli(config: Path, *step: str) -> float:
    """Seconds one ``captum-ext roar`` process takes (start-up included); raises with its stderr on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "captum_ext.cli", "roar", "--config", str(config), *step],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode:
        raise RuntimeError(f"captum-ext roar {' '.join(step)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _images_per_second(loader: DataLoader, batches: int) -> float:
    start, seen = time.perf_counter(), 0
    for i, (x, _) in enumerate(loader):
        seen += len(x)
        if i + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


def measure(root: Path, n_train: int, n_test: int, workers: int, tries: int, scratch: Path) -> dict:
    started = time.perf_counter()
    make_image_folder(root, n_train, n_test, size=320, texture=24)
    generated = time.perf_counter() - started
    config = {
        "module_factory": "roar_scale:make_module",
        "datamodule": "_disk_images:JpegFolderDataModule",
        "datamodule_kwargs": {"root": str(root), "batch_size": 64, "num_workers": workers, "crop": SIZE},
        "explainers": ["saliency"],
        "fractions": [0.5],
        "repeats": 1,
        "trainer_kwargs": {"max_epochs": 1, "limit_train_batches": 2, "accelerator": "cpu"},
        "out": str(scratch / f"out{n_train}"),
        "cache_dir": str(scratch / f"cache{n_train}"),
    }
    path = scratch / f"roar{n_train}.yaml"
    path.write_text(yaml.safe_dump(config))
    plan_s = _cli(path, "--plan")
    _cli(path, "--run-index", "0")
    done_s = [_cli(path, "--run-index", "0") for _ in range(tries)]

    data = JpegFolderDataModule(str(root), batch_size=64, num_workers=workers, crop=SIZE)
    data.setup()
    datasets = {"train": data.train_dataloader().dataset, "test": data.test_dataloader().dataset}
    options = {"num_workers": workers, "persistent_workers": False} if workers else {}
    start = time.perf_counter()
    cache.data_fingerprint(datasets, 256, dict.fromkeys(datasets, options))
    before_s = time.perf_counter() - start

    settings = {k: config[k] for k in ("fractions", "repeats", "trainer_kwargs", "cache_dir")}
    plan = roar_plan(make_module, data, ["saliency"], compute=False, progress=False, **settings)
    folders = {folder for run in plan.runs for folder in run.rankings.values()}
    shard_bytes = sum(f.stat().st_size for folder in folders for f in Path(folder).glob("*.npy"))
    positions = 2 * (n_train + n_test) * SIZE * SIZE  # saliency and random, train and test
    train_folder = plan.runs[0].rankings["train"]

    batches = min(n_train, 2000) // 64
    plain = DataLoader(datasets["train"], batch_size=64, **options)
    view = RankedMaskDataset(datasets["train"], train_folder, 0.5, False, MeanImputer([0.5, 0.5, 0.5]))
    masked = DataLoader(view, batch_size=64, **options)
    rates: dict[str, list[float]] = {"plain": [], "roar": []}
    for _ in range(tries):
        rates["plain"].append(_images_per_second(plain, batches))
        rates["roar"].append(_images_per_second(masked, batches))
    return {
        "images": n_train,
        "generate_s": generated,
        "plan_s": plan_s,
        "done_task_s": statistics.median(done_s),
        "done_task_max_s": max(done_s),
        "full_pass_s": before_s,
        "bytes_per_position": shard_bytes / positions,
        "plain_img_s": max(rates["plain"]),
        "roar_img_s": max(rates["roar"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "captum_ext_photos"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in args.sizes:
            rows.append(measure(Path(args.root) / f"n{n}", n, args.test, args.workers, args.tries, Path(scratch)))
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{os.cpu_count()} cores, {args.workers} loader workers, 320 px JPEGs read at {SIZE} px, {args.test} test images"
    )
    header = (
        f"{'train images':>12} | {'--plan s':>8} | {'done task s':>11} | {'full pass s':>11} | {'B/position':>10} | "
        f"{'plain img/s':>11} | {'ROAR img/s':>10} | {'ratio':>5}"
    )
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(
            f"{r['images']:>12} | {r['plan_s']:>8.1f} | {r['done_task_s']:>11.2f} | {r['full_pass_s']:>11.1f} | "
            f"{r['bytes_per_position']:>10.2f} | {r['plain_img_s']:>11.0f} | {r['roar_img_s']:>10.0f} | "
            f"{r['roar_img_s'] / r['plain_img_s']:>5.2f}"
        )


if __name__ == "__main__":
    main()
