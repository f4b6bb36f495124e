"""``CleverHansAudit``: does a class rely on a spurious region (a watermark, a copyright tag)? Find it and prove it.

Lapuschkin et al. (2019), "Unmasking Clever Hans predictors and assessing what machines really learn", Nature
Communications 10: the PASCAL VOC horse classifier whose heatmaps, averaged over all horse images, sit on the
copyright tag. Arras, Osman & Samek (2022), Information Fusion 81: relevance mass and rank accuracy.

Per audited class ``c`` (its images: label ``c`` with ``target="label"``, prediction ``c`` with
``target="prediction"``) the audit measures, with ``R`` the positive part of each map and ``G`` the region:

* attribution evidence: ``relevance_mass`` (mean share of ``R`` inside ``G``), ``area`` (``|G| / (H W)``), their
  ``ratio`` (1 is chance), ``pointing_game``, ``rank_accuracy``; ``specificity``, the class's ratio over the ratio
  of all the other images of the probe in the same region (how much more this class looks there than the rest of the task
  does); ``consistency``, the share of the class's images whose own ratio reaches ``ratio_threshold``;
* the class-mean map: the mean of the maps each normalised to sum 1 (the "average heatmap of all horse images"),
  so its mass inside ``G`` equals ``relevance_mass``;
* counterfactuals on the images labelled ``c``: ``accuracy_drop``, accuracy before minus after filling ``G`` with
  the imputer; ``flip_rate``, the share of the images of other classes (not already predicted ``c``) that the
  model predicts as ``c`` once ``G`` is pasted on them from the class image with the highest relevance mass in
  ``G`` (``flip_source``, its index among the audited images; at most ``flip_images`` of them, evenly spaced;
  images whose prediction changes when their own ``G`` is imputed are left out, since covering *their* shortcut
  would count as a flip);
  the same two interventions on **placebo** regions (``G`` moved to 8 seeded places that do not overlap it:
  ``placebo_drop``, ``placebo_flip_rate``) and ``intervention_p``, the paired exact sign test that the region
  changes more predictions than its placebos (Bonferroni over the two tests).

A class is **flagged** when the intervention shows that it relies on the region and every other piece of evidence
that applies agrees (:func:`flag_rule`; all in the report):

* counterfactual (decides, :func:`counterfactual_evidence`): ``accuracy_drop - placebo_drop >= drop_threshold``
  (default 0.1) with ``2 p_drop < significance`` (default 0.01), or the same for the flip rate (``flip_threshold``
  0.1, ``p_flip``): each test decides on its own size and its own significance. Issue #13: at 224 px a ResNet-18 that reads a
  24x24 corner square (accuracy drop 0.70, flip rate 0.89) had a relevance ratio of only 2.2: a digit-calibrated
  ratio threshold must not veto a causal test;
* attribution (reported): ``ratio >= ratio_threshold`` (default 3.0); ``agreement`` says whether the maps and the
  intervention agree, and which one disagrees;
* control (only when a ``control`` model is given): ``ratio >= control_factor * control_ratio`` (default 2.0), the
  control's ratio measured with the same explainer, images and region. Some methods favour bright pixels, so a
  bright tag draws relevance even from a model that does not use it: the control tells the two apart;
* discovery mode only (``region=None``), the candidate must be compact (``area <= max_area``, default 0.1),
  consistent (``consistency >= 0.5``) and off the object (``specificity >= specificity_threshold``, default 8.0:
  the digit strokes, unlike a tag, draw relevance from every class).

Discovery: per class, the class-mean map is thresholded at half its maximum; the 8-connected component holding
the maximum, boxed and widened by one pixel, is the candidate ``region`` (a half-open ``(x0, y0, x1, y1)`` box);
the candidate is then measured and verified by the counterfactuals exactly as a given region.

Default imputer: :class:`~captum_ext.imputation.MeanImputer` with the per-channel mean of the audited images (the
audit does not know the training mean; pass ``MeanImputer(datamodule.train_mean)`` to use it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import binomtest
from torch import nn

from captum_ext._checks import (
    TargetSource,
    check_bool,
    check_classes,
    check_finite,
    check_int,
    check_real,
    check_target_source,
)
from captum_ext._context import eval_mode, full_precision
from captum_ext._model import model_device
from captum_ext.audit.refine import InterventionEffect, refine_box
from captum_ext.audit.report import AuditReport
from captum_ext.batches import Unpack, check_unpack, unpack_batch
from captum_ext.boxes import box_to_mask, check_box, mask_to_box
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.imputation import Imputer, MeanImputer, impute
from captum_ext.maps import normalize_sum
from captum_ext.metrics.localisation import (
    check_region,
    pointing_game,
    positive_map,
    relevance_mass,
    relevance_rank_accuracy,
)
from captum_ext.model_output import OutputFn, check_output_fn, logits

__all__ = ["CleverHansAudit", "box_to_mask", "mask_to_box"]  # the box helpers live in captum_ext.boxes


def _positive_real(name: str, value: Any, upper: float | None = None) -> float:
    return check_real(name, value, 0.0, math.inf if upper is None else upper, low_open=True)


def _collect(data: Any, max_images: int | None, unpack: Unpack | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) and labels (N,) from an (images, labels) pair or an iterable of batches (tuples, dicts with
    the usual keys, or whatever ``unpack`` reads)."""
    expected = "an (images, labels) pair of tensors or an iterable (DataLoader) of (images, labels) batches"
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        batches: Iterable = [data]
    elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str)):
        batches = data
    else:
        raise TypeError(f"Expected argument `data` to be {expected}, but got {type(data).__name__}.")
    xs, ys, count = [], [], 0
    for batch in batches:
        x, y = unpack_batch(batch, unpack)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Expected the images in `data` to be a float (N, C, H, W) tensor, but got {got}.")
        y = torch.as_tensor(y)
        if y.shape != (x.shape[0],):
            raise ValueError(f"Expected the labels in `data` to have shape ({x.shape[0]},), but got {tuple(y.shape)}.")
        check_finite("images in `data`", x)
        xs.append(x.detach())
        ys.append(y.detach().long())
        count += x.shape[0]
        if max_images is not None and count >= max_images:
            break
    if not xs:
        raise ValueError("Expected argument `data` to hold at least one image, but it is empty.")
    x, y = torch.cat(xs), torch.cat(ys)
    if max_images is not None:
        x, y = x[:max_images], y[:max_images]
    return x, y


