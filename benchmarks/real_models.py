"""Time and peak memory of every registered method, the faithfulness metrics, ROAD, the sanity check and the audit
on torchvision ResNet-50 and ViT-B/16 (``weights=None``) at 224 px: does each run with its defaults at real sizes?

Each measurement runs in a fresh process (no allocator pool is inherited): one warm-up forward of one image, then the
call, timed; the peak is the highest resident set size sampled every millisecond during the call minus the size just
before it (on CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before it). The first row of each model,
``forward``, is the model's own no-grad forward of the batch; every other row is printed with its ratio to it.

Targets (issue #13): every method runs at batch 16 within 4 GB above the model's own forward; occlusion finishes a
batch in minutes. The callbacks' per-epoch cost is the sum of their explainers and metrics on ``num_samples`` probe
images (``benchmarks/callbacks.py`` measures it against Captum).

Usage::

    .venv/bin/python benchmarks/real_models.py                      # both models, CPU, batch 2 (~25 min)
    .venv/bin/python benchmarks/real_models.py --batch 16           # the target size (hours on 2 cores)
    .venv/bin/python benchmarks/real_models.py --device cuda        # batch 16 on a GPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from _peak import peak_of

from captum_ext import Explainer
from captum_ext.audit import CleverHansAudit
from captum_ext.evaluation import road
from captum_ext.explainer import METHODS
from captum_ext.metrics import DeletionAUC, InsertionAUC
from captum_ext.sanity import model_randomization_test

METRICS = ("deletion_auc", "insertion_auc", "road", "sanity", "audit")
SANITY_LAYERS = {
    "resnet50": ["fc", "layer4", "layer3", "layer2", "layer1", "conv1"],
    "vit_b_16": ["heads", "encoder.layers.encoder_layer_11", "encoder.layers.encoder_layer_6", "conv_proj"],
}


def build(name: str, size: int, batch: int, device: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if name == "resnet50":
            model = torchvision.models.resnet50(weights=None)
        else:
            model = torchvision.models.vit_b_16(weights=None, image_size=size)
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
        x = torch.rand(batch, 3, size, size)
        target = torch.arange(batch) % 1000
    return model.eval().to(device), x.to(device), target.to(device)


def methods_for(name: str) -> list[str]:
    rollouts = ("rollout", "gradient_rollout")
    cams = ("gradcam", "guided_gradcam")
    return [m for m in METHODS if m != "random" and (m not in rollouts if name == "resnet50" else m not in cams)]


def task(item: str, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, name: str) -> Callable[[], object]:
    if item == "forward":

        def forward() -> None:
            with torch.no_grad():
                model(x)

        return forward
    if item in METHODS:
        return lambda: Explainer(item).attribute(model, x, target)
    saliency = Explainer("saliency").attribute(model, x, target)
    if item in ("deletion_auc", "insertion_auc"):
        metric = (DeletionAUC if item == "deletion_auc" else InsertionAUC)()
        return lambda: metric.update(model, x, saliency, target)
    if item == "road":
        return lambda: road(model, [(x, target)], "saliency", fractions=(0.1, 0.5, 0.9))
    if item == "sanity":
        return lambda: model_randomization_test(
            model, "saliency", x, target, layers=SANITY_LAYERS[name], similarity=("spearman_abs",)
        )
    region = torch.zeros(x.shape[-2:], dtype=torch.bool)
    region[:24, :24] = True
    return lambda: CleverHansAudit(
        "input_x_gradient", region=region, flip_images=x.shape[0], batch_size=x.shape[0]
    ).run(model, (x.cpu(), target.cpu()))


def measure(call: Callable[[], object], device: str) -> dict[str, float]:
    """Seconds and MiB above the memory in use just before the call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        return {"s": time.perf_counter() - start, "mib": (torch.cuda.max_memory_allocated() - before) / 2**20}
    seconds, mib = peak_of(call)
    return {"s": seconds, "mib": mib}


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, x, target = build(args.model, args.size, args.batch, args.device)
    with torch.no_grad():
        model(x[:1])  # warm-up: allocator pools, lazy initialisation
    try:
        result = measure(task(args.measure, model, x, target, args.model), args.device)
    except (ValueError, TypeError, RuntimeError) as err:
        result = {"error": str(err).splitlines()[0][:110]}
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"], choices=["resnet50", "vit_b_16"])
    parser.add_argument("--items", nargs="+", help="methods / metrics to measure (default all)")
    parser.add_argument("--batch", type=int, help="images per call (default 16 on a GPU, 2 on the CPU)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch is None:
        args.batch = 16 if args.device.startswith("cuda") else 2
    if args.measure:
        child(args)
        return
    machine = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"{args.size} px, batch {args.batch}, {machine}; each row a fresh process")
    for name in args.models:
        items = ["forward", *(args.items or [*methods_for(name), *METRICS])]
        print(f"\n{name}\n  {'what':<22}{'seconds':>10}{'x forward':>11}{'peak MiB':>11}{'x forward':>11}")
        reference: dict[str, float] = {}
        for item in items:
            cmd = [
                sys.executable,
                __file__,
                "--model",
                name,
                "--measure",
                item,
                "--batch",
                str(args.batch),
                "--size",
                str(args.size),
                "--device",
                args.device,
                "--threads",
                str(args.threads),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"  {item:<22}failed: {done.stderr.strip().splitlines()[-1][:100]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if "error" in result:
                print(f"  {item:<22}refused: {result['error']}")
                continue
            reference = reference or result
            print(
                f"  {item:<22}{result['s']:>10.2f}{result['s'] / reference['s']:>11.1f}"
                f"{result['mib']:>11.0f}{result['mib'] / max(reference['mib'], 1.0):>11.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
