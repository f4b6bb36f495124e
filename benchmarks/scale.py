"""ROAR's retrainings on 1 worker vs 2, measured side by side in one run.

A ROAR grid on the digits (SmallCNN, ``CleverHansDigits(shortcut_class=None)``: saliency + the random ranking,
``--fractions`` x ``--repeats`` runs of ``--epochs`` epochs each). The base model and the rankings are computed
once; every variant then retrains the same runs from a fresh copy of that cache, so only the retraining is timed:

  1. sequential in this process (``executor=None``, torch on all cores: what ``roar`` does by default)
  2. ``ProcessPool(workers=1, threads=1)``: one spawned worker on one core
  3. ``ProcessPool(workers=2, threads=1)``: two workers, one core each
  4. ``RayExecutor(num_cpus=1)`` on a local 2-CPU Ray cluster, one thread per task (when Ray is installed;
     ``--skip-ray`` leaves it out)

and prints each wall time (worker start-up included), the speed-up over (1) and over (2), and checks that (2), (3)
and (4) produced the same accuracy table: runs are seeded by (seed, method, fraction, repeat), not by where they
execute. (1) may differ from them in a few images: torch's intra-op thread count changes the order of float sums.

Usage: .venv/bin/python benchmarks/scale.py [--fractions 0.1 0.3 0.5 0.7] [--repeats 2] [--epochs 3] [--skip-ray]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from captum_ext.data import CleverHansDigits
from captum_ext.evaluation import roar, roar_plan
from captum_ext.evaluation.executors import ProcessPool, RayExecutor
from captum_ext.models import small_cnn_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    cores = os.cpu_count() or 1
    data = CleverHansDigits(shortcut_class=None)
    settings = {
        "fractions": args.fractions,
        "repeats": args.repeats,
        "trainer_kwargs": {"max_epochs": args.epochs},
        "progress": False,
    }
    runs = 2 * len(args.fractions) * args.repeats

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared"
        start = time.perf_counter()
        roar_plan(small_cnn_module, data, ["saliency"], cache_dir=prepared, **settings)
        print(f"base model + rankings (once, not timed below): {time.perf_counter() - start:.1f} s")

        def timed(name: str, executor) -> tuple[float, dict]:
            folder = Path(scratch) / name
            folder.mkdir()
            for cached in [*prepared.glob("base_*.pt"), *prepared.glob("rank_*.npy")]:
                shutil.copy(cached, folder / cached.name)
            start = time.perf_counter()
            result = roar(small_cnn_module, data, ["saliency"], cache_dir=folder, executor=executor, **settings)
            return time.perf_counter() - start, result.accuracy

        torch.set_num_threads(cores)
        measured = {f"sequential, {cores} threads": timed("sequential", None)}
        with ProcessPool(workers=1, threads=1) as pool:
            measured["1 worker"] = timed("one", pool)
        with ProcessPool(workers=2, threads=1) as pool:
            measured["2 workers"] = timed("two", pool)
        if not args.skip_ray:
            try:
                import ray
            except ImportError:
                print("Ray is not installed: skipped (pip install 'captum-ext[scale]')")
            else:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a task gets OMP_NUM_THREADS=1
                try:
                    measured["Ray, 2 CPUs"] = timed("ray", RayExecutor(num_cpus=1))
                finally:
                    ray.shutdown()

    sequential = measured[f"sequential, {cores} threads"][0]
    print(f"\n{runs} retrainings of SmallCNN, {args.epochs} epochs each, {cores} cores")
    print(f"{'variant':<22} {'wall s':>8} {'s/run':>7} {'vs sequential':>14} {'vs 1 worker':>12}")
    for name, (seconds, _) in measured.items():
        print(
            f"{name:<22} {seconds:8.1f} {seconds / runs:7.2f} {sequential / seconds:13.2f}x "
            f"{measured['1 worker'][0] / seconds:11.2f}x"
        )
    one_thread = [table for name, (_, table) in measured.items() if not name.startswith("sequential")]
    print("\nsame accuracy table on every executor (one thread per run):", all(t == one_thread[0] for t in one_thread))


if __name__ == "__main__":
    main()
