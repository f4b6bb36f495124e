"""Faithfulness benchmarks: ratios measured side by side in one run, and the CPU-sized ROAR on the digits.

    .venv/bin/python benchmarks/faithfulness.py          # the three ratio benchmarks (about a minute; --threads 2)
    .venv/bin/python benchmarks/faithfulness.py --roar   # ROAR on the digits -> docs/img/roar_digits.{png,json}
    .venv/bin/python benchmarks/faithfulness.py --road   # ROAD and deletion AUC on the digits, no retraining

1. batched ``NoisyLinearImputer`` vs. pytorch-grad-cam 1.5.7's (ROAD's own per-image code; skipped when not
   installed) and vs. our ``backend="scipy"`` (a vectorised per-image sparse LU), on 32 RGB 64x64 images and 8 RGB
   224x224 images with 90% removed: ratios of times and the largest differences;
2. ``DeletionAUC`` vs. Quantus 0.6.0's ``PixelFlipping`` on the same model, data and step size (skipped when
   Quantus is not installed): ratio of times, and the two AUCs;
3. ROAR's attribution pass over a lazily generated dataset of 10k vs. 40k images: peak RSS of a subprocess each.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from captum_ext import Explainer
from captum_ext._multigrid import solve_neighbour_average
from captum_ext.imputation import Imputer, NoisyLinearImputer

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---- 1. NoisyLinearImputer vs. pytorch-grad-cam's and a per-image scipy solve ------------------------------------
def grad_cam_fill(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """pytorch-grad-cam's ``NoisyLinearImputer`` (ROAD's public code: a ``lil_matrix`` per image, scipy's
    ``spsolve``), noise off, image by image as its ROAD metrics call it; None without the package."""
    try:
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer as GradCamImputer
    except ImportError:
        return None
    imputer = GradCamImputer(noise=0.0)
    return torch.stack([imputer(image, ~removed) for image, removed in zip(x, mask)])  # its mask: 1 = keep


def bench_imputer() -> None:
    gen = torch.Generator().manual_seed(0)
    print("1. NoisyLinearImputer (batched multigrid-preconditioned CG) vs. pytorch-grad-cam's and our scipy backend")
    for n, size in ((32, 64), (8, 224)):
        x = torch.rand(n, 3, size, size, generator=gen)
        # ROAD-like masks: the top of a smooth random saliency map (blobs, not salt-and-pepper)
        smooth = torch.nn.functional.interpolate(
            torch.rand(n, 1, 8, 8, generator=gen), size=(size, size), mode="bilinear"
        )
        masks = {
            "random 50%": torch.rand(n, size, size, generator=gen) < 0.5,
            "blobs 50%": smooth[:, 0] > smooth.flatten(1).quantile(0.5, dim=1)[:, None, None],
            "blobs 90%": smooth[:, 0] > smooth.flatten(1).quantile(0.1, dim=1)[:, None, None],
        }
        if size > 64:  # the ImageNet-sized case: large holes only (the slow one for per-image LU)
            masks = {"blobs 90%": masks["blobs 90%"]}
        imputer = NoisyLinearImputer(noise=0.0)
        direct = NoisyLinearImputer(noise=0.0, backend="scipy")
        print(f"   {n} RGB {size}x{size} images")
        for name, mask in masks.items():
            ours = best_of(lambda: imputer(x, mask))  # noqa: B023 (called at once)
            iterations = solve_neighbour_average(
                x, mask[:, None].expand(n, 3, size, size), imputer.tol, imputer.max_iter
            )[1]
            scipy_s = best_of(lambda: direct(x, mask), repeats=2)  # noqa: B023
            error = float((imputer(x, mask) - direct(x, mask)).abs().max())
            line = (
                f"   {name:<11} torch {ours * 1e3:7.1f} ms ({iterations} iterations) | scipy backend "
                f"{scipy_s * 1e3:7.1f} ms: {scipy_s / ours:5.2f}x, max |diff| {error:.1e}"
            )
            if grad_cam_fill(x[:1], mask[:1]) is None:
                print(line + " | pytorch-grad-cam: skipped, not installed (pip install grad-cam)")
                continue
            theirs = best_of(lambda: grad_cam_fill(x, mask), repeats=2)  # noqa: B023
            error = float((imputer(x, mask) - grad_cam_fill(x, mask)).abs().max())
            print(
                line + f" | pytorch-grad-cam {theirs * 1e3:7.1f} ms: {theirs / ours:5.2f}x (target >= 5), "
                f"max |diff| {error:.1e}"
            )


# ---- 2. DeletionAUC vs. Quantus PixelFlipping ----------------------------------------------------------------
def bench_deletion() -> None:
    from captum_ext.metrics import DeletionAUC
    from captum_ext.metrics.faithfulness import perturbation_curve
    from captum_ext.models import SmallCNN

    print("2. DeletionAUC vs. Quantus 0.6.0 PixelFlipping (SmallCNN, 64 grey 32x32 images, 64 pixels a step)")
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus 0.6.0 calls np.trapz, removed in NumPy 2.4
    try:
        import quantus
    except ImportError:
        print("   skipped: quantus not installed (pip install quantus==0.6.0)")
        return
    torch.manual_seed(0)
    model = SmallCNN().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 32, 32, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    attr = Explainer("saliency").attribute(model, x, y)
    steps = 1024 // 64
    ours_metric = DeletionAUC(steps=steps, apply_softmax=True, batch_size=64)  # Quantus forwards 64 at a time

    def ours() -> float:
        ours_metric.reset()
        ours_metric.update(model, x, attr, y)
        return float(ours_metric.compute())

    pixel_flipping = quantus.PixelFlipping(
        features_in_step=64,
        perturb_baseline=0.0,
        normalise=False,
        abs=True,
        disable_warnings=True,
        display_progressbar=False,
    )

    def theirs() -> np.ndarray:
        return np.asarray(
            pixel_flipping(
                model=model,
                x_batch=x.numpy(),
                y_batch=y.numpy(),
                a_batch=attr.numpy(),
                device="cpu",
                softmax=True,
                batch_size=64,
            )
        )

    t_ours, t_theirs = best_of(ours), best_of(theirs)
    # Quantus's curve omits the unperturbed point
    curve = perturbation_curve(model, x, attr, y, steps=steps, batch_size=64)[:, 1:].numpy()
    print(
        f"   DeletionAUC {t_ours * 1e3:7.1f} ms   Quantus {t_theirs * 1e3:7.1f} ms   time ratio ours/Quantus "
        f"{t_ours / t_theirs:4.2f}   max |curve difference| {np.abs(curve - theirs()).max():.1e}"
    )


# ---- 3. peak RSS of ROAR's attribution pass over 10k vs. 40k lazily generated images ------------------------------
class LazyImages(Dataset):
    """Images generated on access from their index: the dataset itself holds nothing."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        gen = torch.Generator().manual_seed(index)
        return torch.rand(1, 32, 32, generator=gen), index % 10


