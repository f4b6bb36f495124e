"""``captum-ext demo``: the whole story on the embedded digits, in under a minute on a laptop CPU.

1. Train SmallCNN on :class:`~captum_ext.data.CleverHansDigits` (with its planted shortcut tag) with every monitor
   attached and a ``TensorBoardLogger`` in ``<out>/tensorboard``; train a control model (tag independent of label).
2. Sanity checks (cascading model randomisation) for saliency, guided backprop and Grad-CAM.
3. Faithfulness: ROAD in both orders for three methods against random, and a short ROAR that shows why ROAR alone
   misleads (the removed region's shape gives the class away).
4. The Clever Hans audit, with the tag's region given and in discovery mode, against the control.
5. Attention rollout on a TinyViT trained on the same data.
6. What the CNN learned: first-layer filters, class visualisations and the activation atlas.

Writes ``<out>/report.html`` (self-contained, with contents), ``<out>/summary.json`` and the TensorBoard logs, and
prints a summary table and the ``tensorboard`` command. Each stage prints its name and time.

Example::

    >>> from captum_ext.demo import run_demo
    >>> summary = run_demo("runs/demo", fast=True)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ext import Explainer, plots
from captum_ext._context import eval_mode
from captum_ext._io import write_json_atomic, write_text_atomic
from captum_ext._model import accuracy, predict
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
from captum_ext.evaluation import road, road_agreement, road_figure, roar
from captum_ext.failures import failure_modes
from captum_ext.features import ActivationMaximization, activation_atlas, first_layer_filters
from captum_ext.models import SmallCNN, TinyViT, fit_classifier, small_cnn_module
from captum_ext.report import Report
from captum_ext.sanity import model_randomization_test

__all__ = ["run_demo", "print_summary"]

ROAD_METHODS = ("saliency", "input_x_gradient", "gradcam")


def _train_monitored(datamodule: CleverHansDigits, out: Path, epochs: int, seed: int, progress: bool) -> tuple:
    logger = TensorBoardLogger(save_dir=str(out), name="tensorboard")
    every = 1 if epochs < 8 else 2  # the maps, sanity and embeddings every other epoch; the shortcut every epoch
    monitors = [
        AttributionMonitor(("saliency", "input_x_gradient"), num_samples=16, every_n_epochs=every),
        ShortcutMonitor("input_x_gradient", datamodule.region_mask, threshold=3.0, patience=2),
        RandomizationMonitor("saliency", num_samples=16, every_n_epochs=every),
        EmbeddingProjector(num_samples=128, every_n_epochs=every),
        FilterMonitor(every_n_epochs=max(1, epochs // 2)),
    ]
    model = _seeded(SmallCNN, seed)
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


@dataclass
class _Demo:
    """What the stages share: settings, data, the trained models and the report and summary being filled."""

    out: Path
    seed: int
    fast: bool
    progress: bool
    data: CleverHansDigits
    report: Report
    summary: dict[str, Any]
    epochs: int
    x: torch.Tensor = field(init=False)
    y: torch.Tensor = field(init=False)
    model: nn.Module = field(init=False)
    control: nn.Module = field(init=False)
    logger: TensorBoardLogger = field(init=False)

    def __post_init__(self) -> None:
        self.x, self.y, _ = self.data.split("test")


def _run_demo(out: str | os.PathLike, seed: int, fast: bool, progress: bool) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = 4 if fast else 10
    data = CleverHansDigits(seed=seed)
    demo = _Demo(
        out=out,
        seed=seed,
        fast=fast,
        progress=progress,
        data=data,
        report=Report("captum-ext demo: can these explanations be trusted?"),
        summary={"seed": seed, "fast": fast, "epochs": epochs, "shortcut_class": data.shortcut_class},
        epochs=epochs,
    )
    for i, (name, stage) in enumerate(STAGES, start=1):
        print(f"[captum-ext demo] {i}/{len(STAGES)} {name} ...", flush=True)
        start = time.perf_counter()
        stage(demo)
        print(f"    done in {time.perf_counter() - start:.0f} s", flush=True)
    demo.summary["report"] = str(demo.report.write(out / "report.html"))
    write_json_atomic(demo.summary, out / "summary.json", indent=2, sort_keys=True)
    return demo.summary


def _training(demo: _Demo) -> None:
    """The monitored SmallCNN (TensorBoard) and its control; accuracies with and without the tag; failure gallery."""
    demo.model, demo.logger = _train_monitored(demo.data, demo.out, demo.epochs, demo.seed, demo.progress)
    demo.control = fit_classifier(
        _seeded(SmallCNN, demo.seed),
        CleverHansDigits(seed=demo.seed, control=True),
        max_epochs=demo.epochs,
        seed=demo.seed,
    )
    model, x, y, data = demo.model, demo.x, demo.y, demo.data
    tagged, y0 = data.shortcut_test_images(tagged=True)
    clean, _ = data.shortcut_test_images(tagged=False)
    summary = demo.summary
    summary.update(
        test_accuracy=accuracy(model, [(x, y)]),
        shortcut_class_accuracy_tagged=accuracy(model, [(tagged, y0)]),
        shortcut_class_accuracy_untagged=accuracy(model, [(clean, y0)]),
        tensorboard_logdir=str(demo.out / "tensorboard"),
        tensorboard_version=demo.logger.log_dir,
    )
    demo.report.add_section(
        "Training",
        text=f"SmallCNN, {demo.epochs} epochs on CleverHansDigits (tag on 90% of the zeros). Test accuracy "
        f"{summary['test_accuracy']:.3f}; on the zeros {summary['shortcut_class_accuracy_tagged']:.3f} with the tag "
        f"and {summary['shortcut_class_accuracy_untagged']:.3f} with it removed. Maps, metrics and the shortcut ratio "
        f"of every epoch are in TensorBoard ({summary['tensorboard_logdir']}).",
        figures=[
            plots.overlay_grid(
                x[:8],
                {name: Explainer(name).saliency(model, x[:8], y[:8]) for name in ("saliency", "input_x_gradient")},
            )
        ],
    )
    failures = failure_modes(model, "input_x_gradient", x, y, limit=8)
    demo.report.add_section(
        "Failure modes",
        text=f"The first {len(failures.indices)} misclassified test images (of {int((_predictions(model, x) != y).sum())}), "
        "each with input x gradient for the true class and for the class the model chose: what it looked at when it "
        "went wrong.",
        figures=[failures.plot()] if len(failures.indices) else [],
    )


def _sanity(demo: _Demo) -> None:
    """Cascading model randomisation for saliency, guided backprop and Grad-CAM."""
    probe = demo.x[: 16 if demo.fast else 64]
    sanity = {}
    for name in ("saliency", "guided_backprop", "gradcam"):
        result = model_randomization_test(demo.model, name, probe, seed=demo.seed)
        sanity[name] = {"passed": result.passed, "spearman_abs_after_top_layer": result.similarity["spearman_abs"][0]}
        demo.report.add_section(
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
    demo.summary["sanity"] = sanity


def _faithfulness(demo: _Demo) -> None:
    """ROAD in both orders (no retraining) for three methods, then a short ROAR that shows the mask-shape leak."""
    n = 128 if demo.fast else 256
    loader = DataLoader(TensorDataset(demo.x[:n], demo.y[:n]), batch_size=512)
    fractions = (0.3, 0.6, 0.9)
    results = {
        name: {
            order: road(demo.model, loader, name, fractions, order=order, seed=demo.seed) for order in ("morf", "lerf")
        }
        for name in ROAD_METHODS
    }
    agreement = {name: road_agreement(r["morf"], r["lerf"]) for name, r in results.items()}
    consistent = [name for name, verdict in agreement.items() if verdict == "both orders"]
    demo.summary["road"] = {
        name: {"agreement": agreement[name], **{order: r.to_dict() for order, r in by_order.items()}}
        for name, by_order in results.items()
    }
    demo.report.add_section(
        "Faithfulness: ROAD in both orders",
        text=f"Accuracy of the trained model on {n} test images after removing 30, 60 and 90% of the pixels, filled "
        "by noisy linear imputation (Rong et al. 2022), most relevant first (MoRF: lower than random is better) and "
        "least relevant first (LeRF: higher is better). A faithful map wins in both orders. A map that wins MoRF only "
        "puts the evidence first but not last: input x gradient scales each gradient by the pixel's value, so it "
        "ranks dark pixels last whatever their role, and removing its 'least relevant' pixels first hurts the model "
        "more than removing random ones. A win needs a mean gain over random of more than 0.02.",
        table=[
            {
                "method": name,
                "MoRF accuracy": statistics.fmean(r["morf"].accuracy.values()),
                "random MoRF": statistics.fmean(r["morf"].random_accuracy.values()),
                "LeRF accuracy": statistics.fmean(r["lerf"].accuracy.values()),
                "random LeRF": statistics.fmean(r["lerf"].random_accuracy.values()),
                "beats random in": agreement[name],
            }
            for name, r in results.items()
        ],
        verdict=(
            f"faithful in both orders: {', '.join(consistent)}" if consistent else "no method wins in both orders",
            bool(consistent),
        ),
        figures=[road_figure([r for by_order in results.values() for r in by_order.values()])],
    )
    _short_roar(demo)


def _short_roar(demo: _Demo) -> None:
    """ROAR for saliency at half the pixels, one repeat: the pixels ranked by the trained model's maps, a fresh
    SmallCNN trained from scratch on the masked images. Its accuracy next to the unmodified model's shows whether the
    removed region's shape carries the label."""
    result = roar(
        small_cnn_module,
        demo.data,
        [Explainer("saliency")],
        fractions=(0.5,),
        repeats=1,
        trainer_kwargs={"max_epochs": 2 if demo.fast else 4},
        model=demo.model,
        cache_dir=demo.out / "roar_cache",
        seed=demo.seed,
        progress=demo.progress,
    )
    result.to_json(demo.out / "roar.json")
    removed, random = result.accuracy["saliency"][0.5][0], result.accuracy["random"][0.5][0]
    leak = removed > result.baseline_accuracy
    demo.summary["roar"] = {
        "baseline_accuracy": result.baseline_accuracy,
        "accuracy": {k: {str(f): v for f, v in d.items()} for k, d in result.accuracy.items()},
        "shape_leak": leak,
    }
    finding = (
        f"With half of every image removed where saliency points, a model trained from scratch scores {removed:.3f}, above the "
        f"unmodified model's {result.baseline_accuracy:.3f}, and random removal leaves {random:.3f}: the shape of the "
        "removed region tells the class, so ROAR's 'worse than random' here measures that leak, not the map (Rong et "
        "al. 2022). ROAD above cannot be fooled this way: the model it scores was never trained on masked images."
        if leak
        else f"Saliency's top half removed: {removed:.3f} after retraining; random removal: {random:.3f}; unmodified: "
        f"{result.baseline_accuracy:.3f}."
    )
    demo.report.add_section(
        "Faithfulness: a short ROAR, and why ROAR alone misleads",
        text="ROAR (Hooker et al. 2019) removes each image's top pixels (filled with the training mean) and "
        f"retrains a fresh model from scratch; here one repeat of {2 if demo.fast else 4} epochs, with the pixels ranked by "
        f"the trained model's maps. {finding} A full ROAR is "
        "`captum-ext roar --config ...` (docs/roar.md), and scales out with docs/scale.md.",
        table=[
            {"ranking": m, "test accuracy after retraining": v[0.5][0], "unmodified": result.baseline_accuracy}
            for m, v in result.accuracy.items()
        ],
        verdict=("the mask shape leaks the label" if leak else "no shape leak seen", not leak),
    )


