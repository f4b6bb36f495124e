"""The shortcut zoo's table (issue #23): does the Clever Hans audit's discovery find each planted shortcut on a
trained torchvision ResNet-18 and a small torchvision ViT, and does it stay quiet on clean classes and on a model
trained without the shortcut?

For each shortcut kind of :func:`captum_ext.data.shortcut_images` a ResNet-18 (``weights=None``) and a ViT (patch 8,
4 layers, width 96) are trained from scratch at 64 px on 900 images (the shortcut on 90% of class 0, none on the
others), and a control of each on the shortcut-free ``"none"`` data. Each explainer audits 300 test images in
discovery mode (no region given). Per row: how much the model reads the shortcut (``reliance``: the share of other
classes' images it calls class 0 once the shortcut is planted on them, less the share without), whether class 0 is
flagged, the IoU of its discovered box with the true
region's box (the frame's own pixels, since its box is the whole image; ``iou_pixels`` in the JSON is against the
shortcut's pixels for every fixed kind), the reason the audit gives, the clean classes flagged (false flags) and what the
control model flags on the same images.

Usage::

    .venv/bin/python benchmarks/shortcut_zoo.py                         # every kind, ~40 min on 2 cores
    .venv/bin/python benchmarks/shortcut_zoo.py --kinds patch logo --models resnet18
    .venv/bin/python benchmarks/shortcut_zoo.py --figure docs/img/shortcut_zoo.png

Trained weights are cached in ``--cache`` (default ``.zoo-cache``), so a second run only audits.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
import torchvision
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from captum_ext import Explainer
from captum_ext.audit import AuditReport, CleverHansAudit
from captum_ext.boxes import box_to_mask
from captum_ext.data import SHORTCUT_KINDS, ShortcutImages, shortcut_images

EXPLAINERS = {
    "resnet18": {
        "input_x_gradient": lambda: Explainer("input_x_gradient"),
        "integrated_gradients": lambda: Explainer("integrated_gradients", n_steps=16),
        "gradcam": lambda: Explainer("gradcam"),
        "occlusion": lambda: Explainer("occlusion"),
    },
    "vit": {
        "rollout": lambda: Explainer("rollout"),
        "input_x_gradient": lambda: Explainer("input_x_gradient"),
    },
}


def build(name: str, size: int) -> torch.nn.Module:
    if name == "resnet18":
        return torchvision.models.resnet18(weights=None, num_classes=3)
    return torchvision.models.VisionTransformer(
        image_size=size, patch_size=8, num_layers=4, num_heads=4, hidden_dim=96, mlp_dim=192, num_classes=3
    )


def trained(name: str, kind: str, size: int, cache: Path, epochs: int, n: int) -> torch.nn.Module:
    """``name`` trained from scratch on ``n`` images of ``kind`` (seed 0), cached by (name, kind, size, epochs, n)."""
    path = cache / f"{name}_{kind}_{size}px_{epochs}ep_{n}.pt"
    torch.manual_seed(0)
    model = build(name, size)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    data = shortcut_images(kind, n=n, size=size, seed=0)
    lr = 1e-3 if name == "resnet18" else 3e-4
    optimiser = torch.optim.Adam(model.parameters(), lr)
    order = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=order).split(32):
            loss = torch.nn.functional.cross_entropy(model(data.images[batch]), data.labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    print(f"trained {name} on {kind}: {time.perf_counter() - start:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def audit(explainer: Explainer, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> AuditReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. constant maps of a method on a model that ignores a class
        return CleverHansAudit(explainer).run(model, (images, labels))


def iou(box: tuple[int, int, int, int] | None, truth: torch.Tensor | None) -> float | None:
    if box is None or truth is None:
        return None
    found = box_to_mask(box, (truth.shape[0], truth.shape[1]))
    return float((found & truth).sum() / (found | truth).sum())


def reliance(model: torch.nn.Module, kind: str, size: int) -> float:
    """How much the model reads the shortcut: the share of the other classes' test images it predicts as class 0 with
    the shortcut planted on every one of them, less the share without (same shapes and backgrounds)."""
    tagged = shortcut_images(kind, n=300, size=size, seed=99, p_other=1.0)
    clean = shortcut_images("none", n=300, size=size, seed=99)
    others = clean.labels != 0
    with torch.no_grad():
        with_cue = (model(tagged.images[others]).argmax(1) == 0).double().mean()
        without = (model(clean.images[others]).argmax(1) == 0).double().mean()
    return float(with_cue - without)


def truth(zoo: ShortcutImages) -> torch.Tensor | None:
    """What a discovered box is scored against: the shortcut's bounding box; the frame's pixels (its box is the whole
    image); None where there is no fixed region (logo, tint)."""
    if zoo.region is None or zoo.box is None:
        return None
    return zoo.region if zoo.kind == "frame" else box_to_mask(zoo.box, (zoo.region.shape[0], zoo.region.shape[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=[k for k in SHORTCUT_KINDS if k != "none"])
    parser.add_argument("--models", nargs="+", default=list(EXPLAINERS), choices=list(EXPLAINERS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n", type=int, default=900)
    parser.add_argument("--cache", type=Path, default=Path(".zoo-cache"))
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--figure", type=Path, default=None, help="class 0's maps with the true and found boxes")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, panels = [], []
    for model_name in args.models:
        control = trained(model_name, "none", args.size, args.cache, args.epochs, args.n)
        for kind in args.kinds:
            model = trained(model_name, kind, args.size, args.cache, args.epochs, args.n)
            test = shortcut_images(kind, n=300, size=args.size, seed=99)
            with torch.no_grad():
                accuracy = float((model(test.images).argmax(1) == test.labels).double().mean())
            uses = reliance(model, kind, args.size)
            for explainer_name, make in EXPLAINERS[model_name].items():
                start = time.perf_counter()
                report = audit(make(), model, test.images, test.labels)
                on_control = audit(make(), control, test.images, test.labels)
                zero = report.classes[0]
                row = {
                    "model": model_name,
                    "kind": kind,
                    "accuracy": round(accuracy, 3),
                    "reliance": round(uses, 3),
                    "explainer": explainer_name,
                    "flagged": 0 in report.flagged,
                    "iou": iou(zero.get("region"), truth(test)),
                    "iou_pixels": iou(zero.get("region"), test.region),
                    "region": zero.get("region"),
                    "false_flags": [c for c in report.flagged if c != 0],
                    "control_flags": on_control.flagged,
                    "reason": zero["reason"],
                    "seconds": round(time.perf_counter() - start, 1),
                }
                rows.append(row)
                panels.append((row, report.class_maps[0], truth(test)))
                shown = "-" if row["iou"] is None else f"{row['iou']:.2f}"
                print(
                    f"| {model_name} | {kind} | {accuracy:.2f} | {uses:+.2f} | {explainer_name} | "
                    f"{'yes' if row['flagged'] else 'no'}"
                    f" | {shown} | {row['false_flags']} | {row['control_flags']} | {row['reason']} |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.figure:
        draw(panels).savefig(args.figure, dpi=80, bbox_inches="tight")


def draw(panels: list) -> Figure:
    """Class 0's mean map per (model, kind, explainer): the true region in cyan, the found box in red."""
    columns = 6
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(2.0 * columns, 2.2 * rows))
    for i, (row, mean_map, truth) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(mean_map.numpy(), cmap="inferno")
        for mask, colour in ((truth, "cyan"), (None if row["region"] is None else row["region"], "red")):
            if mask is None:
                continue
            if isinstance(mask, tuple):
                x0, y0, x1, y1 = mask
            else:
                ys, xs = torch.nonzero(mask, as_tuple=True)
                x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2))
        verdict = "FLAGGED" if row["flagged"] else "not flagged"
        ax.set_title(f"{row['model']} {row['kind']}\n{row['explainer']}: {verdict}", fontsize=7)
        ax.set_axis_off()
    return fig


if __name__ == "__main__":
    main()
