"""Cost of the cascading model-randomisation test, measured side by side in one run.

Prints, on one model and one probe batch:
  1. (whole cascading test, Spearman only) / ((L + 1) x one attribution pass)   target <= 1.5
  2. the same with all four similarities and the noise floor (for information)
  3. Quantus 0.6.0 ``MPRT(layer_order="top_down")`` with Saliency / ((L + 1) passes), and Quantus / ours
     (target: ours >= 2x faster); "skipped: quantus not installed" without it.

With ``--findings`` it instead trains SmallCNN on the digits as the test fixture does and prints Adebayo's table
(cascading and independent, several methods; data randomisation on ``--train-images`` permuted labels), and
with ``--figures DIR`` saves the curve and the map grid of each method there.

Usage: .venv/bin/python benchmarks/sanity.py [--images 64] [--repeats 3] [--threads 2]
       .venv/bin/python benchmarks/sanity.py --findings [--figures docs/img] [--train-images 500]
       .venv/bin/python benchmarks/sanity.py --vit-findings   # rollout, gradient rollout, ... on TinyViT
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from captum_ext import Explainer
from captum_ext.models import SmallCNN
from captum_ext.sanity import (
    data_randomization_test,
    model_randomization_test,
    parameter_layers,
    train_on_random_labels,
)


def _interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, timed in interleaved rounds so that a change in machine load affects
    every contender alike (the machine is shared)."""
    for fn in functions.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # rotate the order each round
            fn = functions[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _quantus_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], object] | None:
    if not hasattr(np, "trapz"):  # Quantus 0.6.0 calls np.trapz, removed in NumPy 2.4
        np.trapz = np.trapezoid
    try:
        import quantus
    except ImportError:
        return None
    metric = quantus.MPRT(layer_order="top_down", disable_warnings=True, display_progressbar=False)
    x_np, y_np = x.numpy(), y.numpy()

    def run() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(
                model=model,
                x_batch=x_np,
                y_batch=y_np,
                a_batch=None,
                explain_func=quantus.explain,
                explain_func_kwargs={"method": "Saliency"},
                device="cpu",
                batch_size=len(y_np),
            )

    return run


def findings(images: int, train_images: int, figures: str | None) -> None:
    """Adebayo et al.'s model and data randomisation findings on SmallCNN trained on the digits."""
    import logging
    from pathlib import Path

    from captum_ext.data import CleverHansDigits
    from captum_ext.models import fit_classifier

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    digits = CleverHansDigits()
    torch.manual_seed(0)
    start = time.perf_counter()
    model = fit_classifier(SmallCNN(), digits, max_epochs=15)  # as tests/conftest.py's `trained_cnn`
    x_test, y_test, _ = digits.split("test")
    accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    print(f"SmallCNN trained 15 epochs: test accuracy {accuracy:.3f} ({time.perf_counter() - start:.0f} s)")
    probe = x_test[:images]
    methods = (
        "saliency",
        "guided_backprop",
        "gradcam",
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "random",
    )
    print(f"\nmodel randomisation, {images} test images, spearman_abs (first step = logits layer; last = all / conv1)")
    print(
        f"{'method':<22}{'casc. first':>12}{'casc. last':>12}{'indep. last':>12}{'noise floor':>12}  passed  reproducible"
    )
    for method in methods:
        cascading = model_randomization_test(model, method, probe)
        independent = model_randomization_test(model, method, probe, mode="independent", similarity=("spearman_abs",))
        sim = cascading.similarity["spearman_abs"]
        print(
            f"{method:<22}{sim[0]:>12.3f}{sim[-1]:>12.3f}{independent.similarity['spearman_abs'][-1]:>12.3f}"
            f"{cascading.noise_floor['spearman_abs']:>12.3f}  {str(cascading.passed):<6}  {cascading.reproducible}"
        )
        if figures and method in ("saliency", "guided_backprop", "gradcam"):
            Path(figures).mkdir(parents=True, exist_ok=True)
            cascading.plot("curve").savefig(Path(figures) / f"sanity_curve_{method}.png", dpi=110)
            cascading.plot("maps").savefig(Path(figures) / f"sanity_maps_{method}.png", dpi=110)
    x_train, y_train, _ = digits.split("train")
    start = time.perf_counter()
    random_model, train_accuracy, history = train_on_random_labels(
        model, (x_train[:train_images], y_train[:train_images])
    )
    print(
        f"\ndata randomisation: {train_images} training images, permuted labels, defaults (lr 3e-3, batch 16, "
        f"max 60 epochs): training accuracy {train_accuracy:.3f} after {len(history)} epochs "
        f"({time.perf_counter() - start:.0f} s)"
    )
    for method in ("saliency", "guided_backprop", "gradcam", "input_x_gradient"):
        result = data_randomization_test(model, method, probe, random_model=random_model)
        print(
            f"{method:<22} spearman_abs {result.similarity['spearman_abs'][0]:.3f}  ssim {result.similarity['ssim'][0]:.3f}"
            f"  passed {result.passed}"
        )


