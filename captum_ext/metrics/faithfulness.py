"""Deletion / insertion AUC (Petsiuk et al. 2018) and AOPC (Samek et al. 2017) as torchmetrics Metrics.

Does the model's confidence fall fastest when the pixels an attribution ranks highest are removed first?
Pixels are ranked by the channel-reduced map (``"sum_abs"`` by default, ties broken by a seeded jitter) and
removed (deletion, AOPC) or inserted into a substrate (insertion) in ``steps`` equal steps. Every step of every
image is evaluated in large batches: ``N * (steps + 1)`` images, ``batch_size`` at a time, each batch built when it is
forwarded; an imputer whose fill ignores the mask (black, a blur) fills each image once for all its steps.

* deletion curve ``p_k``: the target probability with the first ``round(k / steps * H * W)`` ranked pixels
  replaced by the imputer (default black, ``ConstantImputer(0)``); ``DeletionAUC`` is its trapezoid area over
  the removed fraction in [0, 1] (lower is better).
* insertion curve: the same pixels *kept* and all others replaced (default ``BlurImputer(5)``, Petsiuk's
  blurred substrate); ``InsertionAUC`` is its area (higher is better).
* ``AOPC = 1 / (L + 1) * sum_{k=0..L} (p_0 - p_k)`` on the deletion curve with ``L = steps`` (higher is better).

Example::

    >>> import torch
    >>> from captum_ext.metrics import DeletionAUC
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x, attr = torch.rand(5, 1, 4, 4), torch.rand(5, 1, 4, 4)
    >>> metric = DeletionAUC(steps=4)
    >>> metric.update(model, x, attr, target=torch.tensor([0, 1, 2, 0, 1]))
    >>> metric.compute().shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, cast

import torch
from torch import nn

from captum_ext import maps
from captum_ext._checks import check_choice, check_finite, check_int, check_seed, class_targets
from captum_ext._context import eval_mode, full_precision
from captum_ext.imputation import BlurImputer, ConstantImputer, Imputer, impute
from captum_ext.metrics._mean import MeanOverImages
from captum_ext.metrics._scores import check_several_classes
from captum_ext.metrics.faithfulness_correlation import irof
from captum_ext.model_output import OutputFn, check_output_fn, logits
from captum_ext.normalization import Normalization, check_normalization
from captum_ext.passes import check_batch_size, forward_batch_size

__all__ = [
    "DeletionAUC",
    "InsertionAUC",
    "AOPC",
    "perturbation_curve",
    "perturbation_scores",
    "trapezoid_auc",
    "aopc",
]

ForwardFunc = Callable[[torch.Tensor], torch.Tensor]
_NAN_SCORES = "The model produces NaN or Inf for perturbed images; a score computed from them would mean nothing."


def _saliency(inputs: torch.Tensor, attributions: torch.Tensor, reduce: maps.Reduction) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        got = f"shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"Expected argument `inputs` to be a float (N, C, H, W) tensor, but got {got}.")
    n, _, h, w = inputs.shape
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"Expected argument `attributions` to be a tensor, but got {type(attributions).__name__}.")
    check_finite("inputs", inputs)
    if attributions.shape == inputs.shape:
        return check_finite("attributions", maps.reduce_channels(attributions.detach().float(), reduce))
    if attributions.shape == (n, h, w):
        return check_finite("attributions", attributions.detach().float())
    raise ValueError(
        f"Expected argument `attributions` of shape (N, C, H, W) = {tuple(inputs.shape)} or (N, H, W) = {(n, h, w)}, "
        f"but got {tuple(attributions.shape)}."
    )


def perturbation_curve(
    forward_func: ForwardFunc,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: int | torch.Tensor,
    steps: int = 16,
    mode: str = "deletion",
    imputer: Imputer | None = None,
    apply_softmax: bool = True,
    reduce: maps.Reduction = "sum_abs",
    batch_size: int | None = None,
    seed: int = 0,
    output_fn: OutputFn | None = None,
    normalization: Normalization | None = None,
    top1: bool = False,
) -> torch.Tensor:
    """The deletion or insertion curve of each image: the target's score after each of ``steps`` steps (or, with
    ``top1``, whether the target is still the top class: the mean over images is the accuracy curve).

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018.

    Args:
        forward_func: a model or function mapping (B, C, H, W) to (B, K) scores; an ``nn.Module`` is run in
            eval mode (each module's mode restored) without gradients, and is left unchanged.
        inputs: (N, C, H, W) float images.
        attributions: (N, C, H, W) attributions (reduced by ``reduce``) or (N, H, W) maps used as given.
        target: class index, or an (N,) integer tensor of per-image classes.
        steps: Number of equal steps from nothing to everything. Default 16.
        mode: ``"deletion"`` (remove the ranked pixels) or ``"insertion"`` (keep them, replace the rest).
            Default ``"deletion"``.
        imputer: Fills the removed pixels. Default ``ConstantImputer(0)`` for deletion, ``BlurImputer(5)`` for
            insertion.
        apply_softmax: Score with softmax probabilities rather than raw outputs. Default True.
        reduce: Channel reduction for (N, C, H, W) attributions. Default ``"sum_abs"``.
        batch_size: Perturbed images per forward pass, or None (default) for
            :func:`~captum_ext.passes.forward_batch_size` (512 on an accelerator, about 8 RGB images at 224 px on
            the CPU). The images of a batch are built when it is forwarded, so memory does not grow with ``steps``.
        seed: Seeds the tie-breaking jitter of the ranking. Default 0.
        output_fn: maps the model's output to (B, K) scores. Default the package's output rule
            (:func:`captum_ext.model_output.logits`: a tensor, ``.logits``, a dict's ``"logits"``, a tuple's first).
        normalization: the model's input normalisation, so that the default deletion fill is black in pixel space
            (:class:`~captum_ext.normalization.Normalization`). Default None (the inputs are pixels).
        top1: Return 1.0 where the target is the model's top class after the step, else 0.0, instead of its score
            (``apply_softmax`` is then irrelevant). Default False.

    Returns:
        (N, steps + 1) float tensor; column ``k`` is the score at fraction ``k / steps`` (column 0 the
        unmodified image for deletion, the full substrate for insertion).

    Raises:
        ValueError: mismatched shapes, a bad ``mode``, ``steps``, ``batch_size`` or ``reduce``.
        TypeError: ``imputer`` not callable.
    """
    steps = check_int("steps", steps, 1)
    batch_size = check_batch_size(batch_size)
    check_choice("mode", mode, ("deletion", "insertion"))
    maps.check_reduction(reduce)
    check_normalization(normalization)
    if imputer is None:
        imputer = ConstantImputer(0.0, normalization) if mode == "deletion" else BlurImputer(5.0)
    if not callable(imputer):
        raise TypeError(f"Expected argument `imputer` to be an Imputer (callable (inputs, mask)), but got {imputer!r}.")
    check_output_fn(output_fn)
    saliency = _saliency(inputs, attributions, reduce)
    h, w = inputs.shape[-2:]
    columns = [(mode, maps.pixel_count(k / steps, h * w)) for k in range(steps + 1)]
    return _step_scores(
        forward_func,
        inputs,
        saliency,
        target,
        columns,
        {mode: imputer},
        batch_size,
        apply_softmax,
        seed,
        output_fn,
        top1,
    )


def _step_scores(
    forward_func: ForwardFunc,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    target: int | torch.Tensor,
    columns: list[tuple[str, int]],
    imputers: dict[str, Imputer],
    batch_size: int | None,
    apply_softmax: bool,
    seed: int,
    output_fn: OutputFn | None,
    top1: bool = False,
) -> torch.Tensor:
    """(N, len(columns)) scores; column ``(mode, count)`` is each image with its ``count`` top-ranked pixels
    removed (``"deletion"``) or all but them removed (``"insertion"``), filled by ``imputers[mode]``. The perturbed
    images are built ``batch_size`` at a time, when forwarded; an imputer whose fill ignores the mask fills each
    image once."""
    n, c, h, w = inputs.shape
    batch_size = forward_batch_size(inputs) if batch_size is None else batch_size
    targets = class_targets(target, n, None, inputs.device)
    ranking = maps.rank_pixels(saliency.to(inputs.device), seed=seed)
    position = torch.empty_like(ranking)
    position.scatter_(1, ranking, torch.arange(h * w, device=ranking.device).expand(n, -1))
    x = inputs.detach()
    everything = torch.ones(h, w, dtype=torch.bool, device=x.device)
    fills = {
        mode: None if getattr(imp, "uses_mask", True) else impute(imp, x, everything) for mode, imp in imputers.items()
    }
    width = len(columns)
    count = torch.tensor([k for _, k in columns], device=x.device)
    inserting = torch.tensor([mode == "insertion" for mode, _ in columns], device=x.device)
    labels = targets.repeat_interleave(width)
    scores = torch.empty(n * width, dtype=torch.float32, device=x.device)
    module = forward_func if isinstance(forward_func, nn.Module) else nn.Identity()
    with torch.no_grad(), eval_mode(module), full_precision(x.device):
        for lo in range(0, n * width, batch_size):
            flat = torch.arange(lo, min(lo + batch_size, n * width), device=x.device)
            image, column = flat // width, flat % width  # perturbed image j: image j // width, column j % width
            chosen = (position[image] < count[column, None]).reshape(-1, 1, h, w)
            removed = chosen ^ inserting[column].reshape(-1, 1, 1, 1)
            perturbed = x[image]
            for mode, imputer in imputers.items():
                rows = (inserting[column] == (mode == "insertion")).nonzero()[:, 0]
                if len(rows) == 0:
                    continue
                fill = fills[mode]
                if fill is None:
                    filled = impute(imputer, perturbed[rows], removed[rows, 0])
                else:
                    filled = torch.where(removed[rows], fill[image[rows]], perturbed[rows])
                perturbed = filled if len(rows) == len(flat) else perturbed.index_copy(0, rows, filled)
            out = check_finite("model outputs", logits(forward_func(perturbed), output_fn), _NAN_SCORES)
            if lo == 0:
                class_targets(targets, n, out.shape[1])  # every target within the model's classes
                if apply_softmax and not top1:
                    check_several_classes(out, "; pass `apply_softmax=False` to score the raw output")
            if top1:
                scores[flat] = (out.argmax(dim=1) == labels[flat]).float()
                continue
            if apply_softmax:
                out = torch.softmax(out, dim=1)
            scores[flat] = out.gather(1, labels[flat, None])[:, 0].float()
    return scores.reshape(n, width)


#: What :func:`perturbation_scores` can compute from one ranking.
SharedMetric = Literal["deletion", "insertion", "aopc", "irof"]


def perturbation_scores(
    forward_func: ForwardFunc,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: int | torch.Tensor,
    metrics: Sequence[SharedMetric] = ("deletion", "insertion", "aopc"),
    steps: int = 16,
    deletion_imputer: Imputer | None = None,
    insertion_imputer: Imputer | None = None,
    reduce: maps.Reduction = "sum_abs",
    batch_size: int | None = None,
    seed: int = 0,
    output_fn: OutputFn | None = None,
    normalization: Normalization | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image deletion AUC, insertion AUC, AOPC and IROF from one set of model passes, shared where the images
    are the same: each unperturbed image is scored once for all of them (the first point of the deletion curve,
    the last of the insertion curve, IROF's reference probability), and AOPC reads the deletion curve. For N images
    that is ``N * (1 + steps * curves)`` forwards (plus IROF's superpixel steps) instead of ``N * (steps + 1)`` per
    metric. With imputers that fill each image on its own (black, the mean, the blur) each score equals its
    metric's (:class:`DeletionAUC`, :class:`InsertionAUC`, :class:`AOPC` with the same settings and softmax
    probabilities, :func:`~captum_ext.metrics.faithfulness_correlation.irof` with its defaults); an imputer whose
    fill depends on the batch (``NoisyLinearImputer``'s noise and default mean) gives slightly different values
    for different batchings, as it does in the metrics themselves.

    Args:
        forward_func, inputs, attributions, target, steps, reduce, batch_size, seed, output_fn, normalization: as
            :func:`perturbation_curve`.
        metrics: which scores to return, from ``"deletion"``, ``"insertion"``, ``"aopc"``, ``"irof"``. Default the
            first three.
        deletion_imputer: fills deleted pixels (deletion, AOPC). Default black, ``ConstantImputer(0)``.
        insertion_imputer: the insertion substrate. Default ``BlurImputer(5)``.

    Returns:
        ``{metric: (N,) float tensor}`` for each name in ``metrics``.

    Raises:
        ValueError: an unknown or repeated metric name, and what :func:`perturbation_curve` raises.
        TypeError: ``"irof"`` asked with a ``forward_func`` that is not an ``nn.Module``; a non-callable imputer.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> scores = perturbation_scores(model, torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4), 0, steps=4)
        >>> sorted(scores), scores["aopc"].shape
        (['aopc', 'deletion', 'insertion'], torch.Size([2]))
    """
    names = ("deletion", "insertion", "aopc", "irof")
    if "irof" in metrics and not isinstance(forward_func, nn.Module):
        raise TypeError(f"IROF needs `forward_func` to be an nn.Module, but got {type(forward_func).__name__}.")
    if (
        isinstance(metrics, str)
        or not metrics
        or any(m not in names for m in metrics)
        or len(set(metrics)) != len(metrics)
    ):
        raise ValueError(
            f"Expected argument `metrics` to hold distinct names from {', '.join(map(repr, names))}, but got {metrics!r}."
        )
    steps = check_int("steps", steps, 1)
    batch_size = check_batch_size(batch_size)
    maps.check_reduction(reduce)
    check_seed(seed)
    check_normalization(normalization)
    check_output_fn(output_fn)
    imputers = {
        "deletion": ConstantImputer(0.0, normalization) if deletion_imputer is None else deletion_imputer,
        "insertion": BlurImputer(5.0) if insertion_imputer is None else insertion_imputer,
    }
    for mode, imputer in imputers.items():
        if not callable(imputer):
            raise TypeError(f"Expected argument `{mode}_imputer` to be an Imputer or None, but got {imputer!r}.")
    saliency = _saliency(inputs, attributions, reduce)
    if "irof" in metrics and attributions.shape != inputs.shape:
        raise ValueError(
            f"Expected argument `attributions` of the inputs' shape {tuple(inputs.shape)} for IROF, but got "
            f"{tuple(attributions.shape)}."
        )
    h, w = inputs.shape[-2:]
    counts = [maps.pixel_count(k / steps, h * w) for k in range(steps + 1)]
    deleting = "deletion" in metrics or "aopc" in metrics
    inserting = "insertion" in metrics
    columns = [("deletion", 0)]  # the unperturbed image, shared
    columns += [("deletion", k) for k in counts[1:]] if deleting else []
    columns += [("insertion", k) for k in counts[:-1]] if inserting else []
    used = {mode: imputers[mode] for mode in {mode for mode, _ in columns}}
    scores = _step_scores(forward_func, inputs, saliency, target, columns, used, batch_size, True, seed, output_fn)
    out: dict[str, torch.Tensor] = {}
    if deleting:
        deletion = scores[:, : steps + 1]
        if "deletion" in metrics:
            out["deletion"] = trapezoid_auc(deletion)
        if "aopc" in metrics:
            out["aopc"] = aopc(deletion)
    if inserting:
        out["insertion"] = trapezoid_auc(torch.cat([scores[:, len(columns) - steps :], scores[:, :1]], dim=1))
    if "irof" in metrics:
        model = cast(nn.Module, forward_func)  # checked above
        out["irof"] = irof(
            model, inputs, attributions, target, batch_size=batch_size, output_fn=output_fn, unperturbed=scores[:, 0]
        )
    return {m: out[m] for m in metrics}


def trapezoid_auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under (N, L + 1) curves sampled at fractions 0, 1/L, ..., 1; returns (N,)."""
    steps = curve.shape[1] - 1
    return (curve[:, :-1] + curve[:, 1:]).sum(dim=1) / (2 * steps)


def aopc(curve: torch.Tensor) -> torch.Tensor:
    """Samek et al.'s AOPC of (N, L + 1) deletion curves: ``mean_k (p_0 - p_k)`` over k = 0..L; returns (N,)."""
    return (curve[:, :1] - curve).mean(dim=1)


class _PerturbationMetric(MeanOverImages):
    """Shared argument checks; the mean of per-image scores (:class:`MeanOverImages`: summed across ranks)."""

    _mode = "deletion"

    def __init__(
        self,
        steps: int = 16,
        imputer: Imputer | None = None,
        apply_softmax: bool = True,
        reduce: maps.Reduction = "sum_abs",
        batch_size: int | None = None,
        seed: int = 0,
        output_fn: OutputFn | None = None,
        normalization: Normalization | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.steps = check_int("steps", steps, 1)
        self.batch_size: int | None = check_batch_size(batch_size)
        if imputer is not None and not callable(imputer):
            raise TypeError(f"Expected argument `imputer` to be an Imputer or None, but got {imputer!r}.")
        if not isinstance(apply_softmax, bool):
            raise TypeError(f"Expected argument `apply_softmax` to be a bool, but got {apply_softmax!r}.")
        maps.check_reduction(reduce)
        check_seed(seed)
        self.imputer: Imputer | None = imputer
        self.apply_softmax: bool = apply_softmax
        self.reduce: maps.Reduction = reduce
        self.seed: int = int(seed)
        self.output_fn: OutputFn | None = check_output_fn(output_fn)
        self.normalization: Normalization | None = check_normalization(normalization)

    def _score(self, curve: torch.Tensor) -> torch.Tensor:
        """Per-image score of (N, steps + 1) curves: the area under each (AOPC overrides it)."""
        return trapezoid_auc(curve)

    def update(
        self, forward_func: ForwardFunc, inputs: torch.Tensor, attributions: torch.Tensor, target: int | torch.Tensor
    ) -> None:
        """Score a batch: ``inputs`` (N, C, H, W), ``attributions`` (N, C, H, W) or (N, H, W), ``target`` int or (N,)."""
        curve = perturbation_curve(
            forward_func,
            inputs,
            attributions,
            target,
            steps=self.steps,
            mode=self._mode,
            imputer=self.imputer,
            apply_softmax=self.apply_softmax,
            reduce=self.reduce,
            batch_size=self.batch_size,
            seed=self.seed,
            output_fn=self.output_fn,
            normalization=self.normalization,
        )
        self.add(self._score(curve))


class DeletionAUC(_PerturbationMetric):
    """Area under the deletion curve: how fast the target probability falls as top-ranked pixels are removed.

    Petsiuk et al., "RISE", BMVC 2018. Lower is better. See :func:`perturbation_curve` for the procedure.

    Args:
        steps: Number of equal deletion steps. Default 16.
        imputer: Fills deleted pixels. Default None (black: ``ConstantImputer(0)``, Petsiuk's substrate).
        apply_softmax: Use softmax probabilities of the target. Default True.
        reduce: Channel reduction of (N, C, H, W) attributions. Default ``"sum_abs"``.
        batch_size: Perturbed images per forward pass, or None (default) for
            :func:`~captum_ext.passes.forward_batch_size`.
        seed: Seeds the tie-breaking of the ranking. Default 0.
        output_fn: maps the model's output to scores. Default the package's output rule.
        normalization: the model's input normalisation (black is then black in pixel space). Default None.
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ...).

    Returns:
        ``compute()``: scalar tensor, the mean AUC in [0, 1] (with softmax) over all images seen.

    Raises:
        ValueError: a non-positive ``steps`` / ``batch_size`` or an unknown ``reduce``; bad shapes in ``update``.
        TypeError: a non-callable ``imputer`` or a non-bool ``apply_softmax``.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> metric = DeletionAUC(steps=4)
        >>> metric.update(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), target=1)
        >>> bool(0 <= metric.compute() <= 1)
        True
    """

    higher_is_better = False
    _mode = "deletion"


class InsertionAUC(_PerturbationMetric):
    """Area under the insertion curve: how fast the target probability rises as top-ranked pixels are restored.

    Petsiuk et al., "RISE", BMVC 2018. Higher is better. The image starts as the imputer's substrate (default
    ``BlurImputer(5)``, Petsiuk's blurred image) and the ranked pixels are put back in ``steps`` equal steps.
    Args, Returns and Raises as :class:`DeletionAUC`.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> metric = InsertionAUC(steps=4)
        >>> metric.update(model, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), target=torch.tensor([0, 1, 1]))
        >>> bool(0 <= metric.compute() <= 1)
        True
    """

    higher_is_better = True
    _mode = "insertion"


class AOPC(_PerturbationMetric):
    """Area over the MoRF perturbation curve: the mean drop of the target score as top pixels are removed.

    Samek et al., "Evaluating the Visualization of What a Deep Neural Network Has Learned", IEEE TNNLS 2017:
    ``AOPC = 1 / (L + 1) * sum_{k=0..L} (f(x^0) - f(x^k))`` with ``L = steps`` single-pixel-fraction steps (not
    Samek's 9x9 regions) and the deletion imputer (default black). Higher is better. Args, Returns and Raises as
    :class:`DeletionAUC`.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> metric = AOPC(steps=4)
        >>> metric.update(model, torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4), target=0)
        >>> bool(-1 <= metric.compute() <= 1)
        True
    """

    higher_is_better = True
    _mode = "deletion"

    def _score(self, curve: torch.Tensor) -> torch.Tensor:
        return aopc(curve)
