"""``captum-ext demo``: the whole story on the embedded digits, in a few minutes on a laptop CPU.

1. Train SmallCNN on :class:`~captum_ext.data.CleverHansDigits` (with its planted shortcut tag) with every monitor
   attached and a ``TensorBoardLogger`` in ``<out>/tensorboard``; train a control model (tag independent of label).
2. Sanity checks (cascading model randomisation) for saliency, guided backprop and Grad-CAM.
3. A fast ROAR (few fractions, one repeat) for saliency and SmoothGrad² against random.
4. The Clever Hans audit, with the tag's region given and in discovery mode, against the control.
5. Attention rollout on a TinyViT trained on the same data.
6. What the CNN learned: first-layer filters and class visualisations.

Writes ``<out>/report.html`` (self-contained), ``<out>/summary.json`` and the TensorBoard logs, and prints a
summary table and the ``tensorboard`` command. Each stage shows progress.

Example::

    >>> from captum_ext.demo import run_demo
    >>> summary = run_demo("runs/demo", fast=True)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from pytorch_lightning.loggers import TensorBoardLogger

from captum_ext import Explainer, plots
from captum_ext._context import eval_mode
from captum_ext._io import write_json_atomic, write_text_atomic
from captum_ext.attr import AttentionRollout
from captum_ext.audit import CleverHansAudit
from captum_ext.callbacks import (
    AttributionMonitor,
    EmbeddingProjector,
    FilterMonitor,
    RandomizationMonitor,
    ShortcutMonitor,
)
from captum_ext.data import CleverHansDigits
from captum_ext.evaluation import roar
from captum_ext.evaluation._common import accuracy, predict
from captum_ext.failures import failure_modes
from captum_ext.features import ActivationMaximization, activation_atlas, first_layer_filters
from captum_ext.models import SmallCNN, TinyViT, fit_classifier, small_cnn_module
from captum_ext.report import Report
from captum_ext.sanity import model_randomization_test

__all__ = ["run_demo", "print_summary"]


def _stage(name: str) -> float:
    print(f"[captum-ext demo] {name} ...", flush=True)
    return time.perf_counter()


def _train_monitored(datamodule: CleverHansDigits, out: Path, epochs: int, seed: int, progress: bool) -> tuple:
    logger = TensorBoardLogger(save_dir=str(out), name="tensorboard")
    monitors = [
        AttributionMonitor(explainers=("saliency", "input_x_gradient"), num_samples=16),
        ShortcutMonitor("input_x_gradient", region=datamodule.region_mask, threshold=3.0, patience=2),
        RandomizationMonitor("saliency", num_samples=16),
        EmbeddingProjector(max_samples=128),
        FilterMonitor(every_n_epochs=max(1, epochs // 2)),
    ]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SmallCNN()
    fit_classifier(
        model, datamodule, max_epochs=epochs, seed=seed, logger=logger, callbacks=monitors, enable_progress_bar=progress
    )
    return model, logger


def run_demo(out: str | os.PathLike = "runs/demo", seed: int = 0, fast: bool = False, progress: bool = True) -> dict:
    """Run the demo and return its summary (also written to ``<out>/summary.json``).

    Args:
        out: output folder. Default ``runs/demo``.
        seed: seeds data, models and every random step. Default 0.
        fast: fewer epochs, fractions and probe images (the mode ``make test`` runs). Default False.
        progress: show progress bars. Default True.

    Returns:
        The summary dict: accuracies, verdicts, and the paths of what was written.
    """
    with _quiet_lightning():
        return _run_demo(out, seed, fast, progress)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's per-fit info lines (accelerators, tips, "fit stopped") and its own deprecation and batch-count
    warnings are hidden while the demo runs, so its ~10 trainings do not drown the stages; the demo's own findings
    (e.g. ShortcutMonitor's warning) still show. Everything is restored afterwards."""
    names = (
        "pytorch_lightning.utilities.rank_zero",
        "lightning.pytorch.utilities.rank_zero",
        "lightning_fabric.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    )
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            warnings.filterwarnings(
                "ignore", message=r"The number of training batches .* is smaller than the logging interval"
            )
            warnings.filterwarnings("ignore", message=r".*does not have many workers")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _run_demo(out: str | os.PathLike, seed: int, fast: bool, progress: bool) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = 8 if fast else 15
    data, control_data = CleverHansDigits(seed=seed), CleverHansDigits(seed=seed, control=True)
    report = Report("captum-ext demo: can these explanations be trusted?")
    summary: dict = {"seed": seed, "fast": fast, "epochs": epochs, "shortcut_class": data.shortcut_class}

    start = _stage("1/6 training SmallCNN with the monitors attached")
    model, logger = _train_monitored(data, out, epochs, seed, progress)
    control = fit_classifier(SmallCNN(), control_data, max_epochs=epochs, seed=seed)
    x, y, _ = data.split("test")
    tagged, y0 = data.shortcut_test_images(tagged=True)
    clean, _ = data.shortcut_test_images(tagged=False)
    summary.update(
        test_accuracy=accuracy(model, [(x, y)]),
        shortcut_class_accuracy_tagged=accuracy(model, [(tagged, y0)]),
        shortcut_class_accuracy_untagged=accuracy(model, [(clean, y0)]),
        tensorboard_logdir=str(out / "tensorboard"),
        tensorboard_version=logger.log_dir,
    )
    report.add_section(
        "Training",
        text=f"SmallCNN, {epochs} epochs on CleverHansDigits (tag on 90% of the zeros). Test accuracy "
        f"{summary['test_accuracy']:.3f}; on the zeros {summary['shortcut_class_accuracy_tagged']:.3f} with the tag and "
        f"{summary['shortcut_class_accuracy_untagged']:.3f} with it removed. Maps, metrics and the shortcut ratio of "
        f"every epoch are in TensorBoard ({summary['tensorboard_logdir']}). ({time.perf_counter() - start:.0f} s)",
        figures=[
            plots.overlay_grid(
                x[:8],
                {name: Explainer(name).saliency(model, x[:8], y[:8]) for name in ("saliency", "input_x_gradient")},
            )
        ],
    )

    failures = failure_modes(model, "input_x_gradient", x, y, limit=8)
    report.add_section(
        "Failure modes",
        text=f"The first {len(failures.indices)} misclassified test images (of {int((_predictions(model, x) != y).sum())}), each "
        "with input x gradient for the true class and for the class the model chose: what it looked at when it went wrong.",
        figures=[failures.plot()] if len(failures.indices) else [],
    )

    start = _stage("2/6 sanity checks (cascading model randomisation)")
    probe = x[: 16 if fast else 64]
    sanity = {}
    for name in ("saliency", "guided_backprop", "gradcam"):
        result = model_randomization_test(model, name, probe, seed=seed)
        sanity[name] = {"passed": result.passed, "spearman_abs_after_top_layer": result.similarity["spearman_abs"][0]}
        report.add_section(
            f"Sanity check: {name}",
            text="Spearman rank correlation of |map| between the trained model and copies with layers randomised "
            "top-down (Adebayo et al. 2018). A method whose map survives randomisation does not show what was learned.",
            table=[
                {"layer": layer, **{k: v[i] for k, v in result.similarity.items()}}
                for i, layer in enumerate(result.layers)
            ],
            verdict=("passed" if result.passed else "FAILED: the map does not depend on the weights", result.passed),
            figures=[result.plot()],
        )
    summary["sanity"] = sanity
    print(f"    done in {time.perf_counter() - start:.0f} s")

    start = _stage("3/6 fast ROAR (remove top pixels, retrain)")
    result = roar(
        small_cnn_module,
        CleverHansDigits(seed=seed, shortcut_class=None),
        [Explainer("saliency")] if fast else [Explainer("saliency"), Explainer("smoothgrad_sq")],
        fractions=(0.5,) if fast else (0.3, 0.7),
        repeats=1,
        trainer_kwargs={"max_epochs": 5 if fast else 10},
        cache_dir=out / "roar_cache",
        seed=seed,
        progress=progress,
    )
    result.to_json(out / "roar.json")
    summary["roar"] = {
        "baseline_accuracy": result.baseline_accuracy,
        "accuracy": {k: {str(f): v for f, v in d.items()} for k, d in result.accuracy.items()},
    }
    report.add_section(
        "ROAR",
        text="Test accuracy after removing each method's top pixels (filled with the training mean) and retraining "
        "(Hooker et al. 2019); lower than random means the method found pixels the task needs. One repeat: indicative "
        "only. Caveat: the shape of the removed region can itself carry the class (Rong et al. 2022), so a method can "
        "score above random after removal; ROAD's noisy-linear imputation reduces that leak.",
        table=[{"method": m, **{f"{f:g}": sum(v) / len(v) for f, v in d.items()}} for m, d in result.accuracy.items()],
        figures=[result.plot()],
    )
    print(f"    done in {time.perf_counter() - start:.0f} s")

    start = _stage("4/6 Clever Hans audit (region given, then discovered)")
    audit_x, audit_y = (x[:200], y[:200]) if fast else (x, y)
    audits = {}
    for mode, region in (("region", data.region_mask), ("discovery", None)):
        audit = CleverHansAudit("input_x_gradient", region=region).run(model, (audit_x, audit_y), control=control)
        audits[mode] = audit.flagged
        write_text_atomic(audit.to_html(), out / f"audit_{mode}.html")
        report.add_section(
            f"Clever Hans audit ({mode})",
            text="Per class: share of positive input x gradient relevance in the region vs. its area, compared with a "
            "control model trained with the tag independent of the label, and proven by intervention (impute the region: "
            "accuracy drop; paste it on other classes: flip rate).",
            table=[
                {"class": c, **{k: v for k, v in entry.items() if isinstance(v, (int, float, bool))}}
                for c, entry in audit.classes.items()
            ],
            verdict=(f"flagged classes: {audit.flagged}" if audit.flagged else "nothing flagged", not audit.flagged),
            figures=[audit.plot()],
        )
    summary["audit_flagged"] = audits
    print(f"    done in {time.perf_counter() - start:.0f} s")

    start = _stage("5/6 attention rollout on a TinyViT")
    vit = fit_classifier(TinyViT(), data, max_epochs=20 if fast else 40, lr=3e-3, seed=seed)
    rollout = AttentionRollout(vit).attribute(tagged)[:, 0]
    share = float(((rollout * data.region_mask).sum((1, 2)) / rollout.sum((1, 2))).mean())
    summary["rollout_tag_mass"] = share
    report.add_section(
        "ViT attention rollout",
        text=f"Rollout (Abnar & Zuidema 2020) of a TinyViT on tagged zeros: on average {share:.2f} of the map's mass lies "
        f"in the tag, which covers {float(data.region_mask.float().mean()):.3f} of the image. The number is the aggregate "
        "over all tagged test zeros; the pictures are the first eight, not chosen.",
        figures=[plots.overlay_grid(tagged[:8], {"rollout": rollout[:8]})],
    )
    print(f"    done in {time.perf_counter() - start:.0f} s")

    start = _stage("6/6 what the CNN learned")
    classes = ActivationMaximization(model, tuple(x.shape[1:]), steps=64 if fast else 256, seed=seed).visualize(
        target=list(range(10))
    )
    atlas_images = 120 if fast else 300
    atlas = activation_atlas(
        model,
        "features.relu3",
        x[:atlas_images],
        y[:atlas_images],
        grid=4 if fast else 6,
        steps=16 if fast else 128,
        seed=seed,
    )
    logger.experiment.add_figure("features/activation_atlas", atlas.plot(), global_step=0)
    report.add_section(
        "Representation views",
        text="First-layer filters; images that maximise each class logit (activation maximisation with L2, "
        "total-variation, jitter and blur regularisers); and the activation atlas of the last convolution (Carter et "
        "al. 2019): one activation vector per test image laid out by t-SNE, each cell's mean vector visualised and "
        "titled with the class its activations support most (also in TensorBoard).",
        figures=[
            _image_row(first_layer_filters(model)),
            _image_row(classes, [f"class {k}" for k in range(10)]),
            atlas.plot(),
        ],
    )
    print(f"    done in {time.perf_counter() - start:.0f} s")

    summary["report"] = str(report.write(out / "report.html"))
    write_json_atomic(summary, out / "summary.json", indent=2, sort_keys=True)
    return summary


def _predictions(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return predict(model, x)


def _image_row(images: torch.Tensor, titles: list[str] | None = None):
    """A figure with one panel per (C, H, W) image (or per image of an (N, ...) grid tensor)."""
    from matplotlib.figure import Figure

    images = images if images.dim() == 4 else images[None]
    fig = Figure(figsize=(1.2 * len(images) + 0.4, 1.6))
    for i, ax in enumerate(fig.subplots(1, len(images), squeeze=False)[0]):
        ax.imshow(plots._image(images[i]), cmap="gray")
        ax.set_axis_off()
        if titles:
            ax.set_title(titles[i], fontsize=7)
    return fig


def print_summary(summary: dict) -> None:
    """Print the demo summary as a short table and the TensorBoard command."""
    c = summary["shortcut_class"]
    rows = [
        ("test accuracy", f"{summary['test_accuracy']:.3f}"),
        (
            f"class {c} accuracy, tagged / tag removed",
            f"{summary['shortcut_class_accuracy_tagged']:.3f} / {summary['shortcut_class_accuracy_untagged']:.3f}",
        ),
    ]
    rows += [(f"sanity check, {name}", "passed" if v["passed"] else "FAILED") for name, v in summary["sanity"].items()]
    rows += [("ROAR baseline accuracy", f"{summary['roar']['baseline_accuracy']:.3f}")]
    rows += [
        (f"ROAR accuracy, {m}", ", ".join(f"{f}: {sum(v) / len(v):.3f}" for f, v in d.items()))
        for m, d in summary["roar"]["accuracy"].items()
    ]
    rows += [
        (f"Clever Hans audit ({mode})", f"flagged {flagged}") for mode, flagged in summary["audit_flagged"].items()
    ]
    rows += [("rollout mass in the tag (TinyViT)", f"{summary['rollout_tag_mass']:.3f}")]
    width = max(len(name) for name, _ in rows)
    print("\ncaptum-ext demo summary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"\nreport:  {summary['report']}")
    print(f"summary: {Path(summary['report']).parent / 'summary.json'}")
    print(f"TensorBoard: tensorboard --logdir {summary['tensorboard_logdir']}")