def rss_child(size: int) -> None:
    from captum_ext.evaluation.cache import compute_rankings
    from captum_ext.models import SmallCNN

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        compute_rankings(
            SmallCNN(),
            Explainer("saliency"),
            LazyImages(size),
            Path(folder) / "rank.npy",
            batch_size=256,
            progress=False,
        )
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def bench_rss() -> None:
    print("3. ROAR attribution pass (saliency, SmallCNN): peak RSS of a subprocess, lazily generated images")
    peaks = {}
    for size in (10_000, 40_000):
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(size)], capture_output=True, text=True, check=True
        )
        peaks[size] = int(out.stdout.split()[-1]) / 1024
        print(f"   {size:>6} images: peak RSS {peaks[size]:7.1f} MB")
    print(f"   difference {peaks[40_000] - peaks[10_000]:+.1f} MB (target < 100 MB)")


# ---- the CPU-sized ROAR on the digits ------------------------------------------------------------------------------
class BackgroundNoiseImputer(Imputer):
    """Fill with the digits' own background: ``clip(std * N(0, 1), 0, 1)``, each image's noise seeded by that
    image's content (reproducible, the same in any batch, but no fixed pattern across images). Unlike a constant
    mean, the filled pixels are statistically indistinguishable from background, so the *shape* of the removed
    set does not leak the class."""

    def __init__(self, std: float = 0.2):
        self.std = std

    def fill(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        noise = []
        for image in inputs.detach().cpu():
            seed = int(hashlib.sha256(image.numpy().tobytes()).hexdigest()[:15], 16)
            noise.append(torch.randn(image.shape, generator=torch.Generator().manual_seed(seed)))
        return (self.std * torch.stack(noise)).clamp(0, 1).to(inputs)


def small_cnn_module():
    from captum_ext.models import ClassifierModule, SmallCNN

    return ClassifierModule(SmallCNN(), lr=2e-3)


def run_roar(workers: int, repeats: int, epochs: int, cache_dir: str, imputer_name: str) -> None:
    from captum_ext.data import CleverHansDigits
    from captum_ext.evaluation import roar

    torch.set_num_threads(1)
    data = CleverHansDigits(shortcut_class=None, noise=0.2)
    explainers = ["saliency", "integrated_gradients", "guided_backprop", "smoothgrad_sq", "vargrad"]
    trainer_kwargs = {"max_epochs": epochs, "accelerator": "cpu", "limit_val_batches": 0}
    imputers = {
        "mean": None,
        "background": BackgroundNoiseImputer(0.2),
        "noisy_linear": NoisyLinearImputer(mean=data.train_mean),
    }
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
    ) as executor:
        result = roar(
            small_cnn_module,
            data,
            explainers,
            fractions=(0.1, 0.3, 0.5, 0.7, 0.9),
            repeats=repeats,
            trainer_kwargs=trainer_kwargs,
            cache_dir=cache_dir,
            seed=0,
            executor=executor,
            batch_size=32,
            imputer=imputers[imputer_name],
        )
    print(result)
    print(f"wall time {time.perf_counter() - start:.0f} s with {workers} worker processes")
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    stem = "roar_digits" if imputer_name == "mean" else f"roar_digits_{imputer_name}"
    result.to_json(ROOT / "docs" / "img" / f"{stem}.json")
    result.plot().savefig(ROOT / "docs" / "img" / f"{stem}.png", dpi=120)


