"""``AttributionMonitor``: attribution maps and their faithfulness on a fixed probe set, every epoch.

At the end of a validation epoch each explainer attributes the probe images (the true label or the prediction as
target); the maps go to TensorBoard as an overlay grid (``attribution/<explainer>/maps``) and the faithfulness
metrics — deletion and insertion AUC (Petsiuk et al., "RISE", BMVC 2018) by default — as scalars
(``attribution/<explainer>/<metric>``). Each rank scores its shard of the probe set; the metrics are torchmetrics
states synced across ranks. Two or more of deletion, insertion and AOPC share their model passes
(:func:`~captum_ext.metrics.faithfulness.perturbation_scores`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import Metric

from captum_ext import maps
from captum_ext import metrics as _metrics
from captum_ext._checks import TargetSource, check_bool, check_target_source
from captum_ext.batches import Unpack
from captum_ext.callbacks.base import ExplanationCallback, synced_compute
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.metrics.faithfulness import SharedMetric, perturbation_scores
from captum_ext.model_output import OutputFn
from captum_ext.normalization import Normalization, check_normalization
from captum_ext.plots import overlay_image

__all__ = ["AttributionMonitor", "METRICS"]

#: Metric names accepted by :class:`AttributionMonitor` and the torchmetrics classes they stand for.
METRICS: dict[str, type[Metric]] = {
    "deletion_auc": _metrics.DeletionAUC,
    "insertion_auc": _metrics.InsertionAUC,
    "aopc": _metrics.AOPC,
    "faithfulness_correlation": _metrics.FaithfulnessCorrelation,
    "irof": _metrics.IROF,
    "sparseness": _metrics.Sparseness,
    "complexity": _metrics.Complexity,
    "effective_complexity": _metrics.EffectiveComplexity,
    "max_sensitivity": _metrics.MaxSensitivity,
    "avg_sensitivity": _metrics.AvgSensitivity,
    "local_lipschitz_estimate": _metrics.LocalLipschitzEstimate,
    "relative_input_stability": _metrics.RelativeInputStability,
    "relative_output_stability": _metrics.RelativeOutputStability,
    "monotonicity_correlation": _metrics.MonotonicityCorrelation,
    "random_logit": _metrics.RandomLogit,
}
#: The metrics that read only the maps (``update(attributions)``); the others take (model, inputs, maps, target).
MAP_ONLY = {"sparseness", "complexity", "effective_complexity"}


#: The metrics that :func:`~captum_ext.metrics.faithfulness.perturbation_scores` computes from shared passes.
SHARED: dict[str, SharedMetric] = {"deletion_auc": "deletion", "insertion_auc": "insertion", "aopc": "aopc"}


def _shared_scores(
    metrics: Mapping[str, Any], model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image scores of the deletion-family metrics among ``metrics`` from one set of model passes (the unmodified
    images scored once, AOPC on the deletion curve), when two or more of them score probabilities; else ``{}``."""
    group = {name: m for name, m in metrics.items() if name in SHARED and m.apply_softmax}
    if len(group) < 2:
        return {}
    first = next(iter(group.values()))
    deletion = group.get("deletion_auc", group.get("aopc"))
    insertion = group.get("insertion_auc")
    scores = perturbation_scores(
        model,
        inputs,
        attributions,
        target,
        [SHARED[name] for name in group],
        steps=first.steps,
        deletion_imputer=None if deletion is None else deletion.imputer,
        insertion_imputer=None if insertion is None else insertion.imputer,
        reduce=first.reduce,
        batch_size=first.batch_size,
        seed=first.seed,
        output_fn=first.output_fn,
        normalization=first.normalization,
    )
    return {name: scores[SHARED[name]] for name in group}


def build_metric(name: str, explainer: Explainer, options: Mapping[str, Any]) -> Any:
    """``METRICS[name]`` made with the ``options`` its constructor accepts (and ``explainer`` where it takes one)."""
    cls = METRICS[name]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    if "explainer" in accepted:
        kwargs["explainer"] = explainer
    return cls(**kwargs)


