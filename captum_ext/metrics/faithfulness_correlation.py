"""Faithfulness correlation (Bhatt et al., IJCAI 2020) and IROF (Rieger & Hansen, 2020): do the attributions of a
set of features predict what removing that set does to the model's score?

* faithfulness correlation: for ``runs`` random subsets of ``subset_size`` input values (each channel's values
  counted separately, as Quantus does; the same subsets for every image, so a score does not depend on the other
  images of the batch or on a DDP shard), the Pearson correlation over the runs between the sum of the
  attributions in the subset and the drop of the target logit when the subset is set to each channel's minimum in
  the image ("black", also for normalised inputs; Quantus takes one minimum over all channels); higher is better.
  NaN where either series is constant.
* IROF, iterative removal of features: the image is cut into SLIC superpixels (:func:`superpixel_mask`, 100
  segments, compactness 1 on [0, 1]-scaled channels, which follows edges as scikit-image's Lab default does), which are replaced one after the
  other, in the order of their mean attribution (highest first), by the image's per-channel mean; the score is the
  mean over the steps of ``1 - p_t / p_0`` (the area over the curve of the class probability relative to the
  unperturbed one, per step), higher is better. Quantus 0.6.0 fills with the mean of the whole current batch
  (earlier replacements included), pads images with fewer segments with zeros, and returns the unnormalised area.

* monotonicity correlation (Nguyen & Martínez, 2020): the input values are taken in groups of ``features_in_step``
  in ascending order of ``|a|``; each group alone is set to ``samples`` uniform values (the same ``samples`` values
  for every group and image, so groups are compared on common draws), and the score is the Spearman correlation
  between a group's ``sum |a|`` and the mean squared change of the class probability; higher is better. Quantus
  draws a fresh value per group, and crashes when a probability is below its ``eps``.

The perturbed images are built and scored ``batch_size`` at a time, never all at once (at 224 px the monotonicity
correlation perturbs each image 94,080 times); ``batch_size=None`` (the default) is
:func:`~captum_ext.passes.forward_batch_size`.

Example::

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> x, a = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    >>> faithfulness_correlation(net, x, a, torch.tensor([0, 1]), runs=20, subset_size=8).shape
    torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn

from captum_ext._checks import check_finite, check_int, check_seed, class_targets
from captum_ext.attr.superpixels import superpixel_mask
from captum_ext.metrics._mean import MeanOverImages
from captum_ext.metrics._scores import class_scores
from captum_ext.metrics.similarity import average_ranks, pearson_rows
from captum_ext.model_output import OutputFn
from captum_ext.passes import check_batch_size, forward_batch_size

__all__ = [
    "faithfulness_correlation",
    "monotonicity_correlation",
    "irof",
    "FaithfulnessCorrelation",
    "MonotonicityCorrelation",
    "IROF",
]


def _check(inputs: torch.Tensor, attributions: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        raise ValueError(
            f"Expected argument `inputs` to be a float (N, C, H, W) tensor, but got {getattr(inputs, 'shape', inputs)!r}."
        )
    if (
        not isinstance(attributions, torch.Tensor)
        or attributions.shape[0] != inputs.shape[0]
        or attributions.dim() != 4
        or attributions.shape[-2:] != inputs.shape[-2:]
    ):
        raise ValueError(
            f"Expected argument `attributions` to be (N, C or 1, H, W) for inputs {tuple(inputs.shape)}, but got "
            f"{tuple(getattr(attributions, 'shape', ()))}."
        )
    check_finite("inputs", inputs)
    check_finite("attributions", attributions)


def _forward_batch(batch_size: int | None, inputs: torch.Tensor) -> int:
    return check_batch_size(batch_size) or forward_batch_size(inputs)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (N, P) tensors; NaN where a row is constant (no correlation is defined)."""
    constant = (a.amax(1) == a.amin(1)) | (b.amax(1) == b.amin(1))
    return torch.where(
        constant, torch.full((a.shape[0],), float("nan"), dtype=torch.float64, device=a.device), pearson_rows(a, b)
    )