def vit_findings(images: int) -> None:
    """The cascading test on TinyViT trained as tests/conftest.py's `trained_vit`: rollout is class-agnostic."""
    import logging

    from captum_ext.data import CleverHansDigits
    from captum_ext.models import TinyViT, fit_classifier

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    digits = CleverHansDigits()
    torch.manual_seed(0)
    model = fit_classifier(TinyViT(), digits, max_epochs=40, lr=3e-3)
    x, y, _ = digits.split("test")
    print(f"TinyViT trained 40 epochs: test accuracy {float((model(x).argmax(1) == y).float().mean()):.3f}")
    print(f"{'method':<22}{'after head':>12}{'after all':>12}  passed")
    for method in ("rollout", "gradient_rollout", "saliency", "guided_backprop", "integrated_gradients"):
        sim = model_randomization_test(model, method, x[:images], y[:images], similarity=("spearman_abs",))
        curve = sim.similarity["spearman_abs"]
        print(f"{method:<22}{curve[0]:>12.3f}{curve[-1]:>12.3f}  {sim.passed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--findings", action="store_true", help="print Adebayo's findings table instead")
    parser.add_argument("--vit-findings", action="store_true", help="the cascading test on a trained TinyViT instead")
    parser.add_argument("--train-images", type=int, default=500)
    parser.add_argument("--figures", default=None, help="directory for the findings' PNG figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.findings:
        findings(args.images, args.train_images, args.figures)
        return
    if args.vit_findings:
        vit_findings(args.images)
        return

    torch.manual_seed(0)
    model = SmallCNN().eval()  # the cost does not depend on the weights
    x = torch.rand(args.images, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    layers = len(parameter_layers(model, x))
    explainer = Explainer("saliency")

    functions: dict[str, Callable[[], object]] = {
        "passes": lambda: [explainer.attribute(model, x, y) for _ in range(layers + 1)],
        "ours": lambda: model_randomization_test(model, explainer, x, y, similarity=("spearman_abs",), keep_maps=0),
        "ours_all": lambda: model_randomization_test(model, explainer, x, y, keep_maps=0),
    }
    quantus_run = _quantus_run(model, x, y)
    if quantus_run is not None:
        functions["quantus"] = quantus_run
    t = _interleaved_medians(functions, args.repeats)
    budget = t["passes"]

    print(f"SmallCNN, {args.images} images, L = {layers} layers, {args.threads} threads, median of {args.repeats}")
    print(f"(L + 1) saliency passes, back to back      {budget * 1e3:8.1f} ms")
    print(
        f"ours, cascading, spearman_abs only         {t['ours'] * 1e3:8.1f} ms   ratio {t['ours'] / budget:5.2f}  (target <= 1.5)"
    )
    print(
        f"ours, cascading, all four similarities     {t['ours_all'] * 1e3:8.1f} ms   ratio {t['ours_all'] / budget:5.2f}"
    )
    if quantus_run is None:
        print("Quantus MPRT: skipped: quantus not installed")
        return
    print(
        f"Quantus 0.6.0 MPRT top_down, Saliency      {t['quantus'] * 1e3:8.1f} ms   ratio {t['quantus'] / budget:5.2f}"
    )
    print(f"Quantus / ours (spearman only)             {t['quantus'] / t['ours']:8.2f}x   (target >= 2)")


if __name__ == "__main__":
    main()