class AttributionMonitor(ExplanationCallback):
    """Which pixels does the model use now, and are those maps faithful? Logged every ``every_n_epochs`` epochs.

    Faithfulness by deletion / insertion AUC (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018) or AOPC (Samek et al., IEEE TNNLS 2017), see :mod:`captum_ext.metrics`.

    Args:
        explainers: short names or :class:`~captum_ext.Explainer` instances, with unique names.
            Default ``("saliency", "integrated_gradients")``.
        num_samples: probe images, balanced over classes. Default 16.
        every_n_epochs: Default 1.
        metrics: names from :data:`METRICS`: ``"deletion_auc"``, ``"insertion_auc"``, ``"aopc"``,
            ``"faithfulness_correlation"``, ``"irof"``, ``"sparseness"``, ``"complexity"``, ``"effective_complexity"``,
            ``"max_sensitivity"``, ``"avg_sensitivity"``, ``"local_lipschitz_estimate"``, ``"relative_input_stability"``,
            ``"relative_output_stability"``, ``"monotonicity_correlation"``, ``"random_logit"``
            (:mod:`captum_ext.metrics`; the robustness metrics and random logit explain extra inputs with the same
            explainer). Default the first two.
        log_images: write the overlay grid of each explainer (rank 0, TensorBoard). Default True.
        target: explain the true ``"label"`` or the model's ``"prediction"``. Default ``"label"``.
        reduce: channel reduction of the displayed maps (see :func:`captum_ext.maps.reduce_channels`); the
            metrics get the full (N, C, H, W) attributions. Default ``"sum_abs"``.
        metric_kwargs: keyword arguments for the metrics' constructors, each getting those it accepts (``steps``,
            ``imputer``, ``samples``, ``runs``, ``num_classes``...). Default
            ``{"steps": 8}``: half the metrics' own default, since a per-epoch trend on a few probe images needs no
            finer curve, and it keeps a check within ~1.5x the bare attribution time (``benchmarks/callbacks.py``).
        probe, classes, seed, probe_scan, output_fn, unpack: see :class:`~captum_ext.callbacks.base.ExplanationCallback`.
        normalization: the model's input normalisation (:class:`~captum_ext.normalization.Normalization`): the
            metrics' black fill and the overlays are then in pixel space. Default None (the inputs are pixels).

    Attributes:
        maps: ``{explainer name: (N, H, W) maps}`` of the whole probe set at the last check (every rank).

    Raises:
        ValueError: an unknown metric, target or reduction, repeated explainer names, or an invalid count.
        TypeError: an explainer that is neither a short name nor an ``Explainer``.

    Example::

        >>> import pytorch_lightning as pl
        >>> from captum_ext.data import CleverHansDigits
        >>> from captum_ext.models import ClassifierModule, SmallCNN
        >>> monitor = AttributionMonitor(explainers=["saliency"], num_samples=8)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[monitor], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(ClassifierModule(SmallCNN()), datamodule=CleverHansDigits())
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("attribution/"))
        ['attribution/saliency/deletion_auc', 'attribution/saliency/insertion_auc']
    """

    def __init__(
        self,
        explainers: Sequence[str | Explainer] = ("saliency", "integrated_gradients"),
        *,
        metrics: Sequence[str] = ("deletion_auc", "insertion_auc"),
        log_images: bool = True,
        target: TargetSource = "label",
        reduce: maps.Reduction = "sum_abs",
        metric_kwargs: Mapping[str, Any] | None = None,
        normalization: Normalization | None = None,
        num_samples: int = 16,
        every_n_epochs: int = 1,
        probe: Dataset | tuple[torch.Tensor, torch.Tensor] | None = None,
        classes: Sequence[int] | None = None,
        seed: int = 0,
        probe_scan: int = 4096,
        output_fn: OutputFn | None = None,
        unpack: Unpack | None = None,
    ):
        super().__init__(
            every_n_epochs=every_n_epochs,
            num_samples=num_samples,
            probe=probe,
            classes=classes,
            seed=seed,
            probe_scan=probe_scan,
            output_fn=output_fn,
            unpack=unpack,
        )
        if isinstance(explainers, (str, Explainer)):
            explainers = [explainers]
        self.explainers = [as_explainer(e, "explainers") for e in explainers]
        names = [e.name for e in self.explainers]
        if not names or len(set(names)) != len(names):
            raise ValueError(
                f"Expected argument `explainers` to be a non-empty sequence with unique names, but got {names}."
            )
        if isinstance(metrics, str):
            metrics = [metrics]
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or len(set(metrics)) != len(metrics):
            raise ValueError(
                f"Expected argument `metrics` to hold distinct names from {', '.join(map(repr, METRICS))}, but got {list(metrics)!r}."
            )
        maps.check_reduction(reduce)
        if metric_kwargs is not None and not isinstance(metric_kwargs, Mapping):
            raise TypeError(
                f"Expected argument `metric_kwargs` to be a mapping or None, but got {type(metric_kwargs).__name__}."
            )
        self.metric_names = list(metrics)
        accepted = {name for m in self.metric_names for name in inspect.signature(METRICS[m].__init__).parameters}
        unknown = sorted(set(metric_kwargs or {}) - accepted - {"steps"})
        if unknown:
            raise TypeError(
                f"Expected the keys of `metric_kwargs` to be arguments of the metrics {self.metric_names}, but got "
                f"{', '.join(map(repr, unknown))}."
            )
        self.metric_kwargs = {"steps": 8, **(metric_kwargs or {})}
        self.log_images = check_bool("log_images", log_images)
        self.target = check_target_source(target)
        self.reduce = reduce
        self.maps: dict[str, torch.Tensor] = {}
        self.normalization = check_normalization(normalization)
        shared = {"output_fn": self.output_fn, "normalization": self.normalization}
        self._metrics = {
            e.name: {m: build_metric(m, e, {**shared, **self.metric_kwargs}) for m in self.metric_names}
            for e in self.explainers
        }

    def _state_key_fields(self) -> dict[str, Any]:
        return {"explainers": [e.name for e in self.explainers], "num_samples": self.num_samples, "seed": self.seed}

    def explainers_used(self) -> list[Explainer]:
        return self.explainers

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        probe = self.probe(trainer, pl_module)
        inputs, labels = probe.shard()
        empty = len(inputs) == 0
        target = labels if self.target == "label" or empty else self.predict(pl_module, inputs)
        values: dict[str, torch.Tensor] = {}
        for explainer in self.explainers:
            attributions = None if empty else self.attribute(explainer, pl_module, inputs, target)
            metrics = self._metrics[explainer.name]
            shared = {} if attributions is None else _shared_scores(metrics, pl_module, inputs, attributions, target)
            for metric_name, metric in metrics.items():
                metric.to(pl_module.device).reset()
                if metric_name in shared:
                    metric.add(shared[metric_name])
                elif not empty and metric_name in MAP_ONLY:
                    metric.update(attributions)
                elif not empty:
                    metric.update(pl_module, inputs, attributions, target)  # run in eval mode without gradients
                values[f"attribution/{explainer.name}/{metric_name}"] = synced_compute(metric)
            shard_maps = (
                inputs.new_zeros(len(inputs), *inputs.shape[-2:])
                if attributions is None  # empty
                else maps.reduce_channels(attributions, self.reduce)
            )
            self.maps[explainer.name] = self.gather(trainer, shard_maps, probe).cpu()
            if self.log_images and self.tensorboard(trainer) is not None:
                self.log_image(
                    trainer,
                    f"attribution/{explainer.name}/maps",
                    overlay_image(probe.inputs, self.maps[explainer.name], normalization=self.normalization),
                )
        self.log_scalars(trainer, pl_module, values)
