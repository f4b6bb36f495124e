"""Activation maximisation of 10 classes at once vs. one class at a time (same steps), on CPU.

The K images of one :class:`~captum_ext.features.ActivationMaximization` run never interact, so a batch of K
targets costs about one forward/backward per step instead of K. Prints the seconds per class of each mode and
their ratio (target: batched >= 3x faster per class), and the mean final logit of each mode (the same work is
done: both reach comparable activations).

With ``--figures DIR`` it also trains SmallCNN on the shortcut digits (as the ``trained_cnn`` test fixture:
15 epochs, seed 0; ``--weights PATH`` caches the state dict) and writes the pictures of ``docs/features.md``
with the numbers quoted there: high-frequency share of naive vs. regularised class images, logit drop under
2-pixel shifts without and with jitter, and Network Dissection's IoU of every ``features.relu3`` unit with the
shortcut tag, for the shortcut model and for the control model (``CleverHansDigits(control=True)``; cached at
``PATH.control``).

Run::

    .venv/bin/python benchmarks/features.py [--steps 64] [--repeats 3] [--threads 1] [--figures docs/img]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.nn import functional as F
from torchvision.utils import save_image

from captum_ext.data import CleverHansDigits
from captum_ext.features import (
    ActivationMaximization,
    concept_iou,
    feature_maps,
    first_layer_filters,
    top_activating_patches,
)
from captum_ext.models import SmallCNN, fit_classifier


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    # one thread by default: on a shared 2-core machine two OpenMP threads made these small ops 10-20x slower
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figures", default=None, help="folder for the docs pictures (trains SmallCNN first)")
    parser.add_argument("--weights", default=None, help="state-dict cache of the trained SmallCNN")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN().eval()
    classes = list(range(10))
    am = ActivationMaximization(model, (1, 32, 32), steps=args.steps)
    am.visualize(target=[0])  # warm-up
    batched, single = [], []
    for _ in range(args.repeats):  # interleaved, best of n: robust to other load on the machine
        batched.append(_time(lambda: am.visualize(target=classes)))
        single.append(_time(lambda: [am.visualize(target=c) for c in classes]))
    per_batched, per_single = min(batched) / len(classes), min(single) / len(classes)
    _, trace_b = am.visualize(target=classes, return_trace=True)
    trace_s = torch.cat([am.visualize(target=c, return_trace=True)[1] for c in classes], dim=1)
    print(f"SmallCNN 1x32x32, {args.steps} steps, 10 classes, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'mode':<22} {'s / class':>10} {'final logit (mean)':>20}")
    print(f"{'10 classes at once':<22} {per_batched:>10.4f} {float(trace_b[-1].mean()):>20.3f}")
    print(f"{'one class at a time':<22} {per_single:>10.4f} {float(trace_s[-1].mean()):>20.3f}")
    print(f"speed-up per class: {per_single / per_batched:.1f}x (target >= 3x)")
    if args.figures:
        figures(args.figures, args.weights)


def _high_frequency_share(images: torch.Tensor, cutoff: float = 0.25) -> float:
    """Share of the mean-removed spectral energy above ``cutoff`` cycles/pixel (as in tests/test_features.py)."""
    x = images.double() - images.double().mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs() ** 2
    fy, fx = torch.fft.fftfreq(x.shape[-2]), torch.fft.fftfreq(x.shape[-1])
    return float(power[..., (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() > cutoff].sum() / power.sum())


def _shift_drop(model, images: torch.Tensor, targets: list[int]) -> float:
    """Mean relative logit drop when the images move 2 pixels (zero fill) up, down, left or right."""
    rows = torch.arange(len(targets))
    padded = F.pad(images, (2, 2, 2, 2))
    with torch.no_grad():
        base = model(images)[rows, targets]
        moved = [
            model(padded[..., 2 - dy : 34 - dy, 2 - dx : 34 - dx])[rows, targets]
            for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2))
        ]
    return float((1 - torch.stack(moved).mean(0) / base).mean())


def _trained_cnn(weights: str | None, control: bool = False):
    model = SmallCNN()
    if weights and os.path.exists(weights):
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = fit_classifier(model, CleverHansDigits(control=control), max_epochs=15)
    if weights:
        torch.save(model.state_dict(), weights)
    return model.eval()


def figures(folder: str, weights: str | None) -> None:
    """Write the docs pictures of a trained SmallCNN to ``folder`` and print the numbers the docs quote."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    os.makedirs(folder, exist_ok=True)
    model = _trained_cnn(weights)
    data = CleverHansDigits()
    x, y, tagged = data.split("test")
    classes = list(range(10))

    save_image(first_layer_filters(model, scale=12), os.path.join(folder, "features_filters.png"))

    probe = x[(y == 0) & tagged][:1]
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 3, 3]})
    axes[0].imshow(probe[0, 0].numpy(), cmap="gray")
    axes[0].set_title("input (class 0, tagged)", fontsize=8)
    for ax, layer in zip(axes[1:], ("features.relu1", "features.relu2")):
        ax.imshow(feature_maps(model, layer, probe, scale=2)[0].permute(1, 2, 0).numpy())
        ax.set_title(f"{layer}: one tile per channel", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "features_feature_maps.png"), dpi=110)

    settings = {
        "naive ascent": {"l2": 0, "tv": 0, "jitter": 0, "blur_every": 0},
        "L2 + TV + jitter + blur (defaults)": {},
    }
    fig = Figure(figsize=(12, 2.9))
    axes = fig.subplots(2, 10)
    print("\nclass images of the trained SmallCNN, 256 steps, value_range (0, 1):")
    print(f"{'setting':<38} {'HF share':>9} {'shift drop':>11} {'final logit':>12}")
    for row, (name, kwargs) in enumerate(settings.items()):
        images, trace = ActivationMaximization(model, (1, 32, 32), value_range=(0.0, 1.0), **kwargs).visualize(
            target=classes, return_trace=True
        )
        print(
            f"{name:<38} {_high_frequency_share(images):>9.3f} {_shift_drop(model, images, classes):>11.3f} {float(trace[-1].mean()):>12.2f}"
        )
        for c in classes:
            axes[row, c].imshow(images[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, c].set_xticks([]), axes[row, c].set_yticks([])
            if row == 0:
                axes[row, c].set_title(f"class {c}", fontsize=8)
        axes[row, 0].set_ylabel("naive" if row == 0 else "regularised", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "features_activation_maximization.png"), dpi=110)

    masks = tagged[:, None, None] & data.region_mask[None]
    batches = [(x[i : i + 64], masks[i : i + 64]) for i in range(0, len(x), 64)]
    dissection = concept_iou(model, "features.relu3", batches, quantile=0.995, concepts=["tag"])
    ious, order = dissection.iou[:, 0].sort(descending=True)
    print(
        f"\nNetwork Dissection, features.relu3 vs the shortcut tag (test split, q=0.995): best unit {int(order[0])} "
        f"IoU {float(ious[0]):.3f}; next {float(ious[1]):.3f}; median {float(ious.median()):.3f}; "
        f"detectors (IoU > 0.04): {len(dissection.detectors)} of {len(ious)}"
    )
    control = _trained_cnn(f"{weights}.control" if weights else None, control=True)
    control_result = concept_iou(control, "features.relu3", batches, quantile=0.995, concepts=["tag"])
    control_iou = control_result.iou[:, 0].sort(descending=True).values
    print(
        f"control SmallCNN (tag independent of the label), same test images: best IoU {float(control_iou[0]):.3f}; "
        f"next {float(control_iou[1]):.3f}; median {float(control_iou.median()):.3f}; "
        f"units with IoU > 0.3: {int((control_iou > 0.3).sum())} vs {int((ious > 0.3).sum())} (shortcut model)"
    )
    fig = Figure(figsize=(8, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(control_iou)), control_iou.numpy(), color="lightgray", label="control model (sorted)")
    ax.bar(range(len(ious)), ious.numpy(), width=0.5, label="shortcut model")
    ax.legend(fontsize=7)
    ax.set_xticks(range(0, len(ious), 4), [str(int(u)) for u in order[::4]], fontsize=6)
    ax.set_xlabel("rank (each model sorted on its own); ticks: the shortcut model's unit", fontsize=8)
    ax.set_ylabel("IoU with the tag", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "features_concept_iou.png"), dpi=110)

    unit = int(order[0])
    top = top_activating_patches(model, "features.relu3", unit, [x[i : i + 64] for i in range(0, len(x), 64)], k=16)
    tagged_share = float(tagged[top.indices].float().mean())
    print(
        f"top 16 patches of unit {unit}: receptive field {top.receptive_field}, {tagged_share:.0%} from tagged images"
    )
    top.plot().savefig(os.path.join(folder, "features_top_patches.png"), dpi=110)


if __name__ == "__main__":
    main()