def placebo_regions(region: torch.Tensor, count: int = 8) -> torch.Tensor:
    """``count`` copies of ``region`` moved to seeded random places that do not overlap it: (count, H, W) bool.

    The intervention's control: removing (or pasting) a region of the same size and shape anywhere changes some
    predictions; a shortcut region must change significantly more than that. Moves wrap around the image edges
    (the area is kept). When the region covers too much of the image for a disjoint copy, there is none: (0, H, W).
    """
    h, w = region.shape
    gen = torch.Generator().manual_seed(0)
    moved: list[torch.Tensor] = []  # empty when the region covers too much of the image for a disjoint copy
    for _ in range(50 * count):
        if len(moved) == count:
            break
        shift = (int(torch.randint(h, (), generator=gen)), int(torch.randint(w, (), generator=gen)))
        candidate = torch.roll(region, shift, dims=(0, 1))
        if not bool((candidate & region).any()):
            moved.append(candidate)
    return torch.stack(moved) if moved else torch.zeros(0, h, w, dtype=torch.bool)


_REFINE_IMAGES = 32  # images of the class, and of the others, that refine a discovered box


def _evenly(indices: torch.Tensor, count: int) -> torch.Tensor:
    """At most ``count`` of ``indices``, evenly spaced (no randomness)."""
    if len(indices) <= count:
        return indices
    return indices[torch.linspace(0, len(indices) - 1, count).round().long()]


