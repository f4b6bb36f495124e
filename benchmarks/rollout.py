"""Cost of AttentionRollout / GradientRollout on a ViT-B/16-sized torchvision model (random weights), CPU.

Prints, measured side by side in one run (the variants alternate within every repeat, so a change of machine load
hits all of them alike):

* rollout time / the model's plain forward (no_grad, PyTorch's fused attention fast path) — target <= 1.10;
* gradient rollout time / one ``captum.attr.Saliency`` pass — target <= 1.2;
* peak memory of one call (the resident set size sampled every millisecond, minus the size just before the
  call; each variant in a fresh process) of the plain forward, AttentionRollout, keeping every block's
  attention (``attention_maps``), GradientRollout and Saliency.

Usage::

    .venv/bin/python benchmarks/rollout.py                       # ViT-B/16, 224 px, batch 16
    .venv/bin/python benchmarks/rollout.py --batch 4 --repeats 2 # quicker

No optional comparison package is needed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from _peak import peak_of
from captum.attr import Saliency
from torchvision.models.vision_transformer import VisionTransformer

from captum_ext.attr import AttentionRollout, GradientRollout
from captum_ext.attr.attention import attention_maps

VARIANTS = ("forward", "rollout", "all_attention", "gradient_rollout", "saliency")


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VisionTransformer(
            image_size=args.size,
            patch_size=16,
            num_layers=args.layers,
            num_heads=12,
            hidden_dim=768,
            mlp_dim=3072,
            num_classes=1000,
        ).eval()
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
        x = torch.rand(args.batch, 3, args.size, args.size)
    return model, x


def run(variant: str, model: torch.nn.Module, x: torch.Tensor) -> None:
    target = torch.arange(x.shape[0]) % 1000
    if variant == "forward":
        with torch.no_grad():
            model(x)
    elif variant == "rollout":
        AttentionRollout(model).attribute(x)
    elif variant == "all_attention":
        attention_maps(model, x)
    elif variant == "gradient_rollout":
        GradientRollout(model).attribute(x, target=target)
    elif variant == "saliency":
        Saliency(model).attribute(x.clone().requires_grad_(), target=target)


def peak_of_call(variant: str, model: torch.nn.Module, x: torch.Tensor) -> float:
    """MiB above the resident size before the call, at the highest point sampled during it."""
    run(variant, model, x[:1])  # warm-up: allocator pools and lazy initialisation
    return peak_of(lambda: run(variant, model, x))[1]


def peak_child(args: argparse.Namespace, variant: str) -> float:
    """:func:`peak_of_call` of ``variant`` in a fresh interpreter, so no variant inherits another's pools."""
    cmd = [
        sys.executable,
        __file__,
        "--peak-of",
        variant,
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--layers",
        str(args.layers),
        "--threads",
        str(args.threads),
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-of", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x = build(args)

    if args.peak_of:
        print(json.dumps({"mib": peak_of_call(args.peak_of, model, x)}))
        return

    timed = ("forward", "rollout", "gradient_rollout", "saliency")
    for variant in timed:
        run(variant, model, x)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in timed}
    for _ in range(args.repeats):
        for variant in timed:
            start = time.perf_counter()
            run(variant, model, x)
            times[variant].append(time.perf_counter() - start)
    best = {v: min(t) for v, t in times.items()}
    print(
        f"ViT: {args.layers} layers, width 768, 12 heads, {args.size} px, batch {args.batch}, "
        f"{args.threads} threads, best of {args.repeats}"
    )
    for variant in timed:
        print(f"  {variant:<18} {best[variant]:8.3f} s   (all: {', '.join(f'{t:.3f}' for t in times[variant])})")
    print(f"rollout / plain forward:           {best['rollout'] / best['forward']:.3f}   (target <= 1.10)")
    print(f"gradient rollout / Saliency:       {best['gradient_rollout'] / best['saliency']:.3f}   (target <= 1.2)")

    peaks = {v: peak_child(args, v) for v in VARIANTS}
    print("peak memory of one call above the resident size before it (MiB, fresh process each):")
    for variant in VARIANTS:
        print(f"  {variant:<18} {peaks[variant]:8.1f}")
    print(f"rollout peak / plain forward peak: {peaks['rollout'] / max(peaks['forward'], 1e-9):.2f}")
    print(f"all-attention peak / rollout peak: {peaks['all_attention'] / max(peaks['rollout'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
