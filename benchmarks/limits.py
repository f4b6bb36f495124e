"""Every model-bound check against its limit: the model passes it must make, run bare.

For each metric and check the script counts the images it sends through the model (``captum_ext.passes.count_passes``:
images forwarded, and how many of them were also backpropagated), times exactly that many passes run bare at the
best batch size for this machine (no-grad forwards; forward + backward of the input gradient for the rest), and
prints the check's time, that limit and their ratio, side by side in one run. Goal (issue #26): ratio <= 1.15.

The model is torchvision's ResNet-18 (random weights, eval mode), the probe ``--images`` random images at ``--size``
px with the model's predictions as targets; rollout runs on a small torchvision ViT at the same size, against the
plain (fused-attention) forward. Times are medians of ``--repeats`` runs after a warm-up.

Usage: .venv/bin/python benchmarks/limits.py [--size 64] [--images 32] [--repeats 3] [--threads 2] [--device cpu]
       .venv/bin/python benchmarks/limits.py --only deletion,road     # some rows
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.vision_transformer import VisionTransformer

from captum_ext import Explainer
from captum_ext.attr import AttentionRollout
from captum_ext.audit import CleverHansAudit
from captum_ext.evaluation import road
from captum_ext.metrics import AOPC, DeletionAUC, InsertionAUC
from captum_ext.metrics.faithfulness import perturbation_scores
from captum_ext.metrics.faithfulness_correlation import faithfulness_correlation, irof, monotonicity_correlation
from captum_ext.metrics.random_logit import random_logit
from captum_ext.metrics.robustness import max_sensitivity, relative_stability
from captum_ext.passes import count_passes
from captum_ext.sanity import data_randomization_test, model_randomization_test

BATCHES = (8, 16, 32, 64, 128, 256)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def best_batches(model: nn.Module, shape: tuple[int, ...], device: torch.device, repeats: int) -> tuple[int, int]:
    """The batch sizes (from ``BATCHES``) fastest per image on this machine for a bare no-grad forward and for a
    bare forward + input-gradient backward."""
    forward_s: dict[int, float] = {}
    backward_s: dict[int, float] = {}
    for batch in BATCHES:
        forward_s[batch] = median_time(lambda b=batch: bare(model, shape, device, b, 0, b, b), repeats, device) / batch
        if batch <= 64:
            backward_s[batch] = (
                median_time(lambda b=batch: bare(model, shape, device, 0, b, b, b), repeats, device) / batch
            )
    return min(forward_s, key=forward_s.__getitem__), min(backward_s, key=backward_s.__getitem__)


def bare(
    model: nn.Module, shape: tuple[int, ...], device: torch.device, forwards: int, backwards: int, fb: int, bb: int
) -> None:
    """``forwards`` no-grad forward images in batches of ``fb`` and ``backwards`` forward + input-gradient images in
    batches of ``bb``: the passes alone, nothing else."""
    if forwards:
        x = torch.rand(min(fb, forwards), *shape, device=device)
        with torch.no_grad():
            for start in range(0, forwards, fb):
                model(x[: forwards - start])
    if backwards:
        x = torch.rand(min(bb, backwards), *shape, device=device)
        target = torch.zeros(len(x), 1, dtype=torch.long, device=device)
        for start in range(0, backwards, bb):
            inputs = x[: backwards - start].clone().requires_grad_()
            torch.autograd.grad(model(inputs).gather(1, target[: len(inputs)]).sum(), inputs)


def rows(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, random_model: nn.Module
) -> dict[str, Callable[[], object]]:
    saliency = Explainer("saliency")
    attributions = saliency.attribute(model, x, y)
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    region = (0, 0, x.shape[-1] // 4, x.shape[-1] // 4)
    return {
        "saliency": lambda: saliency.attribute(model, x, y),
        "integrated_gradients": lambda: Explainer("integrated_gradients", n_steps=16).attribute(model, x, y),
        "gradcam": lambda: Explainer("gradcam", layer="layer4").attribute(model, x, y),
        "deletion": lambda: DeletionAUC(steps=16).update(model, x, attributions, y),
        "insertion": lambda: InsertionAUC(steps=16).update(model, x, attributions, y),
        "aopc": lambda: AOPC(steps=16).update(model, x, attributions, y),
        "deletion+insertion+aopc shared": lambda: perturbation_scores(model, x, attributions, y, steps=16),
        "irof": lambda: irof(model, x, attributions, y),
        "faithfulness_correlation": lambda: faithfulness_correlation(model, x, attributions, y, runs=32),
        "monotonicity_correlation": lambda: monotonicity_correlation(
            model, x, attributions, y, x[0].numel() // 48, samples=4
        ),
        "max_sensitivity": lambda: max_sensitivity(model, saliency, x, y, samples=8, attributions=attributions),
        "relative_input_stability": lambda: relative_stability(
            "input", model, saliency, x, y, samples=8, attributions=attributions
        ),
        "random_logit": lambda: random_logit(model, saliency, x, y, 10, attributions),
        "road": lambda: road(model, loader, saliency, fractions=(0.1, 0.5, 0.9)),
        "cascading": lambda: model_randomization_test(model, saliency, x, y, similarity=("spearman_abs",), keep_maps=0),
        "independent": lambda: model_randomization_test(
            model, saliency, x, y, mode="independent", similarity=("spearman_abs",), keep_maps=0
        ),
        "data_randomization": lambda: data_randomization_test(
            model, saliency, x, target=y, random_model=random_model, similarity=("spearman_abs",)
        ),
        "audit": lambda: CleverHansAudit("input_x_gradient", region=region, flip_images=16).run(model, (x, y)),
    }


def vit(size: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VisionTransformer(size, 8, num_layers=6, num_heads=6, hidden_dim=192, mlp_dim=768, num_classes=10)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=None, help="comma-separated row names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10).eval().to(device)
    x = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    shape = tuple(x.shape[1:])
    fb, bb = best_batches(model, shape, device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"ResNet-18 (random weights), {args.images} images 3x{args.size}x{args.size}, {name}, median of {args.repeats}"
    )
    print(f"best batch sizes of the bare passes: forward {fb}, forward + backward {bb}\n")
    print(f"{'check':<32}{'forward':>9}{'backward':>9}{'limit s':>9}{'check s':>9}{'ratio':>7}")
    chosen = set(args.only.split(",")) if args.only else None
    random_model = resnet18(weights=None, num_classes=10).eval().to(device)  # the data test's random-label model
    table = rows(model, x, y, random_model)
    vit_model = vit(args.size).to(device)
    table["rollout (ViT)"] = lambda: AttentionRollout(vit_model).attribute(x)
    for row, fn in table.items():
        if chosen is not None and row not in chosen:
            continue
        counted = vit_model if row == "rollout (ViT)" else model
        with count_passes(counted) as passes, count_passes(random_model) as random_passes:  # the data test: both
            fn()
        passes.forward += random_passes.forward
        passes.backward += random_passes.backward
        if row == "rollout (ViT)":  # against the plain forward of the same ViT (PyTorch's fused attention)
            limit = lambda: vit_forward(vit_model, x)  # noqa: E731
        else:
            forwards = passes.forward - passes.backward
            limit = lambda: bare(model, shape, device, forwards, passes.backward, fb, bb)  # noqa: B023, E731
        t = interleaved(fn, limit, args.repeats, device)
        print(
            f"{row:<32}{passes.forward:>9}{passes.backward:>9}{t[1]:>9.3f}{t[0]:>9.3f}{t[0] / t[1]:>7.2f}", flush=True
        )


def vit_forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def interleaved(
    check: Callable[[], object], limit: Callable[[], object], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median times of the check and of its bare passes, run alternately so that a change of load hits both."""
    limit()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for i, fn in enumerate((check, limit)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


if __name__ == "__main__":
    main()