def _audit(demo: _Demo) -> None:
    """The Clever Hans audit with the tag's region given, then in discovery mode, against the control."""
    x, y = (demo.x[:200], demo.y[:200]) if demo.fast else (demo.x, demo.y)
    audits = {}
    for mode, region in (("region", demo.data.region_mask), ("discovery", None)):
        audit = CleverHansAudit("input_x_gradient", region=region).run(demo.model, (x, y), control=demo.control)
        audits[mode] = audit.flagged
        write_text_atomic(audit.to_html(), demo.out / f"audit_{mode}.html")
        demo.report.add_section(
            f"Clever Hans audit ({mode})",
            text="Per class: share of positive input x gradient relevance in the region vs. its area, compared with a "
            "control model trained with the tag independent of the label, and proven by intervention (impute the "
            "region: accuracy drop; paste it on other classes: flip rate). Columns: n images, relevance mass, area, "
            "ratio, pointing game, rank accuracy, specificity, consistency, accuracy drop, flip rate, intervention p, "
            "control ratio.",
            table=audit.table(),
            verdict=(f"flagged classes: {audit.flagged}" if audit.flagged else "nothing flagged", not audit.flagged),
            figures=[audit.plot(table=False)],
        )
    demo.summary["audit_flagged"] = audits


def _rollout(demo: _Demo) -> None:
    """Attention rollout of a TinyViT on the tagged zeros: how much of its mass lies in the tag."""
    data = demo.data
    vit = fit_classifier(_seeded(TinyViT, demo.seed), data, max_epochs=8 if demo.fast else 20, lr=3e-3, seed=demo.seed)
    tagged, _ = data.shortcut_test_images(tagged=True)
    rollout = AttentionRollout(vit).attribute(tagged)[:, 0]
    share = float(((rollout * data.region_mask).sum((1, 2)) / rollout.sum((1, 2))).mean())
    demo.summary["rollout_tag_mass"] = share
    demo.report.add_section(
        "ViT attention rollout",
        text=f"Rollout (Abnar & Zuidema 2020) of a TinyViT on tagged zeros: on average {share:.2f} of the map's mass "
        f"lies in the tag, which covers {float(data.region_mask.float().mean()):.3f} of the image. The number is the "
        "aggregate over all tagged test zeros; the pictures are the first eight, not chosen.",
        figures=[plots.overlay_grid(tagged[:8], {"rollout": rollout[:8]})],
    )


