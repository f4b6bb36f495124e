"""``RandomizationMonitor``: the model-parameter randomisation sanity check, run inside the training loop.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): a map that explains the model must change when
the model's weights are replaced by random ones. Each check re-initialises every layer of a deep copy of the
module (seeded, inside ``torch.random.fork_rng``; the module being trained is untouched), attributes the probe set
with the trained and the randomised model, and logs the similarity of the two sets of maps
(``sanity/<explainer>/<similarity>``). A similarity that stays above ``threshold`` means the maps barely depend on
what the model learned: a warning says so.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import Dataset

from captum_ext._checks import TargetSource, check_int, check_target_source
from captum_ext._seeds import derived_seed
from captum_ext.batches import Unpack
from captum_ext.callbacks.base import ExplanationCallback, synced_compute
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.metrics.similarity import MapSimilarity, SimilarityName, check_similarities
from captum_ext.model_output import OutputFn
from captum_ext.sanity.randomization import randomize_layer

__all__ = ["RandomizationMonitor", "randomized_copy"]


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-initialised (``model`` itself is not touched).

    Each module that owns parameters is re-drawn by :func:`captum_ext.sanity.randomization.randomize_layer` (its
    own initialiser; an ``nn.MultiheadAttention`` once, with its ``out_proj``; bare parameters included) from a seed
    derived from ``seed`` and its position, inside ``torch.random.fork_rng``, so the global RNG is not advanced.
    """
    clone = copy.deepcopy(model)
    # an nn.MultiheadAttention is one layer with its out_proj, as in the sanity checks' parameter_layers
    inside_attention = {
        id(m) for a in clone.modules() if isinstance(a, nn.MultiheadAttention) for m in a.modules() if m is not a
    }
    owners = [
        m for m in clone.modules() if id(m) not in inside_attention and any(True for _ in m.parameters(recurse=False))
    ]
    for index, module in enumerate(owners):
        randomize_layer(module, seed=derived_seed(seed, "layer", index))
    return clone


class RandomizationMonitor(ExplanationCallback):
    """Do the maps still depend on the learned weights? Similarity to a randomised model's maps, every epoch.

    Reference: Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018 (cascading randomisation, here
    its end point: every layer randomised).

    Args:
        explainer: short name or :class:`~captum_ext.Explainer`.
        num_samples: probe images, balanced over classes. Default 16.
        every_n_epochs: Default 1.
        similarity: names from ``"spearman_abs"``, ``"spearman"``, ``"ssim"``, ``"hog"`` (see
            :class:`~captum_ext.metrics.MapSimilarity`). Default ``("spearman_abs", "spearman", "ssim")``.
        monitor: the similarity compared with ``threshold``. Default ``"spearman_abs"``.
        threshold: similarity above which the check fails. Default 0.5.
        patience: consecutive failing checks before the warning (given once). Default 2.
        target: explain the true ``"label"`` or the trained model's ``"prediction"`` (also used for the randomised
            model, so both maps explain the same class). Default ``"label"``.
        probe, classes, seed, probe_scan, output_fn, unpack: see :class:`~captum_ext.callbacks.base.ExplanationCallback`; ``seed``
            also seeds the randomisation (the same random weights every check).

    Attributes:
        similarities: ``{name: value}`` of the last check.
        failed: whether the warning was given.

    Raises:
        ValueError: an unknown similarity or ``monitor`` not among them, a threshold outside [-1, 1], an invalid
            count.

    Example::

        >>> import pytorch_lightning as pl
        >>> from captum_ext.data import CleverHansDigits
        >>> from captum_ext.models import ClassifierModule, SmallCNN
        >>> monitor = RandomizationMonitor("saliency", num_samples=8)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[monitor], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(ClassifierModule(SmallCNN()), datamodule=CleverHansDigits())
        >>> sorted(monitor.similarities)
        ['spearman', 'spearman_abs', 'ssim']
    """

    def __init__(
        self,
        explainer: str | Explainer,
        *,
        similarity: Sequence[SimilarityName] = ("spearman_abs", "spearman", "ssim"),
        monitor: SimilarityName = "spearman_abs",
        threshold: float = 0.5,
        patience: int = 2,
        target: TargetSource = "label",
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
        self.similarity = check_similarities(similarity, "similarity")
        if monitor not in self.similarity:
            raise ValueError(
                f"Expected argument `monitor` to be one of the similarities {', '.join(map(repr, self.similarity))}, "
                f"but got {monitor!r}."
            )
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not -1 <= threshold <= 1:
            raise ValueError(f"Expected argument `threshold` to be a real number in [-1, 1], but got {threshold!r}.")
        check_int("patience", patience, 1)
        self.explainer: Explainer = as_explainer(explainer)
        self.random_explainer: Explainer = copy.deepcopy(self.explainer)
        self.monitor: SimilarityName = monitor
        self.threshold: float = float(threshold)
        self.patience: int = int(patience)
        self.target: TargetSource = check_target_source(target)
        self.similarities: dict[str, float] = {}
        self.failed: bool = False
        self._streak: int = 0
        self._metric: MapSimilarity = MapSimilarity(metrics=self.similarity)

    def _state_key_fields(self) -> dict[str, Any]:
        return {"explainer": self.explainer.name, "num_samples": self.num_samples, "seed": self.seed}

    def explainers_used(self) -> list[Explainer]:
        return [self.explainer, self.random_explainer]

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        probe = self.probe(trainer, pl_module)
        inputs, labels = probe.shard()
        metric = self._metric.to(pl_module.device)
        metric.reset()
        if len(inputs):
            target = labels if self.target == "label" else self.predict(pl_module, inputs)
            randomized = randomized_copy(pl_module, self.seed)
            trained = self.attribute(self.explainer, pl_module, inputs, target)
            baseline = self.attribute(self.random_explainer, randomized, inputs, target)
            del randomized
            metric.update(trained, baseline)  # (N, C, H, W): sum_abs for spearman_abs / SSIM / HOG, sum for spearman
        self.similarities = {name: float(value) for name, value in synced_compute(metric).items()}
        self.log_scalars(
            trainer, pl_module, {f"sanity/{self.explainer.name}/{k}": v for k, v in self.similarities.items()}
        )
        self._streak = self._streak + 1 if self.similarities[self.monitor] > self.threshold else 0
        if self._streak >= self.patience and not self.failed:
            self.failed = True
            self.warn_once(
                "failed",
                f"RandomizationMonitor: the {self.explainer.name!r} maps stay similar to those of a randomised model "
                f"({self.monitor} = {self.similarities[self.monitor]:.2f} > {self.threshold}) for {self.patience} "
                "consecutive checks; they hardly depend on the learned weights (Adebayo et al. 2018).",
            )

    def _extra_state(self) -> dict[str, Any]:
        return {"streak": self._streak, "failed": self.failed}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._streak = int(state.get("streak", 0))
        self.failed = bool(state.get("failed", False))
