"""Data randomisation test: does the map change when the model is trained on permuted labels?

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3.2. The same architecture (a deep copy of
the model, every layer re-initialised as in :mod:`captum_ext.sanity.randomization`) is trained with Lightning on
the training images with their labels permuted, until it reaches ``target_accuracy`` on that permuted training
set (it memorises) or ``max_epochs``. A method whose maps for the two models agree cannot be showing what the
labels taught the model.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ext._checks import Target, check_int, check_seed
from captum_ext._context import eval_mode
from captum_ext._model import accuracy, predict, unwrap_model
from captum_ext._seeds import derived_seed
from captum_ext.explainer import Explainer
from captum_ext.metrics.similarity import SIMILARITIES, SimilarityName
from captum_ext.model_output import OutputFn
from captum_ext.models import QUIET_TRAINER_KWARGS, ClassifierModule
from captum_ext.sanity.randomization import (
    _check_common,
    _Comparer,
    _noise_floor,
    _summaries,
    parameter_layers,
    randomize_layer,
)
from captum_ext.sanity.result import SanityResult

__all__ = ["data_randomization_test", "train_on_random_labels"]


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return accuracy(model, zip(images.split(512), labels.split(512)))


class _StopAtAccuracy(pl.Callback):
    """Measure the eval-mode accuracy on the (permuted) training set after each epoch; stop at the target."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, target_accuracy: float):
        self.images, self.labels, self.target_accuracy = images, labels, target_accuracy
        self.history: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = cast(ClassifierModule, pl_module).model  # the module train_on_random_labels fits
        accuracy = _accuracy(model, self.images.to(pl_module.device), self.labels.to(pl_module.device))
        self.history.append(accuracy)
        if accuracy >= self.target_accuracy:
            trainer.should_stop = True


