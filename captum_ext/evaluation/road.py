"""ROAD (Rong et al., ICML 2022): remove pixels by rank, fill them by noisy linear imputation, measure accuracy.

No retraining: the noisy linear fill leaks far less of the removed shape than a constant would, which is what
lets the unmodified model be evaluated on the perturbed images (Rong et al.'s argument).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from captum_ext import maps
from captum_ext._checks import check_choice, check_seed
from captum_ext._context import eval_mode
from captum_ext._model import model_device, predict
from captum_ext.batches import Unpack, check_unpack, unpack_batch
from captum_ext.evaluation._common import check_fractions
from captum_ext.evaluation.results import ROADResult
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.imputation import NoisyLinearImputer, impute
from captum_ext.model_output import OutputFn, check_output_fn
from captum_ext.passes import check_batch_size, forward_batch_size

__all__ = ["road"]


def _correct_after_removal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ranking: torch.Tensor,
    fractions: list[float],
    imputer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
    output_fn: OutputFn | None,
) -> list[int]:
    """Correct predictions per fraction after removing the first ``fraction`` of ``ranking``'s pixels; all
    fractions of the batch are imputed in one call."""
    n, c, h, w = x.shape
    masks = torch.cat([maps.mask_from_ranking(ranking, f, (h, w)) for f in fractions])
    images = impute(imputer, x.repeat(len(fractions), 1, 1, 1), masks)
    preds = torch.cat(
        [predict(model, images[i : i + batch_size], output_fn) for i in range(0, images.shape[0], batch_size)]
    )
    hits = (preds == y.repeat(len(fractions))).reshape(len(fractions), n)
    return [int(v) for v in hits.sum(dim=1)]


def _check_arguments(
    model: object, fractions: Sequence[float], order: str, batch_size: int | None, output_fn: object, unpack: object
) -> list[float]:
    """ROAD's argument checks; returns the fractions as floats."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}.")
    check_choice("order", order, ("morf", "lerf"))
    check_batch_size(batch_size)
    check_output_fn(output_fn)
    check_unpack(unpack)
    return check_fractions(fractions)


def _removal_order(
    source: Explainer,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    order: str,
    seed: int,
    output_fn: OutputFn | None,
) -> torch.Tensor:
    """(N, H * W) pixel indices in the order they are removed: most relevant first (MoRF) or least (LeRF)."""
    ranking = maps.rank_pixels(source.saliency(model, x, y, reduce="sum_abs", output_fn=output_fn), seed=seed)
    return ranking.flip(1) if order == "lerf" else ranking


def _correct_when_blank(
    model: nn.Module, shape: torch.Size, y: torch.Tensor, mean: torch.Tensor, output_fn: OutputFn | None
) -> int:
    """Correct predictions on images with every pixel removed: the per-channel ``mean`` plus the imputer's noise."""
    device = y.device
    whole = torch.ones(shape[0], *shape[2:], dtype=torch.bool, device=device)
    images = NoisyLinearImputer(mean=mean)(torch.zeros(shape, device=device), whole)
    with torch.no_grad(), eval_mode(model):
        return int((predict(model, images, output_fn) == y).sum())


