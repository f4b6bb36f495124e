"""``ShortcutMonitor``: is the model learning a shortcut region (a watermark, a tag) for some class?

Per class, over the probe images of that class, the share of positive relevance inside a suspected region divided
by the region's share of the image (Arras et al. 2022's relevance mass accuracy against its chance level; the
"copyright tag" horses of Lapuschkin et al., "Unmasking Clever Hans predictors", Nature Communications 2019).
A ratio of 1 is chance; the ratio is logged every epoch as ``shortcut/<class>/ratio`` and a class that stays above
``threshold`` for ``patience`` consecutive checks is reported (a warning) or stops the fit (through the strategy,
so all ranks stop together).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import Dataset

from captum_ext import maps
from captum_ext._checks import TargetSource, check_choice, check_int, check_real, check_target_source
from captum_ext.batches import Unpack
from captum_ext.callbacks.base import ExplanationCallback, synced_compute
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.metrics.localisation import RelevanceMass, check_region
from captum_ext.model_output import OutputFn

__all__ = ["ShortcutMonitor"]


class ShortcutMonitor(ExplanationCallback):
    """Does any class's relevance concentrate in ``region`` far above chance during training?

    Reference: Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really learn",
    Nature Communications 10, 2019; relevance mass: Arras, Osman & Samek, Information Fusion 81, 2022.

    Args:
        explainer: short name or :class:`~captum_ext.Explainer`; the positive part of its channel-summed map is
            used (``"saliency"``: the positive gradient).
        region: (H, W) bool mask of the suspected shortcut (e.g. ``CleverHansDigits.region_mask``).
        classes: classes to monitor (the probe set is drawn from them). Default every class.
        threshold: ratio (relevance mass / area share) above which a class is suspicious. Default 3.0.
        patience: consecutive checks above ``threshold`` before a class is reported. Default 2.
        on_detect: ``"warn"`` (one warning per class) or ``"stop"`` (``trainer.should_stop`` on every rank).
            Default ``"warn"``.
        num_samples: probe images, balanced over the classes. Default 100.
        every_n_epochs: Default 1.
        target: explain the true ``"label"`` or the ``"prediction"``. Default ``"label"``.
        probe, seed, probe_scan, output_fn, unpack: see :class:`~captum_ext.callbacks.base.ExplanationCallback`.

    Attributes:
        ratios: ``{class: ratio}`` of the last check.
        detected: ``{class: epoch}`` of each class reported so far.

    Raises:
        TypeError: ``region`` is not a bool tensor.
        ValueError: a region not (H, W) or empty, a non-positive threshold, an unknown ``on_detect`` or ``target``.

    Example::

        >>> import pytorch_lightning as pl
        >>> from captum_ext.data import CleverHansDigits
        >>> from captum_ext.models import ClassifierModule, SmallCNN
        >>> dm = CleverHansDigits()
        >>> monitor = ShortcutMonitor("saliency", dm.region_mask, num_samples=20)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[monitor], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(ClassifierModule(SmallCNN()), datamodule=dm)
        >>> sorted(monitor.ratios) == list(range(10))
        True
    """

    def __init__(
        self,
        explainer: str | Explainer,
        region: torch.Tensor,
        *,
        threshold: float = 3.0,
        patience: int = 2,
        on_detect: Literal["warn", "stop"] = "warn",
        target: TargetSource = "label",
        num_samples: int = 100,
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
        check_region(region)
        check_real("threshold", threshold, 0.0, low_open=True)
        check_int("patience", patience, 1)
        check_choice("on_detect", on_detect, ("warn", "stop"))
        self.explainer = as_explainer(explainer)
        self.region = region.detach().clone().cpu()
        self.threshold = float(threshold)
        self.patience = int(patience)
        self.on_detect = on_detect
        self.target = check_target_source(target)
        self.ratios: dict[int, float] = {}
        self.detected: dict[int, int] = {}
        self._streaks: dict[int, int] = {}
        self._metrics: dict[int, RelevanceMass] = {}

    def _state_key_fields(self) -> dict[str, Any]:
        region = hashlib.sha256(self.region.numpy().tobytes() + str(tuple(self.region.shape)).encode()).hexdigest()[:12]
        return {
            "explainer": self.explainer.name,
            "region": region,
            "classes": self.classes,
            "threshold": self.threshold,
        }

    def explainers_used(self) -> list[Explainer]:
        return [self.explainer]

    def dry_run(self, pl_module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        check_region(self.region, cast("tuple[int, int]", tuple(inputs.shape[-2:])))  # (N, C, H, W) images
        super().dry_run(pl_module, inputs, labels)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        probe = self.probe(trainer, pl_module)
        inputs, labels = probe.shard()
        positive = None
        if len(inputs):
            target = labels if self.target == "label" else self.predict(pl_module, inputs)
            positive = maps.reduce_channels(self.attribute(self.explainer, pl_module, inputs, target), "positive")
        area_share = float(self.region.float().mean())
        newly_detected = []
        for cls in sorted(set(probe.labels.tolist())):
            metric = self._metrics.setdefault(cls, RelevanceMass(self.region)).to(pl_module.device)
            metric.reset()
            members = labels == cls
            if positive is not None and bool(members.any()):
                metric.update(positive[members])
            ratio = float(synced_compute(metric)) / area_share  # synced over ranks: every rank sees the same value
            self.ratios[cls] = ratio
            self._streaks[cls] = self._streaks.get(cls, 0) + 1 if ratio > self.threshold else 0
            if self._streaks[cls] >= self.patience and cls not in self.detected:
                self.detected[cls] = trainer.current_epoch
                newly_detected.append(cls)
        self.log_scalars(trainer, pl_module, {f"shortcut/{cls}/ratio": ratio for cls, ratio in self.ratios.items()})
        for cls in newly_detected:
            self.warn_once(
                f"class-{cls}",
                f"ShortcutMonitor: class {cls} has {self.ratios[cls]:.2f}x its area share of relevance in the region "
                f"(threshold {self.threshold}) for {self.patience} consecutive checks at epoch {trainer.current_epoch}.",
            )
        if self.on_detect == "stop" and trainer.strategy.reduce_boolean_decision(bool(newly_detected), all=False):
            trainer.should_stop = True

    def _extra_state(self) -> dict[str, Any]:
        return {
            "streaks": {str(k): v for k, v in self._streaks.items()},
            "detected": {str(k): v for k, v in self.detected.items()},
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._streaks = {int(k): int(v) for k, v in state.get("streaks", {}).items()}
        self.detected = {int(k): int(v) for k, v in state.get("detected", {}).items()}