def run_road(epochs: int) -> None:
    """ROAD (MoRF and LeRF) and deletion AUC on the digits test set for the ROAR methods, no retraining."""
    from torch.utils.data import DataLoader

    from captum_ext.data import CleverHansDigits
    from captum_ext.evaluation import road
    from captum_ext.metrics import DeletionAUC
    from captum_ext.models import SmallCNN, fit_classifier

    torch.set_num_threads(1)
    data = CleverHansDigits(shortcut_class=None, noise=0.2)
    torch.manual_seed(0)
    model = fit_classifier(SmallCNN(), data, max_epochs=epochs, lr=2e-3, limit_val_batches=0)
    images, labels, _ = data.split("test")
    loader = DataLoader(data.dataset("test"), batch_size=128)
    imputer = NoisyLinearImputer(mean=data.train_mean)
    print(f"{'method':<22}{'MoRF 0.1/0.3/0.5/0.7/0.9':>34}{'LeRF 0.1/0.3/0.5/0.7/0.9':>34}{'deletion AUC':>14}")
    for name in ("saliency", "integrated_gradients", "guided_backprop", "smoothgrad_sq", "vargrad"):
        morf = road(model, loader, name, order="morf", imputer=imputer)
        lerf = road(model, loader, name, order="lerf", imputer=imputer)
        deletion = DeletionAUC(steps=16, imputer=imputer)
        explainer = Explainer(name)
        for start in range(0, len(labels), 128):
            x, y = images[start : start + 128], labels[start : start + 128]
            deletion.update(model, x, explainer.attribute(model, x, y), y)
        cells = [" ".join(f"{v:.2f}" for v in r.accuracy.values()) for r in (morf, lerf)]
        print(f"{name:<22}{cells[0]:>34}{cells[1]:>34}{float(deletion.compute()):>14.3f}")
    print(
        f"{'random':<22}{' '.join(f'{v:.2f}' for v in morf.random_accuracy.values()):>34}"
        f"{' '.join(f'{v:.2f}' for v in lerf.random_accuracy.values()):>34}"
    )
    print(f"unmodified accuracy {morf.baseline_accuracy:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roar", action="store_true", help="run the CPU-sized ROAR on the digits")
    parser.add_argument("--road", action="store_true", help="ROAD and deletion AUC on the digits (no retraining)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cache-dir", default="roar_cache")
    parser.add_argument(
        "--imputer",
        choices=("mean", "background", "noisy_linear"),
        default="mean",
        help="ROAR's training-mean fill, background-like noise (no visible mask shape), or ROAD's noisy linear fill",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads for the ratio benchmarks (scipy's LU uses one)"
    )
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
    elif args.road:
        run_road(args.epochs)
    elif args.roar:
        run_roar(args.workers, args.repeats, args.epochs, args.cache_dir, args.imputer)
    else:
        torch.set_num_threads(args.threads)
        bench_imputer()
        bench_deletion()
        bench_rss()
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