def faithfulness_correlation(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target,
    runs: int = 100,
    subset_size: int = 224,
    seed: int = 0,
    batch_size: int | None = None,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(N,) Pearson correlation between subset attribution sums and logit drops over ``runs`` random subsets."""
    seed = check_seed(seed)
    _check(inputs, attributions)
    check_int("runs", runs, 2)
    n = inputs.shape[0]
    features = inputs[0].numel()
    subset_size = check_int("subset_size", subset_size, 1)
    if subset_size > features:
        raise ValueError(
            f"Expected argument `subset_size` to be at most the {features} input values, but got {subset_size}."
        )
    target = class_targets(target, n, None, inputs.device)
    batch_size = _forward_batch(batch_size, inputs)
    flat_x = inputs.detach().flatten(1)
    flat_a = attributions.detach().expand_as(inputs).flatten(1).double()
    gen = torch.Generator().manual_seed(seed)  # the same subsets for every image: a score never depends on the batch
    chosen = torch.rand(runs, features, generator=gen).argsort(dim=1)[:, :subset_size].to(inputs.device)
    black = inputs.detach().amin(dim=(2, 3), keepdim=True).expand_as(inputs).flatten(1)  # each channel's minimum

    def build(start: int, stop: int) -> torch.Tensor:  # image i: run i // n (0 = unperturbed) of image i % n
        index = torch.arange(start, stop, device=inputs.device)
        run, image = index // n, index % n
        out = flat_x[image].clone()
        perturbed = run > 0
        columns = chosen[run[perturbed] - 1]
        out[perturbed] = out[perturbed].scatter(1, columns, black[image[perturbed]].gather(1, columns))
        return out.reshape(-1, *inputs.shape[1:])

    scores = class_scores(model, build, target.repeat(runs + 1), batch_size, output_fn=output_fn).reshape(runs + 1, n)
    drops = scores[:1] - scores[1:]  # (runs, N)
    sums = flat_a[:, chosen].sum(2).T  # (runs, N)
    return _correlation(sums.T, drops.T).float()


def monotonicity_correlation(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target,
    features_in_step: int = 16,
    samples: int = 10,
    seed: int = 0,
    batch_size: int | None = None,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(N,) Spearman correlation between each group's ``sum |a|`` and the mean squared change of the class
    probability when that group alone is set to each of ``samples`` uniform values in [0, 1)."""
    seed = check_seed(seed)
    _check(inputs, attributions)
    n = inputs.shape[0]
    features = inputs[0].numel()
    step = check_int("features_in_step", features_in_step, 1)
    if features % step:
        raise ValueError(f"Expected argument `features_in_step` to divide the {features} input values, but got {step}.")
    check_int("samples", samples, 1)
    target = class_targets(target, n, None, inputs.device)
    batch_size = _forward_batch(batch_size, inputs)
    groups = features // step
    magnitude = attributions.detach().expand_as(inputs).flatten(1).abs().double()
    order = magnitude.argsort(dim=1, stable=True).reshape(n, groups, step)  # ascending |a|, as Quantus
    values = torch.rand(samples, generator=torch.Generator().manual_seed(seed)).to(inputs)
    flat = inputs.detach().flatten(1)

    def build(start: int, stop: int) -> torch.Tensor:  # the N originals, then (group, sample, image) in that order
        index = torch.arange(start, stop, device=inputs.device)
        image = index % n
        out = flat[image].clone()
        moved = index >= n
        k = index[moved] - n
        group, sample = k // (samples * n), (k // n) % samples
        columns = order[image[moved], group]  # (m, step)
        out[moved] = out[moved].scatter(1, columns, values[sample][:, None].expand_as(columns))
        return out.reshape(-1, *inputs.shape[1:])

    probabilities = class_scores(
        model, build, target.repeat(groups * samples + 1), batch_size, apply_softmax=True, output_fn=output_fn
    )
    base, moved = probabilities[:n], probabilities[n:].reshape(groups, samples, n)
    variance = ((moved - base[None, None]) ** 2).mean(1).T  # (N, groups)
    relevance = magnitude.gather(1, order.reshape(n, -1)).reshape(n, groups, step).sum(2)
    return _correlation(average_ranks(relevance), average_ranks(variance.double())).float()


def irof(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target,
    n_segments: int = 100,
    compactness: float = 1.0,
    batch_size: int | None = None,
    output_fn: OutputFn | None = None,
    *,
    unperturbed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) IROF: ``mean_t (1 - p_t / p_0)`` while SLIC superpixels are replaced by the image's per-channel mean,
    most relevant (highest mean attribution) first, cumulatively. Image i with K_i superpixels costs K_i forwards
    (one per step) plus one for ``p_0``, which ``unperturbed`` (the (N,) class probabilities of the unmodified images,
    as :func:`~captum_ext.metrics.faithfulness.perturbation_scores` shares them) saves; ``batch_size`` None is
    :func:`~captum_ext.passes.forward_batch_size`."""
    _check(inputs, attributions)
    n = inputs.shape[0]
    target = class_targets(target, n, None, inputs.device)
    batch_size = _forward_batch(batch_size, inputs)
    if unperturbed is not None and (not isinstance(unperturbed, torch.Tensor) or unperturbed.shape != (n,)):
        got = tuple(unperturbed.shape) if isinstance(unperturbed, torch.Tensor) else type(unperturbed).__name__
        raise ValueError(f"Expected argument `unperturbed` to be an (N,) = ({n},) tensor or None, but got {got}.")
    segments = superpixel_mask(inputs, n_segments, compactness)[:, 0]  # (N, H, W), ids 0..K_i-1
    counts = segments.flatten(1).amax(1) + 1
    k_max = int(counts.max())
    relevance = attributions.detach().double().mean(1)  # (N, H, W): the channel mean, as Quantus averages them
    sums = torch.zeros(n, k_max, dtype=torch.float64, device=inputs.device).scatter_add_(
        1, segments.flatten(1), relevance.flatten(1)
    )
    sizes = torch.zeros(n, k_max, dtype=torch.float64, device=inputs.device).scatter_add_(
        1, segments.flatten(1), torch.ones_like(relevance.flatten(1))
    )
    means = torch.where(sizes > 0, sums / sizes.clamp(min=1), torch.full_like(sums, -torch.inf))
    order = means.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(k_max, device=order.device).expand(n, -1))
    pixel_rank = rank.gather(1, segments.flatten(1)).reshape(n, 1, *inputs.shape[-2:])
    fill = inputs.detach().mean(dim=(2, 3), keepdim=True)
    x = inputs.detach()
    # only the steps each image has: (image, step) for step 1..K_i, and step 0 (unperturbed) unless given
    first = 1 if unperturbed is not None else 0
    steps = torch.arange(first, k_max + 1, device=inputs.device)
    needed = steps[None, :] <= counts[:, None]  # (N, steps)
    image, step = needed.nonzero(as_tuple=True)
    step = steps[step]

    def build(start: int, stop: int) -> torch.Tensor:
        removed = pixel_rank[image[start:stop]] < step[start:stop, None, None, None]
        return torch.where(removed, fill[image[start:stop]], x[image[start:stop]])

    probabilities = class_scores(model, build, target[image], batch_size, apply_softmax=True, output_fn=output_fn)
    scores = torch.zeros(n, k_max + 1, dtype=probabilities.dtype, device=inputs.device)
    scores[image, step] = probabilities
    if unperturbed is not None:
        scores[:, 0] = unperturbed.to(scores)
    ratios = scores[:, 1:] / scores[:, :1].clamp(min=torch.finfo(scores.dtype).tiny)  # (N, K)
    valid = torch.arange(k_max, device=inputs.device)[None, :] < counts[:, None]
    return ((1 - ratios) * valid).sum(1) / counts.to(ratios.dtype)


class FaithfulnessCorrelation(MeanOverImages):
    """Mean over images of :func:`faithfulness_correlation` (NaN images skipped, as a constant series has no
    correlation); DDP-synced; higher is better."""

    higher_is_better = True

    def __init__(
        self,
        runs: int = 100,
        subset_size: int = 224,
        seed: int = 0,
        batch_size: int | None = None,
        output_fn: OutputFn | None = None,
        **kwargs,
    ) -> None:
        seed = check_seed(seed)
        super().__init__(**kwargs)
        self.runs, self.subset_size = check_int("runs", runs, 2), check_int("subset_size", subset_size, 1)
        self.seed, self.batch_size, self.output_fn = seed, check_batch_size(batch_size), output_fn

    def update(self, model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target) -> None:
        """Add a batch: the model, the inputs, their attributions and the explained classes."""
        scores = faithfulness_correlation(
            model, inputs, attributions, target, self.runs, self.subset_size, self.seed, self.batch_size, self.output_fn
        )
        self.add(scores[~scores.isnan()])


class MonotonicityCorrelation(MeanOverImages):
    """Mean over images of :func:`monotonicity_correlation` (NaN images skipped); DDP-synced; higher is better."""

    higher_is_better = True

    def __init__(
        self,
        features_in_step: int = 16,
        samples: int = 10,
        seed: int = 0,
        batch_size: int | None = None,
        output_fn: OutputFn | None = None,
        **kwargs,
    ) -> None:
        seed = check_seed(seed)
        super().__init__(**kwargs)
        self.features_in_step, self.samples = (
            check_int("features_in_step", features_in_step, 1),
            check_int("samples", samples, 1),
        )
        self.seed, self.batch_size, self.output_fn = seed, check_batch_size(batch_size), output_fn

    def update(self, model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target) -> None:
        """Add a batch: the model, the inputs, their attributions and the explained classes."""
        scores = monotonicity_correlation(
            model,
            inputs,
            attributions,
            target,
            self.features_in_step,
            self.samples,
            self.seed,
            self.batch_size,
            self.output_fn,
        )
        self.add(scores[~scores.isnan()])


class IROF(MeanOverImages):
    """Mean over images of :func:`irof`; DDP-synced; higher is better."""

    higher_is_better = True

    def __init__(
        self,
        n_segments: int = 100,
        compactness: float = 1.0,
        batch_size: int | None = None,
        output_fn: OutputFn | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.n_segments, self.compactness = check_int("n_segments", n_segments, 1), float(compactness)
        self.batch_size, self.output_fn = check_batch_size(batch_size), output_fn

    def update(self, model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target) -> None:
        """Add a batch: the model, the inputs, their attributions and the explained classes."""
        self.add(
            irof(
                model, inputs, attributions, target, self.n_segments, self.compactness, self.batch_size, self.output_fn
            )
        )