def _check_train_data(train_data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(train_data, TensorDataset):
        train_data = train_data.tensors[:2]
    if (
        not isinstance(train_data, (tuple, list))
        or len(train_data) != 2
        or not all(isinstance(t, torch.Tensor) for t in train_data)
        or train_data[0].dim() != 4
        or train_data[1].shape != (train_data[0].shape[0],)
        or train_data[1].dtype != torch.long
    ):
        raise ValueError(
            "Expected argument `train_data` to be (images (N, C, H, W), labels (N,) long) tensors or a "
            f"TensorDataset of them, but got {type(train_data).__name__}."
        )
    return train_data[0], train_data[1]


def train_on_random_labels(
    model: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor] | TensorDataset,
    *,
    max_epochs: int = 60,
    target_accuracy: float = 0.9,
    lr: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    **trainer_kwargs: Any,
) -> tuple[nn.Module, float, list[float]]:
    """Train a re-initialised copy of ``model`` on ``train_data`` with permuted labels (Zhang et al. 2017).

    Args:
        model: the architecture to copy (left unchanged).
        train_data: (images (N, C, H, W), labels (N,) long) or a ``TensorDataset`` of them.
        max_epochs: stop after this many epochs (training usually stops earlier, at ``target_accuracy``). Default 60
            (500 permuted digits need 36 epochs to reach 0.9 with the other defaults).
        target_accuracy: stop once the eval-mode accuracy on the permuted training set reaches it. Default 0.9.
        lr: Adam's learning rate. Default 3e-3 (random labels are learned slowly: with the project's usual 1e-3 and
            batches of 64, SmallCNN fits only ~36% of 500 permuted digits in 30 epochs; with 3e-3 and 16 it
            fits 128 of them to 0.9 in ~33 epochs).
        batch_size: Default 16.
        seed: seeds the permutation, the re-initialisation, the shuffling and training (all inside
            ``torch.random.fork_rng``). Default 0.
        **trainer_kwargs: passed to ``pytorch_lightning.Trainer`` (override the quiet CPU defaults).

    Returns:
        ``(random_label_model (eval mode), final training accuracy, accuracy after each epoch)``.

    Raises:
        ValueError: bad ``train_data``, ``max_epochs``, ``target_accuracy``.

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> x, y = torch.rand(32, 1, 32, 32), torch.randint(0, 10, (32,))
        >>> _, accuracy, history = train_on_random_labels(SmallCNN(), (x, y), max_epochs=1)
        >>> len(history)
        1
    """
    seed = check_seed(seed)
    images, labels = _check_train_data(train_data)
    check_int("max_epochs", max_epochs, 1)
    if (
        isinstance(target_accuracy, bool)
        or not isinstance(target_accuracy, numbers.Real)
        or not 0 < target_accuracy <= 1
    ):
        raise ValueError(
            f"Expected argument `target_accuracy` to be a real number in (0, 1], but got {target_accuracy!r}."
        )
    permuted = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    random_model = copy.deepcopy(unwrap_model(model))
    for param in random_model.parameters():
        param.grad = None
    for index, name in enumerate(parameter_layers(random_model, images)):
        randomize_layer(random_model.get_submodule(name), derived_seed(seed, "layer", index), reset_running_stats=True)
    num_classes = int(max(int(labels.max()) + 1, 2))
    loader = DataLoader(
        TensorDataset(images, permuted),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    stopper = _StopAtAccuracy(images, permuted, float(target_accuracy))
    settings: dict[str, Any] = {
        **QUIET_TRAINER_KWARGS,
        "max_epochs": int(max_epochs),
        "accelerator": "cpu",
        "num_sanity_val_steps": 0,
        **trainer_kwargs,
    }
    settings["callbacks"] = [*settings.get("callbacks", []), stopper]
    devices = [images.device] if images.device.type == "cuda" else []
    random_model.train()
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
        torch.manual_seed(seed)
        pl.Trainer(**settings).fit(
            ClassifierModule(random_model, lr=lr, num_classes=num_classes), train_dataloaders=loader
        )
    random_model.eval()
    return random_model, _accuracy(random_model, images, permuted), stopper.history


def data_randomization_test(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    train_data: tuple[torch.Tensor, torch.Tensor] | TensorDataset | None = None,
    target: Target = None,
    *,
    random_model: nn.Module | None = None,
    max_epochs: int = 60,
    target_accuracy: float = 0.9,
    similarity: Sequence[SimilarityName] = SIMILARITIES,
    threshold: float = 0.6,
    seed: int = 0,
    recompute_target: bool = False,
    lr: float = 3e-3,
    batch_size: int = 16,
    keep_maps: int = 4,
    output_fn: OutputFn | None = None,
    **trainer_kwargs: Any,
) -> SanityResult:
    """Does the explanation depend on the labels? (Adebayo et al., NeurIPS 2018, data randomisation test.)

    Trains the same architecture on permuted labels (:func:`train_on_random_labels`) and compares its maps of
    ``inputs`` with the maps of ``model`` (trained on the true labels), with the similarities and the verdicts of
    :func:`~captum_ext.sanity.model_randomization_test` (one step, labelled ``"random labels"``).

    Args:
        model: the classifier trained on the true labels (left unchanged).
        explainer: an :class:`~captum_ext.Explainer` or a short name.
        inputs: the probe batch, a float (N, C, H, W) tensor (use held-out images).
        train_data: (images, labels) the random-label model is trained on, or a ``TensorDataset``; a few
            hundred images suffice for a quick check. Not needed with ``random_model``.
        target: class per image or None (default) for ``model``'s prediction, used for both models.
        random_model: a model already trained on permuted labels (from :func:`train_on_random_labels`), to compare
            several explainers against one training run; ``train_accuracy`` is then None. Default None (train one).
        max_epochs: the most epochs of training on random labels. Default 60.
        target_accuracy: stop once training accuracy reaches it. Default 0.9.
        similarity: as in :func:`~captum_ext.sanity.model_randomization_test`. Default all four.
        threshold: Spearman(|map|) below which the maps count as different. Default 0.6.
        seed: seeds the permutation, initialisation and training. Default 0.
        recompute_target: explain the random-label model's own prediction instead. Default False.
        lr, batch_size: Adam's learning rate (default 3e-3) and the batch size (default 16).
        keep_maps: probe images whose maps are kept for the map grid. Default 4.
        output_fn: maps the model's output to (N, classes) scores. Default the package's output rule.
        **trainer_kwargs: passed to ``pytorch_lightning.Trainer``.

    Returns:
        :class:`SanityResult` with ``test="data"``, ``layers=["random labels"]``, ``train_accuracy`` (reached on
        the permuted training labels: below ``target_accuracy`` means it did not memorise them, and the
        comparison is weaker), ``passed``, ``reproducible`` and ``maps`` ((2, K, H, W)).

    Raises:
        ValueError: bad ``inputs``, ``train_data``, ``similarity``, ``threshold``, ``max_epochs``,
            ``target_accuracy``; neither or both of ``train_data`` and ``random_model``.
        TypeError: ``model`` or ``random_model`` not an ``nn.Module``, bad ``explainer`` or ``seed``.

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> x, y = torch.rand(32, 1, 32, 32), torch.randint(0, 10, (32,))
        >>> result = data_randomization_test(SmallCNN(), "saliency", x[:4], (x, y), max_epochs=1)
        >>> result.layers
        ['random labels']
    """
    seed = check_seed(seed)
    metrics, explainer = _check_common(model, explainer, inputs, similarity, threshold, seed, keep_maps, output_fn)
    if (train_data is None) == (random_model is None):
        raise ValueError(
            "Expected exactly one of `train_data` (to train a random-label model) and `random_model` (one already "
            f"trained), but got {'neither' if train_data is None else 'both'}."
        )
    train_accuracy: float | None = None
    if train_data is not None:  # and random_model is None: exactly one of them is given
        random_model, train_accuracy, _ = train_on_random_labels(
            model,
            train_data,
            max_epochs=max_epochs,
            target_accuracy=target_accuracy,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            **trainer_kwargs,
        )
    elif not isinstance(random_model, nn.Module):
        raise TypeError(
            f"Expected argument `random_model` to be an nn.Module or None, but got {type(random_model).__name__}."
        )
    with torch.no_grad(), eval_mode(model):
        fixed_target = predict(model, inputs, output_fn) if target is None else target
    original = explainer.attribute(model, inputs, fixed_target, output_fn=output_fn)
    comparer = _Comparer(original, metrics)
    noise_floor = _noise_floor(explainer, model, inputs, fixed_target, comparer, output_fn)
    step_target = fixed_target
    if recompute_target:
        with torch.no_grad(), eval_mode(random_model):
            step_target = predict(random_model, inputs, output_fn)
    attribution = explainer.attribute(random_model, inputs, step_target, output_fn=output_fn)
    means, stds = _summaries(comparer.per_image(attribution, "random-label model"))
    k = min(int(keep_maps), inputs.shape[0])
    return SanityResult(
        test="data",
        mode="data",
        explainer=explainer.name,
        layers=["random labels"],
        similarity={m: [means[m]] for m in metrics},
        similarity_std={m: [stds[m]] for m in metrics},
        noise_floor=noise_floor,
        threshold=float(threshold),
        passed=bool(means["spearman_abs"] < threshold),
        reproducible=bool(noise_floor["spearman_abs"] >= threshold),
        train_accuracy=train_accuracy,
        maps=torch.stack([comparer.abs0[:k], attribution[:k].abs().sum(1)]).cpu() if k else None,
        images=inputs[:k].detach().cpu().clone() if k else None,
        passes=2,
    )