def road(
    model: nn.Module,
    dataloader: Iterable,
    explainer: Explainer | str,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    order: Literal["morf", "lerf"] = "morf",
    imputer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    output_fn: OutputFn | None = None,
    unpack: Unpack | None = None,
) -> ROADResult:
    """How fast does accuracy fall when an explainer's top pixels are removed and noisily interpolated?

    Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022 (ROAD).
    For each batch the explainer's map for the true label is reduced with ``"sum_abs"`` and ranked (ties broken
    by a jitter seeded with ``seed``); for every fraction the first (``"morf"``) or last (``"lerf"``) pixels are
    removed, filled by ``imputer`` and the model's accuracy recorded. A seeded random ranking is scored on the
    same images as the reference.

    Args:
        model: the classifier, left unchanged (run in eval mode without gradients for the accuracies).
        dataloader: yields batches of (N, C, H, W) images and (N,) labels, e.g. a ``DataLoader``: tuples, or dicts
            with the usual keys (see :func:`captum_ext.batches.unpack_batch`).
        explainer: an :class:`~captum_ext.Explainer` or a short name (copied, so the caller's is not advanced).
        fractions: Fractions of pixels removed. Default (0.1, 0.3, 0.5, 0.7, 0.9).
        order: ``"morf"`` (most relevant removed first) or ``"lerf"`` (least relevant first). Default ``"morf"``.
        imputer: Fills removed pixels. Default ``NoisyLinearImputer()``, with a fully removed image (a fraction
            that removes every pixel) filled with the per-channel mean of all the dataloader's images plus the
            imputer's noise: those images are scored after the single pass, once the mean is known.
        seed: Seeds the tie-breaking jitter and the random ranking. Default 0.
        batch_size: Imputed images per forward pass, or None (default) for
            :func:`~captum_ext.passes.forward_batch_size`.
        output_fn: maps the model's output to (N, classes) scores. Default the package's output rule.
        unpack: maps a batch to ``(images, labels)``. Default the package's batch rule.

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
    seed = check_seed(seed)
    fractions = _check_arguments(model, fractions, order, batch_size, output_fn, unpack)
    recipe = as_explainer(explainer)
    random = Explainer("random", seed=seed)
    default_fill = imputer is None
    imputer = NoisyLinearImputer() if imputer is None else imputer
    device = model_device(model)
    correct = {"explainer": [0] * len(fractions), "random": [0] * len(fractions)}
    baseline = total = pixels = 0
    channel_sum = torch.zeros((), dtype=torch.float64)  # becomes per-channel at the first batch
    blank: list[tuple[torch.Size, torch.Tensor, list[bool]]] = []  # batches whose fully removed images await the mean
    for batch in dataloader:
        x, y = unpack_batch(batch, unpack)
        x, y = x.to(device), torch.as_tensor(y).to(device)
        h, w = x.shape[-2:]
        deferred = [default_fill and maps.pixel_count(f, h * w) == h * w for f in fractions]
        scored = [f for f, later in zip(fractions, deferred) if not later]
        for name, source in (("explainer", recipe), ("random", random)):
            ranking = _removal_order(source, model, x, y, order, seed, output_fn)
            with torch.no_grad(), eval_mode(model):
                hits = iter(
                    _correct_after_removal(
                        model, x, y, ranking, scored, imputer, batch_size or forward_batch_size(x), output_fn
                    )
                    if scored
                    else ()
                )
            correct[name] = [c + (0 if later else next(hits)) for c, later in zip(correct[name], deferred)]
        if any(deferred):
            blank.append((x.shape, y, deferred))
        with torch.no_grad(), eval_mode(model):
            baseline += int((predict(model, x, output_fn) == y).sum())
        channel_sum = channel_sum + x.detach().double().sum(dim=(0, 2, 3))
        pixels += x.shape[0] * h * w
        total += int(y.numel())
    if total == 0:
        raise ValueError("Expected argument `dataloader` to yield at least one batch, but it yielded none.")
    mean = (channel_sum / max(pixels, 1)).float().cpu()
    for shape, y, deferred in blank:  # every pixel removed: the dataset mean plus noise, whatever the ranking
        blank_hits = _correct_when_blank(model, shape, y, mean, output_fn)
        for name in correct:
            correct[name] = [c + (blank_hits if later else 0) for c, later in zip(correct[name], deferred)]
    return ROADResult(
        explainer=recipe.name,
        order=order,
        accuracy={f: c / total for f, c in zip(fractions, correct["explainer"])},
        random_accuracy={f: c / total for f, c in zip(fractions, correct["random"])},
        baseline_accuracy=baseline / total,
    )