def _cycle(masks: torch.Tensor, n: int) -> torch.Tensor:
    """(n, H, W): the masks repeated in turn, one per image."""
    return masks[torch.arange(n) % len(masks)]


def _sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test (McNemar) p-value that ``wins`` exceed ``losses`` among the discordant pairs."""
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) if wins + losses else 1.0


def counterfactual_evidence(entry: dict[str, Any], thresholds: dict[str, float]) -> bool:
    """The intervention says the class relies on the region, by either test on its own: removing the region costs at
    least ``drop_threshold`` more accuracy than removing its placebos, with the paired sign test below
    ``significance`` (Bonferroni over the two tests); or pasting it flips at least ``flip_threshold`` more of the
    other images than pasting its placebos, with its test below ``significance``. No digit-calibrated constant alone
    decides it: the placebo is measured on the same images. Without a placebo (a region too large for a disjoint
    copy: ``p_drop`` / ``p_flip`` are NaN) nothing can be judged and the answer is False: an effect with nothing to
    compare it with is no evidence (see :func:`evidence_verdicts`, ``"localised"``).

    Example::

        >>> t = {"accuracy_drop": 0.1, "flip_rate": 0.1, "significance": 0.01}
        >>> entry = {"accuracy_drop": 0.15, "placebo_drop": 0.15, "p_drop": 1.0,   # large, but so is the placebo's
        ...          "flip_rate": 0.06, "placebo_flip_rate": 0.0, "p_flip": 2e-4}  # significant, but small
        >>> counterfactual_evidence(entry, t)
        False
    """
    tests = (("accuracy_drop", "placebo_drop", "p_drop"), ("flip_rate", "placebo_flip_rate", "p_flip"))
    for effect, placebo, p in tests:
        if math.isnan(entry[p]) or math.isnan(entry[effect]):  # no placebo, or no images to measure it on
            continue
        if entry[effect] - entry[placebo] >= thresholds[effect] and 2 * entry[p] < thresholds["significance"]:
            return True
    return False


def agreement(attribution: bool, intervention: bool) -> str:
    """Whether the map and the intervention tell the same story about the region (reported, never hidden)."""
    if attribution == intervention:
        return "both" if attribution else "neither"
    if intervention:
        return "intervention only: the model relies on the region but the maps do not show it"
    return "attribution only: the maps point at the region but removing or pasting it changes little"


def evidence_verdicts(entry: dict[str, Any], thresholds: dict[str, float], discovered: bool) -> dict[str, bool | None]:
    """Each criterion's verdict for one class's ``entry``: ``"localised"`` (the region covers at most ``max_area``
    and a disjoint placebo fits beside it: otherwise the cue is global or the evidence diffuse, and no region can be
    said to be relied on), ``"attribution"`` (ratio at least ``ratio``), ``"counterfactual"``
    (:func:`counterfactual_evidence`), ``"control"`` (ratio at least ``control_factor`` times the control's; None
    without a control) and ``"candidate"`` (a discovered region that is small, consistent and specific; None for a
    given region). :func:`flag_rule` decides from them."""
    t = thresholds
    return {
        "localised": bool(entry["area"] <= t["max_area"] and not math.isnan(entry["intervention_p"])),
        "attribution": entry["ratio"] >= t["ratio"],
        "counterfactual": counterfactual_evidence(entry, t),
        "control": None
        if entry["control_ratio"] is None
        else entry["ratio"] >= t["control_factor"] * entry["control_ratio"],
        "candidate": bool(
            entry["area"] <= t["max_area"]
            and entry["consistency"] >= t["consistency"]
            and entry["specificity"] >= t["specificity"]
        )
        if discovered
        else None,
    }


def flag_rule(evidence: dict[str, bool | None]) -> bool:
    """A class is flagged when the region is localised, the intervention shows the class relies on it (the causal
    test; the attribution ratio is reported beside it, see :func:`agreement`), the control model (when given) puts
    clearly less relevance there, and in discovery mode the candidate is compact, consistent and off the object."""
    return bool(evidence["counterfactual"]) and all(
        value for key, value in evidence.items() if key not in ("attribution", "counterfactual") and value is not None
    )


def reason(entry: dict[str, Any], thresholds: dict[str, float]) -> str:
    """One line saying why a class was, or was not, flagged: the deciding evidence with its numbers (the first
    criterion that failed, in the order of :func:`flag_rule`).

    Example::

        >>> entry = {"area": 0.3, "evidence": {"localised": False}, "flagged": False}
        >>> reason(entry, {"max_area": 0.1})
        'not flagged: not localised: the region covers 30.0% of the image, more than max_area (10.0%): a global cue or diffuse evidence'
    """
    t, evidence = thresholds, entry.get("evidence")
    if evidence is None:
        return "not flagged: no positive relevance for this class, so no candidate region"
    if not evidence["localised"]:
        if entry["area"] > t["max_area"]:
            return (
                f"not flagged: not localised: the region covers {entry['area']:.1%} of the image, more than max_area "
                f"({t['max_area']:.1%}): a global cue or diffuse evidence"
            )
        return "not flagged: not localised: no disjoint placebo region fits beside it, so the intervention cannot be judged"
    drop = f"removing the region costs {entry['accuracy_drop']:+.2f} accuracy (placebo {entry['placebo_drop']:+.2f})"
    flip = f"pasting it turns {entry['flip_rate']:.2f} of other images into the class (placebo {entry['placebo_flip_rate']:.2f})"
    intervention = f"{drop}, {flip}, p = {entry['intervention_p']:.0e}"
    if not evidence["counterfactual"]:
        return f"not flagged: the intervention changes no more than its placebos: {intervention}"
    if evidence["control"] is False:
        return (
            f"not flagged: the control model looks there too (ratio {entry['ratio']:.2f} against the control's "
            f"{entry['control_ratio']:.2f}, less than {t['control_factor']:g}x)"
        )
    if evidence["candidate"] is False:
        if entry["specificity"] < t["specificity"]:
            return (
                f"not flagged: the other classes look there too, as at a part of the object (specificity "
                f"{entry['specificity']:.1f} < {t['specificity']:g})"
            )
        return (
            f"not flagged: the class's maps do not agree on the region (consistency {entry['consistency']:.2f} < "
            f"{t['consistency']:g})"
        )
    disagreement = "" if ":" not in entry["agreement"] else f"; {entry['agreement'].split(':')[0]}"
    return f"flagged: {intervention}{disagreement}"


class CleverHansAudit:
    """Does any class rely on a spurious region? Measure it per class and prove it by intervention.

    Reference: Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really learn",
    Nature Communications 10, 2019; Arras, Osman & Samek, "CLEVR-XAI", Information Fusion 81, 2022. The evidence,
    the flag rule and discovery are described in the module docstring.

    Args:
        explainer: an :class:`~captum_ext.Explainer` or a short name; the positive part of its channel-summed map is
            used. ``"input_x_gradient"``, ``"integrated_gradients"`` and ``"gradcam"`` localise a tag; plain
            gradients do not (see docs/audit.md).
        region: the suspected region, an (H, W) bool mask or a half-open ``(x0, y0, x1, y1)`` box; ``None`` to
            discover one per class. Default None.
        imputer: fills the region for ``accuracy_drop``. Default ``MeanImputer`` of the audited images'
            per-channel mean.
        classes: classes to audit; each must occur in the data. Default every class found.
        target: explain (and group by) the true ``"label"`` or the model's ``"prediction"``. Default ``"label"``.
        ratio_threshold: Default 3.0. drop_threshold: Default 0.1. flip_threshold: Default 0.1.
        control_factor: Default 2.0. specificity_threshold: Default 8.0. max_area: Default 0.1.
        consistency_threshold: Default 0.5.
        refine: in discovery mode, grow and shrink each class's candidate box by intervention
            (:func:`captum_ext.audit.refine.refine_box`) so that it covers what the model reads, not only where the
            map is brightest. Default True.
        significance: the intervention's p-value bound against same-size placebo regions (see
            :func:`counterfactual_evidence`). Default 0.01.
        flip_images: the flip rate is measured on at most this many images of other classes (evenly spaced over
            them, no randomness), which bounds the cost at ``classes x flip_images`` forward passes. Default 200.
        batch_size: images per attribution / forward call. Default 128.
        max_images: audit at most this many images (the first ones). Default all.
        output_fn: maps the model's output to (N, classes) scores. Default the package's output rule.
        unpack: maps a batch of ``data`` to ``(images, labels)``. Default the package's batch rule.

    Raises:
        TypeError: a region that is neither a bool tensor nor a box, a bad explainer.
        ValueError: a mask that is not 2-d or empty, a malformed box, an unknown ``target``, a bad threshold.

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> x, y = torch.rand(8, 1, 32, 32), torch.tensor([0, 1] * 4)
        >>> report = CleverHansAudit("input_x_gradient", region=(26, 26, 31, 31)).run(SmallCNN(), (x, y))
        >>> sorted(report.classes), report.region.shape
        ([0, 1], torch.Size([32, 32]))
    """

    def __init__(
        self,
        explainer: Explainer | str,
        region: torch.Tensor | Sequence[int] | None = None,
        imputer: Imputer | None = None,
        classes: Sequence[int] | None = None,
        target: TargetSource = "label",
        ratio_threshold: float = 3.0,
        drop_threshold: float = 0.1,
        flip_threshold: float = 0.1,
        control_factor: float = 2.0,
        specificity_threshold: float = 8.0,
        consistency_threshold: float = 0.5,
        max_area: float = 0.1,
        significance: float = 0.01,
        flip_images: int = 200,
        batch_size: int = 128,
        max_images: int | None = None,
        output_fn: OutputFn | None = None,
        unpack: Unpack | None = None,
        refine: bool = True,
    ):
        self.explainer = as_explainer(explainer)
        if region is not None and not isinstance(region, (torch.Tensor, tuple, list)):
            raise TypeError(
                f"Expected argument `region` to be an (H, W) bool mask, an (x0, y0, x1, y1) box or None, "
                f"but got {type(region).__name__}."
            )
        if isinstance(region, torch.Tensor):
            check_region(region)
            region = region.detach().cpu().clone()
        elif region is not None:
            region = check_box(region, name="region")  # the size is checked against the images in run()
        self.region = region
        if imputer is not None and not callable(imputer):
            raise TypeError(f"Expected argument `imputer` to be an Imputer or None, but got {type(imputer).__name__}.")
        self.imputer = imputer
        checked = check_classes(classes)
        self.classes = None if checked is None else sorted(checked)
        self.target = check_target_source(target)
        self.thresholds = {
            "ratio": _positive_real("ratio_threshold", ratio_threshold),
            "accuracy_drop": _positive_real("drop_threshold", drop_threshold, 1.0),
            "flip_rate": _positive_real("flip_threshold", flip_threshold, 1.0),
            "control_factor": _positive_real("control_factor", control_factor),
            "specificity": _positive_real("specificity_threshold", specificity_threshold),
            "consistency": _positive_real("consistency_threshold", consistency_threshold, 1.0),
            "max_area": _positive_real("max_area", max_area, 1.0),
            "significance": _positive_real("significance", significance, 1.0),
        }
        for name, value in (("flip_images", flip_images), ("batch_size", batch_size), ("max_images", max_images)):
            if value is None and name == "max_images":
                continue
            check_int(name, value, 1)
        self.flip_images = int(flip_images)
        self.batch_size = int(batch_size)
        self.max_images = None if max_images is None else int(max_images)
        self.output_fn = check_output_fn(output_fn)
        self.unpack = check_unpack(unpack)
        self.refine = check_bool("refine", refine)

    # -- model calls ----------------------------------------------------------------------------------------
    def _scores(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(N, classes) float scores on the CPU, in batches (eval mode, no grad, full precision)."""
        device = model_device(model)
        out = []
        with torch.no_grad(), eval_mode(model), full_precision(device):
            for start in range(0, len(x), self.batch_size):
                out.append(logits(model(x[start : start + self.batch_size].to(device)), self.output_fn).float().cpu())
        return torch.cat(out)

    def _predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._scores(model, x).argmax(dim=1)

    def _refined(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        pred: torch.Tensor,
        cls: int,
        group: torch.Tensor,
        candidate: torch.Tensor,
        imputer: Imputer,
    ) -> torch.Tensor:
        """The candidate box grown and shrunk by intervention on at most 32 images of the class and 32 others."""
        members = _evenly(torch.nonzero(group & (y == cls) & (pred == cls))[:, 0], _REFINE_IMAGES)
        others = _evenly(torch.nonzero((y != cls) & (pred != cls))[:, 0], _REFINE_IMAGES)
        if not len(members):
            return candidate
        effect = InterventionEffect(
            lambda xs: self._scores(model, xs).softmax(dim=1)[:, cls],
            x[members],
            x[others],
            x[members],
            lambda xs, m: impute(imputer, xs, m),
        )
        size = (candidate.shape[0], candidate.shape[1])
        return box_to_mask(refine_box(effect, mask_to_box(candidate), size, self.thresholds["max_area"]), size)

    def _maps(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Positive (N, H, W) maps, each normalised to sum 1 (all-zero maps stay zero)."""
        device = model_device(model)
        out = []
        for start in range(0, len(x), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            attributions = self.explainer.attribute(
                model, x[chunk].to(device), target[chunk].to(device), output_fn=self.output_fn
            )
            out.append(positive_map(attributions).cpu())
        return normalize_sum(torch.cat(out).double())

    # -- evidence -------------------------------------------------------------------------------------------
    @staticmethod
    def _candidate(mean_map: torch.Tensor) -> torch.Tensor:
        """Discovery: box (widened by 1 px) of the 8-connected half-maximum component around the maximum."""
        values = mean_map.numpy()
        if values.max() <= 0:
            return torch.zeros(mean_map.shape, dtype=torch.bool)
        labels, _ = ndimage.label(values >= 0.5 * values.max(), structure=np.ones((3, 3)))
        peak = np.unravel_index(int(np.argmax(values)), values.shape)
        component = torch.from_numpy(labels == labels[peak])
        x0, y0, x1, y1 = mask_to_box(component)
        h, w = mean_map.shape
        return box_to_mask((max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)), (h, w))

    def _attribution_evidence(
        self, normalised: torch.Tensor, group: torch.Tensor, region: torch.Tensor
    ) -> dict[str, float]:
        area = float(region.double().mean())
        mass = relevance_mass(normalised, region)
        inside, outside = mass[group], mass[~group]
        ratio = float(inside.mean()) / area
        other_ratio = float(outside.mean()) / area if len(outside) else float("nan")
        return {
            "n_images": int(group.sum()),
            "relevance_mass": float(inside.mean()),
            "area": area,
            "ratio": ratio,
            "pointing_game": float(pointing_game(normalised[group], region).mean()),
            "rank_accuracy": float(relevance_rank_accuracy(normalised[group], region).mean()),
            "specificity": ratio / other_ratio if other_ratio > 0 else float("inf"),
            "consistency": float((inside / area >= self.thresholds["ratio"]).double().mean()),
        }

    def _counterfactuals(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        pred: torch.Tensor,
        cls: int,
        region: torch.Tensor,
        source: int,
        imputer: Imputer,
    ) -> dict[str, Any]:
        own = y == cls
        placebos = placebo_regions(region)
        if not len(placebos):
            warnings.warn(
                f"CleverHansAudit: the region ({int(region.sum())} px) leaves no room for a disjoint placebo of the same "
                "size; the counterfactuals of this region are judged by their effect sizes alone.",
                RuntimeWarning,
                stacklevel=3,
            )
        before = float((pred[own] == cls).double().mean()) if own.any() else float("nan")
        after = after_placebo = float("nan")
        p_drop = p_flip = 1.0 if len(placebos) else float("nan")
        if own.any():
            kept = self._predict(model, impute(imputer, x[own], region)) == cls
            after = float(kept.double().mean())
            if len(placebos):
                placebo_kept = self._predict(model, impute(imputer, x[own], _cycle(placebos, int(own.sum())))) == cls
                after_placebo = float(placebo_kept.double().mean())
                p_drop = _sign_test(int((placebo_kept & ~kept).sum()), int((kept & ~placebo_kept).sum()))
        others = _evenly(torch.nonzero((y != cls) & (pred != cls))[:, 0], self.flip_images)
        if len(others):  # images whose own prediction needs their region would "flip" by losing it: left out
            others = others[self._predict(model, impute(imputer, x[others], region)) == pred[others]]
        flip = flip_placebo = float("nan")
        if len(others):
            flipped = self._predict(model, torch.where(region, x[source], x[others])) == cls
            flip = float(flipped.double().mean())
            if len(placebos):
                placebo_masks = _cycle(placebos, len(others))[:, None]
                placebo_flipped = self._predict(model, torch.where(placebo_masks, x[source], x[others])) == cls
                flip_placebo = float(placebo_flipped.double().mean())
                p_flip = _sign_test(int((flipped & ~placebo_flipped).sum()), int((placebo_flipped & ~flipped).sum()))
        return {
            "accuracy_before": before,
            "accuracy_after": after,
            "accuracy_drop": before - after,
            "placebo_drop": before - after_placebo,
            "flip_rate": flip,
            "placebo_flip_rate": flip_placebo,
            "flip_source": int(source),
            "p_drop": p_drop,
            "p_flip": p_flip,
            "intervention_p": min(1.0, 2 * min(p_drop, p_flip)) if len(placebos) else float("nan"),  # Bonferroni
        }

    # -- entry point ----------------------------------------------------------------------------------------
    def _given_region(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The given region as an (H, W) bool mask fitted to the images, or None in discovery mode."""
        if isinstance(self.region, torch.Tensor):
            return check_region(self.region, size)
        return None if self.region is None else box_to_mask(self.region, size, "region")

    def _audited_classes(self, grouping: torch.Tensor) -> list[int]:
        """The classes to audit: those asked for (each must have images), else every class present."""
        present = sorted(set(grouping.tolist()))
        classes = present if self.classes is None else self.classes
        missing = [c for c in classes if c not in present]
        if missing:
            raise ValueError(
                f"Expected every class in argument `classes` to have images in the data (grouped by {self.target}), "
                f"but got no images for {missing}; the data has {present}."
            )
        return classes

    def _class_entry(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        pred: torch.Tensor,
        cls: int,
        group: torch.Tensor,
        region: torch.Tensor,
        discovered: bool,
        normalised: torch.Tensor,
        control_maps: torch.Tensor | None,
        imputer: Imputer,
    ) -> dict[str, Any]:
        """One class's row of the report: attribution evidence, counterfactuals, the control's ratio, the evidence
        verdicts and the flag."""
        entry: dict[str, Any] = {"region": mask_to_box(region) if discovered and region.any() else None}
        if not region.any():  # discovery found nothing: an all-zero class-mean map
            entry.update(n_images=int(group.sum()), flagged=False)
            return {**entry, "reason": reason(entry, self.thresholds)}
        entry.update(self._attribution_evidence(normalised, group, region))
        members = torch.nonzero(group & (y == cls))[:, 0]
        pool = members if len(members) else torch.nonzero(group)[:, 0]
        source = int(pool[relevance_mass(normalised[pool], region).argmax()])
        entry.update(self._counterfactuals(model, x, y, pred, cls, region, source, imputer))
        entry["control_ratio"] = None
        if control_maps is not None:
            entry["control_ratio"] = float(relevance_mass(control_maps[group], region).mean()) / entry["area"]
        entry["evidence"] = evidence_verdicts(entry, self.thresholds, discovered)
        entry["agreement"] = (
            agreement(entry["evidence"]["attribution"], entry["evidence"]["counterfactual"])
            if entry["evidence"]["localised"]
            else "not localised: no region can be said to be relied on"
        )
        entry["flagged"] = flag_rule(entry["evidence"])
        entry["reason"] = reason(entry, self.thresholds)
        return entry

    def run(self, model: nn.Module, data: Any, control: nn.Module | None = None) -> AuditReport:
        """Audit ``model`` on ``data``; optionally compare each class's ratio with a ``control`` model's.

        Args:
            model: the classifier (left unchanged: weights, modes, gradients, hooks).
            data: a DataLoader (or any iterable) of ``(images, labels, ...)`` batches, or an ``(images, labels)``
                pair of tensors.
            control: a model of the same architecture trained where the region carries no label information
                (e.g. on ``CleverHansDigits(control=True)``); audited with the same explainer, images and regions.
                Default None.

        Returns:
            :class:`~captum_ext.audit.AuditReport`.

        Raises:
            TypeError: ``model`` or ``control`` is not an ``nn.Module``; malformed ``data``.
            ValueError: the region does not fit the images, or an audited class has no images in the data.
        """
        for name, value in (("model", model), ("control", control)):
            if value is not None and not isinstance(value, nn.Module):
                raise TypeError(f"Expected argument `{name}` to be an nn.Module, but got {type(value).__name__}.")
        x, y = _collect(data, self.max_images, self.unpack)
        given = self._given_region(cast("tuple[int, int]", tuple(x.shape[-2:])))  # (N, C, H, W) images
        if given is not None and float(given.double().mean()) > self.thresholds["max_area"]:
            warnings.warn(
                f"CleverHansAudit: the given region covers {float(given.double().mean()):.1%} of the image, more than "
                f"max_area ({self.thresholds['max_area']:.1%}); it is measured but reported as not localised. Pass a "
                "larger max_area to judge a region this large.",
                RuntimeWarning,
                stacklevel=2,
            )
        pred = self._predict(model, x)
        grouping = y if self.target == "label" else pred
        classes = self._audited_classes(grouping)
        imputer = self.imputer if self.imputer is not None else MeanImputer(x.mean(dim=(0, 2, 3)))
        normalised = self._maps(model, x, grouping)
        control_maps = self._maps(control, x, grouping) if control is not None else None
        results: dict[int, dict[str, Any]] = {}
        class_maps: dict[int, torch.Tensor] = {}
        control_class_maps: dict[int, torch.Tensor] = {}
        for cls in classes:
            group = grouping == cls
            class_maps[cls] = normalised[group].mean(0).float()
            candidate = None
            if given is not None:
                region = given
            else:
                region = candidate = self._candidate(class_maps[cls].double())
                if self.refine and region.any():
                    region = self._refined(model, x, y, pred, cls, group, candidate, imputer)
            if control_maps is not None and region.any():
                control_class_maps[cls] = control_maps[group].mean(0).float()
            results[cls] = self._class_entry(
                model, x, y, pred, cls, group, region, given is None, normalised, control_maps, imputer
            )
            if candidate is not None and candidate.any():
                results[cls]["candidate_region"] = mask_to_box(candidate)
        flagged = [cls for cls, entry in results.items() if entry["flagged"]]
        return AuditReport(
            explainer=self.explainer.name,
            region=given,
            classes=results,
            class_maps=class_maps,
            flagged=flagged,
            thresholds=dict(self.thresholds),
            target=self.target,
            imputer=repr(imputer),
            n_images=len(x),
            control_class_maps=control_class_maps if control is not None else None,
        )
