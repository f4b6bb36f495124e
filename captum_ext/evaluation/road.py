"""ROAD (Rong et al., ICML 2022): remove pixels by rank, fill them by noisy linear imputation, measure accuracy.

No retraining: the noisy linear fill leaks far less of the removed shape than a constant would, which is what
lets the unmodified model be evaluated on the perturbed images (Rong et al.'s argument).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from captum_ext import maps
from captum_ext._context import eval_mode
from captum_ext.evaluation._common import check_fractions, model_device
from captum_ext.evaluation.results import ROADResult
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.imputation import NoisyLinearImputer

__all__ = ["road"]


def _correct_after_removal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ranking: torch.Tensor,
    fractions: list[float],
    imputer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
) -> list[int]:
    """Correct predictions per fraction after removing the first ``fraction`` of ``ranking``'s pixels; all
    fractions of the batch are imputed in one call."""
    n, c, h, w = x.shape
    masks = torch.cat([maps.mask_from_ranking(ranking, f, (h, w)) for f in fractions])
    images = imputer(x.repeat(len(fractions), 1, 1, 1), masks)
    preds = torch.cat([model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, images.shape[0], batch_size)])
    hits = (preds == y.repeat(len(fractions))).reshape(len(fractions), n)
    return [int(v) for v in hits.sum(dim=1)]


def _channel_mean(dataloader: Iterable) -> torch.Tensor:
    """Per-channel mean of every image the dataloader yields, in float64."""
    total, count = None, 0
    for batch in dataloader:
        x = batch[0].detach().double()
        total = x.sum(dim=(0, 2, 3)) if total is None else total + x.sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if total is None:
        raise ValueError("Expected argument `dataloader` to yield at least one batch, but it yielded none.")
    return (total / count).cpu()


def road(
    model: nn.Module,
    dataloader: Iterable,
    explainer: Explainer | str,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    order: Literal["morf", "lerf"] = "morf",
    imputer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    batch_size: int = 512,
) -> ROADResult:
    """How fast does accuracy fall when an explainer's top pixels are removed and noisily interpolated?

    Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022 (ROAD).
    For each batch the explainer's map for the true label is reduced with ``"sum_abs"`` and ranked (ties broken
    by a jitter seeded with ``seed``); for every fraction the first (``"morf"``) or last (``"lerf"``) pixels are
    removed, filled by ``imputer`` and the model's accuracy recorded. A seeded random ranking is scored on the
    same images as the reference.

    Args:
        model: the classifier, left unchanged (run in eval mode without gradients for the accuracies).
        dataloader: yields ``(inputs (N, C, H, W), labels (N,), ...)`` batches, e.g. a ``DataLoader``.
        explainer: an :class:`~captum_ext.Explainer` or a short name (copied, so the caller's is not advanced).
        fractions: Fractions of pixels removed. Default (0.1, 0.3, 0.5, 0.7, 0.9).
        order: ``"morf"`` (most relevant removed first) or ``"lerf"`` (least relevant first). Default ``"morf"``.
        imputer: Fills removed pixels. Default ``NoisyLinearImputer(mean=m)`` with ``m`` the per-channel mean of
            the dataloader's images (a fully removed image gets it), found in a first pass that only reads the
            data; so ``dataloader`` must be re-iterable (a ``DataLoader`` is).
        seed: Seeds the tie-breaking jitter and the random ranking. Default 0.
        batch_size: Imputed images per forward pass. Default 512.

    Returns:
        :class:`ROADResult` with per-fraction accuracies for the explainer and the random ranking.

    Raises:
        ValueError: bad ``fractions``, ``order`` or ``batch_size``, or an empty ``dataloader``.
        TypeError: ``model`` not an ``nn.Module``, or ``explainer`` neither an Explainer nor a short name.

    Example::

        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from captum_ext.models import SmallCNN
        >>> data = TensorDataset(torch.rand(8, 1, 32, 32), torch.randint(0, 10, (8,)))
        >>> result = road(SmallCNN(), DataLoader(data, batch_size=4), "saliency", fractions=(0.2, 0.6))
        >>> sorted(result.accuracy)
        [0.2, 0.6]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}.")
    fractions = check_fractions(fractions)
    if order not in ("morf", "lerf"):
        raise ValueError(f"Expected argument `order` to be one of 'morf', 'lerf', but got {order!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"Expected argument `batch_size` to be a positive int, but got {batch_size!r}.")
    recipe = as_explainer(explainer)
    random = Explainer("random", seed=seed)
    if imputer is None:
        imputer = NoisyLinearImputer(mean=_channel_mean(dataloader))
    device = model_device(model)
    correct = {"explainer": [0] * len(fractions), "random": [0] * len(fractions)}
    baseline = total = 0
    for batch in dataloader:
        x, y = batch[0].to(device), batch[1].to(device)
        for name, source in (("explainer", recipe), ("random", random)):
            saliency = source.saliency(model, x, y, reduce="sum_abs")
            ranking = maps.rank_pixels(saliency, seed=seed)
            if order == "lerf":
                ranking = ranking.flip(1)
            with torch.no_grad(), eval_mode(model):
                hits = _correct_after_removal(model, x, y, ranking, fractions, imputer, batch_size)
            correct[name] = [a + b for a, b in zip(correct[name], hits)]
        with torch.no_grad(), eval_mode(model):
            baseline += int((model(x).argmax(dim=1) == y).sum())
        total += int(y.numel())
    if total == 0:
        raise ValueError("Expected argument `dataloader` to yield at least one batch, but it yielded none.")
    return ROADResult(
        explainer=recipe.name,
        order=order,
        accuracy={f: c / total for f, c in zip(fractions, correct["explainer"])},
        random_accuracy={f: c / total for f, c in zip(fractions, correct["random"])},
        baseline_accuracy=baseline / total,
    )