def _representations(demo: _Demo) -> None:
    """First-layer filters, class visualisations and the activation atlas (also logged to TensorBoard)."""
    model, x, y, fast = demo.model, demo.x, demo.y, demo.fast
    classes = ActivationMaximization(model, tuple(x.shape[1:]), steps=64 if fast else 96, seed=demo.seed).visualize(
        target=list(range(10))
    )
    images = 120 if fast else 300
    atlas = activation_atlas(
        model, "features.relu3", x[:images], y[:images], grid=4 if fast else 6, steps=16 if fast else 32, seed=demo.seed
    )
    demo.logger.experiment.add_figure("features/activation_atlas", atlas.plot(), global_step=0)
    demo.report.add_section(
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


STAGES: tuple[tuple[str, Callable[[_Demo], None]], ...] = (
    ("training SmallCNN with the monitors attached, and a control", _training),
    ("sanity checks (cascading model randomisation)", _sanity),
    ("faithfulness: ROAD in both orders, and a short ROAR", _faithfulness),
    ("Clever Hans audit (region given, then discovered)", _audit),
    ("attention rollout on a TinyViT", _rollout),
    ("what the CNN learned", _representations),
)


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with the global RNG seeded (and restored after): the same initial weights whatever ran before."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _predictions(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return predict(model, x)


def _image_row(images: torch.Tensor, titles: list[str] | None = None):
    """A figure with one panel per (C, H, W) image (or per image of an (N, ...) grid tensor)."""
    from matplotlib.figure import Figure

    images = plots.display_images(images if images.dim() == 4 else images[None])
    fig = Figure(figsize=(1.2 * len(images) + 0.4, 1.6))
    for i, ax in enumerate(fig.subplots(1, len(images), squeeze=False)[0]):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
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
    rows += [(f"ROAD, {name} beats random in", entry["agreement"]) for name, entry in summary["road"].items()]
    roar = summary["roar"]
    after = ", ".join(f"{m} {v['0.5'][0]:.3f}" for m, v in roar["accuracy"].items())
    rows += [
        (
            "short ROAR, half removed, retrained",
            f"{after} (unmodified {roar['baseline_accuracy']:.3f})"
            + ("; the mask shape leaks" if roar["shape_leak"] else ""),
        )
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
