"""``FilterMonitor``: how do the first-layer filters, the probe feature maps and the class images evolve?

Every ``every_n_epochs`` validation epochs it writes to TensorBoard the first convolution's filters
(:func:`~captum_ext.features.first_layer_filters`) and, for a few probe images, the feature maps of chosen
layers (:func:`~captum_ext.features.feature_maps`); every ``class_images_every_n_epochs`` epochs, if set, one
:class:`~captum_ext.features.ActivationMaximization` image per class. Filters that stay noise, or feature maps
that stay blank, show a layer that does not learn; class images show what each logit has come to respond to.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.utils import make_grid
from typing_extensions import override

from captum_ext import maps
from captum_ext._checks import check_int, class_targets
from captum_ext._model import resolve_layer
from captum_ext.batches import Unpack
from captum_ext.callbacks.base import ExplanationCallback, forward_in_eval
from captum_ext.features import ActivationMaximization, feature_maps, first_layer_filters
from captum_ext.features.filters import first_conv_name
from captum_ext.model_output import OutputFn

__all__ = ["FilterMonitor"]


class FilterMonitor(ExplanationCallback):
    """What do the first-layer filters and a few probe images' feature maps look like as training goes?

    References: Krizhevsky et al. 2012 and Zeiler & Fergus 2014 (filters, feature maps); Simonyan et al. 2014
    and Yosinski et al. 2015 (class images by regularised activation maximisation).

    TensorBoard images (rank 0 only, at ``trainer.global_step``):

    - ``filters/<layer>``: the filter grid of ``filter_layer``;
    - ``feature_maps/<layer>``: for every layer in ``feature_layers``, one row per probe image (probe order)
      holding the grid of its channel maps;
    - ``activation_maximization/classes``: one image per class of ``class_targets``, each min-max scaled, every
      ``class_images_every_n_epochs`` epochs (off by default: 0).

    Only rank 0 computes the images; no collective call is made, so other ranks simply skip. The model is
    used in eval mode and left unchanged (no hooks, no ``.grad``), and the random steps of the class images are
    seeded with ``seed`` inside the base class's RNG isolation, so the training run is bitwise unchanged.

    Args:
        filter_layer: dotted name (relative to the LightningModule) of the ``nn.Conv2d`` whose filters are shown.
            Default the first ``nn.Conv2d`` in ``modules()`` order.
        feature_layers: dotted names of layers with (N, channels, h, w) outputs. Default ``[filter_layer]``.
        every_n_epochs: filters and feature maps every n-th validation epoch. Default 1.
        num_samples: probe images for the feature maps, balanced over classes. Default 4.
        class_images_every_n_epochs: class images every n-th validation epoch; 0 (default) turns them off.
        class_targets: the classes to visualise. Default ``range(number of logits)``.
        activation_maximization: keyword arguments of :class:`~captum_ext.features.ActivationMaximization`
            (``steps``, ``lr``, ``l2``, ``tv``, ``jitter``, ``blur_every``, ``blur_sigma``, ``value_range``);
            ``input_shape`` is the probe images' and ``seed`` is ``seed``. Default none (its defaults).
        scale: nearest upsampling of every filter tile. Default 8.
        probe, classes, seed, probe_scan, output_fn, unpack: see :class:`~captum_ext.callbacks.base.ExplanationCallback`.

    Raises:
        ValueError: a bad count, an unknown key or a bad value in ``activation_maximization``, or (at the first run)
            a layer that is not in the model.
        TypeError: a layer name that is not a str.

    Example::

        >>> import tempfile
        >>> import pytorch_lightning as pl
        >>> from pytorch_lightning.loggers import TensorBoardLogger
        >>> from captum_ext.data import CleverHansDigits
        >>> from captum_ext.models import ClassifierModule, SmallCNN
        >>> monitor = FilterMonitor(feature_layers=["model.features.relu1", "model.features.relu2"],
        ...                         class_images_every_n_epochs=1, activation_maximization={"steps": 8})
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[monitor],
        ...                      logger=TensorBoardLogger(tempfile.mkdtemp()), enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(ClassifierModule(SmallCNN()), datamodule=CleverHansDigits())
    """

    _AM_KEYS = ("steps", "lr", "l2", "tv", "jitter", "blur_every", "blur_sigma", "value_range")

    def __init__(
        self,
        filter_layer: str | None = None,
        feature_layers: Sequence[str] | None = None,
        *,
        class_images_every_n_epochs: int = 0,
        class_targets: Sequence[int] | None = None,
        activation_maximization: Mapping[str, Any] | None = None,
        scale: int = 8,
        num_samples: int = 4,
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
        if filter_layer is not None and not isinstance(filter_layer, str):
            raise TypeError(
                f"Expected argument `filter_layer` to be a dotted module name (str) or None, but got {filter_layer!r}."
            )
        if feature_layers is not None and (
            isinstance(feature_layers, str)
            or not isinstance(feature_layers, Sequence)
            or not all(isinstance(n, str) for n in feature_layers)
        ):
            raise TypeError(
                f"Expected argument `feature_layers` to be a list of dotted module names or None, but got {feature_layers!r}."
            )
        every = check_int("class_images_every_n_epochs", class_images_every_n_epochs, 0)
        if class_targets is not None and (
            not isinstance(class_targets, Sequence)
            or not class_targets
            or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0 for c in class_targets)
        ):
            raise ValueError(
                f"Expected argument `class_targets` to be a non-empty list of class indices or None, but got {class_targets!r}."
            )
        am_kwargs = dict(activation_maximization or {})
        unknown = sorted(set(am_kwargs) - set(self._AM_KEYS))
        if unknown:
            raise ValueError(
                f"Expected the keys of argument `activation_maximization` to be among {', '.join(map(repr, self._AM_KEYS))}, "
                f"but got {', '.join(map(repr, unknown))}."
            )
        ActivationMaximization(nn.Identity(), (1, 1, 1), **am_kwargs)  # check the settings now, not at the first epoch
        scale = check_int("scale", scale, 1)
        self.filter_layer = filter_layer
        self.feature_layers = None if feature_layers is None else list(feature_layers)
        self.class_images_every_n_epochs = int(every)
        self.class_targets = None if class_targets is None else [int(c) for c in class_targets]
        self.activation_maximization = am_kwargs
        self.scale = scale

    def _state_key_fields(self) -> dict[str, Any]:
        return {
            "filter_layer": self.filter_layer,
            "feature_layers": self.feature_layers,
            "num_samples": self.num_samples,
            "seed": self.seed,
        }

    def _filters_due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _classes_due(self, trainer: pl.Trainer) -> bool:
        every = self.class_images_every_n_epochs
        return every > 0 and (trainer.current_epoch + 1) % every == 0

    @override
    def scheduled(self, trainer: pl.Trainer) -> bool:
        return self._filters_due(trainer) or self._classes_due(trainer)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.tensorboard(trainer) is None:
            return
        probe = self.probe(trainer, pl_module)
        if self._filters_due(trainer):
            filter_layer = self.filter_layer or first_conv_name(pl_module)
            self.log_image(
                trainer, f"filters/{filter_layer}", first_layer_filters(pl_module, filter_layer, scale=self.scale)
            )
            for layer in self.feature_layers or [filter_layer]:
                grids = feature_maps(pl_module, layer, probe.inputs)
                self.log_image(trainer, f"feature_maps/{layer}", make_grid(grids, nrow=1, padding=2, pad_value=1.0))
        if self._classes_due(trainer):
            self.log_image(trainer, "activation_maximization/classes", self._class_images(pl_module, probe.inputs))

    def dry_run(self, pl_module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        for layer in [self.filter_layer or first_conv_name(pl_module), *(self.feature_layers or [])]:
            resolve_layer(pl_module, layer)
        if self.class_targets is not None:
            classes = forward_in_eval(pl_module, inputs, self.output_fn).shape[1]
            class_targets(self.class_targets, len(self.class_targets), classes, name="class_targets")

    def _class_images(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        targets = self.class_targets
        if targets is None:
            targets = list(range(forward_in_eval(model, inputs[:1], self.output_fn).shape[1]))
        am = ActivationMaximization(
            model, tuple(inputs.shape[1:]), seed=self.seed, output_fn=self.output_fn, **self.activation_maximization
        )
        images = maps.normalize_minmax(am.visualize(target=targets).float().cpu())
        side = max(1, 96 // max(images.shape[-2:]))
        images = torch.nn.functional.interpolate(images, scale_factor=side, mode="nearest") if side > 1 else images
        return make_grid(images, nrow=min(len(images), 10), padding=2, pad_value=1.0)
