"""Issue #23: the shortcut zoo, discovery refined by intervention, honest verdicts.

The trained-model tests reproduce the finding of Lapuschkin et al. (2019) on a real architecture: a torchvision
ResNet-18 trained from scratch on shapes whose class 0 carries a corner patch reads the patch, and discovery (no
region given) finds the whole patch, not only the edges the per-pixel maps light up.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision

from captum_ext import Explainer
from captum_ext.audit import AuditReport, CleverHansAudit
from captum_ext.audit.refine import InterventionEffect, refine_box
from captum_ext.boxes import box_to_mask
from captum_ext.data import SHORTCUT_KINDS, shortcut_images

SIZE = 64


def _iou(box, truth: torch.Tensor) -> float:
    found = box_to_mask(box, tuple(truth.shape))
    return float((found & truth).sum() / (found | truth).sum())


# -- the zoo ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", SHORTCUT_KINDS)
def test_each_kind_is_planted_where_its_masks_say_and_nowhere_else(kind):
    zoo = shortcut_images(kind, n=90, size=SIZE, seed=3)
    clean = shortcut_images("none", n=90, size=SIZE, seed=3)  # the same shapes and background, no shortcut
    assert torch.equal(zoo.labels, clean.labels)
    assert zoo.images.min() >= 0 and zoo.images.max() <= 1
    changed = (zoo.images != clean.images).any(dim=1)  # (N, H, W) pixels the shortcut altered
    if kind == "none":
        assert not zoo.tagged.any() and zoo.shortcut_class is None and not changed.any()
        return
    # tagged: 90% of class 0 in expectation, no other class (p_other = 0)
    assert not zoo.tagged[zoo.labels != 0].any()
    assert 0.7 <= float(zoo.tagged[zoo.labels == 0].double().mean()) <= 1.0
    assert not changed[~zoo.tagged].any()
    if kind == "tint":  # everywhere, and redder
        assert not zoo.masks.any()
        red_minus_green = (zoo.images[:, 0] - zoo.images[:, 1]).mean(dim=(1, 2)) - (
            clean.images[:, 0] - clean.images[:, 1]
        ).mean(dim=(1, 2))
        assert (red_minus_green[zoo.tagged] > 0.1).all()
        return
    assert not (changed & ~zoo.masks).any()  # nothing outside the masks
    assert (changed | ~zoo.masks).float().mean() > 0.99  # and (almost) every masked pixel changed
    if kind == "logo":
        assert zoo.region is None and zoo.box is None
        places = {tuple(torch.nonzero(m)[0].tolist()) for m in zoo.masks[zoo.tagged]}
        assert len(places) > 0.8 * int(zoo.tagged.sum())  # a new place on (nearly) every image
    else:
        assert zoo.region is not None and all(torch.equal(m, zoo.region) for m in zoo.masks[zoo.tagged])
        ys, xs = torch.nonzero(zoo.region, as_tuple=True)
        assert zoo.box == (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    if kind == "patch":
        assert zoo.box == (SIZE - 8, SIZE - 8, SIZE, SIZE)
        magenta = torch.tensor([1.0, 0.0, 1.0])[:, None]
        assert torch.equal(zoo.images[zoo.tagged][:, :, zoo.region], magenta.expand(int(zoo.tagged.sum()), 3, 64))


def test_the_zoo_is_seeded():
    a, b = shortcut_images("logo", n=20, seed=5), shortcut_images("logo", n=20, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, shortcut_images("logo", n=20, seed=6).images)


# -- refinement on oracles ------------------------------------------------------------------------------------------
class ReadsWholePatch(torch.nn.Module):
    """Class 0 when the whole 8x8 square at (40, 8) is bright; a part of it does nothing (an AND of its pixels)."""

    def forward(self, x):
        darkest = x[:, :, 8:16, 40:48].amin(dim=(1, 2, 3))
        return torch.stack([12 * (darkest - 0.9), torch.zeros_like(darkest)], dim=1)


class ReadsAnyPixel(torch.nn.Module):
    """Class 0 when any pixel of the square is bright (an OR: a part pasted is enough, all of it must go)."""

    def forward(self, x):
        brightest = x[:, :, 8:16, 40:48].amax(dim=(1, 2, 3))
        return torch.stack([12 * (brightest - 0.9), torch.zeros_like(brightest)], dim=1)


@pytest.mark.parametrize("model", [ReadsWholePatch(), ReadsAnyPixel()], ids=["and", "or"])
@pytest.mark.parametrize("start", [(40, 8, 42, 10), (44, 12, 48, 16), (34, 2, 54, 22)], ids=["corner", "edge", "wide"])
def test_refinement_recovers_the_square_from_a_corner_an_edge_or_a_blur(model, start):
    """Removal alone stops at a part of an OR-read square and pasting alone at a part of an AND-read one; their sum
    gives the whole square from wherever relevance put the first box."""
    gen = torch.Generator().manual_seed(0)
    members = 0.6 * torch.rand(12, 3, SIZE, SIZE, generator=gen)
    members[:, :, 8:16, 40:48] = 1.0
    others = 0.6 * torch.rand(12, 3, SIZE, SIZE, generator=gen)
    probability = lambda x: model(x).softmax(dim=1)[:, 0]  # noqa: E731
    fill = lambda x, mask: torch.where(mask, 0.3, x)  # noqa: E731
    effect = InterventionEffect(probability, members, others, members, fill)
    assert refine_box(effect, start, (SIZE, SIZE), max_area=0.2) == (40, 8, 48, 16)


def test_refinement_never_grows_past_max_area():
    effect = lambda box: float((box[2] - box[0]) * (box[3] - box[1]))  # noqa: E731  # bigger is always better
    x0, y0, x1, y1 = refine_box(effect, (10, 10, 14, 14), (32, 32), max_area=0.1)
    assert (x1 - x0) * (y1 - y0) <= 0.1 * 32 * 32


# -- trained ResNet-18s -----------------------------------------------------------------------------------------
def _train_resnet(kind: str) -> torch.nn.Module:
    """A torchvision ResNet-18 trained from scratch on 480 zoo images at 64 px (~10 s on two cores)."""
    data = shortcut_images(kind, n=480, size=SIZE, seed=0)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(3):
        for batch in torch.randperm(len(data.labels), generator=order).split(32):
            loss = torch.nn.functional.cross_entropy(model(data.images[batch]), data.labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def patch_resnet() -> torch.nn.Module:
    return _train_resnet("patch")


def test_discovery_on_a_trained_resnet_finds_the_whole_patch_and_says_why(patch_resnet):
    test = shortcut_images("patch", n=150, size=SIZE, seed=99)
    with torch.no_grad():
        predicted = patch_resnet(test.images).argmax(1)
        pasted = torch.where(test.region, test.images[test.tagged][0], test.images[test.labels != 0])
        flips = float((patch_resnet(pasted).argmax(1) == 0).double().mean())
    assert flips > 0.5, "the trained model must read the patch for this test to mean anything"
    assert float((predicted == test.labels).double().mean()) > 0.5
    report = CleverHansAudit("input_x_gradient").run(patch_resnet, (test.images, test.labels))
    zero = report.classes[0]
    assert report.flagged == [0]
    assert _iou(zero["region"], test.region) >= 0.5
    assert zero["reason"].startswith("flagged: removing the region costs")
    for cls in (1, 2):
        assert report.classes[cls]["reason"].startswith("not flagged: ")
        assert f"class {cls}: not flagged: " in repr(report)
    assert "Why each class was or was not flagged" in report.to_html()
    restored = AuditReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert [e["reason"] for e in restored.classes.values()] == [e["reason"] for e in report.classes.values()]


class ReadsTint(torch.nn.Module):
    """Class 0 when the whole image is redder than green (the zoo's tint); no region holds the cue."""

    def forward(self, x):
        cast = (x[:, 0] - x[:, 1]).mean(dim=(1, 2))
        return torch.stack([60 * (cast - 0.09), torch.zeros_like(cast), torch.zeros_like(cast)], dim=1)


def test_a_global_tint_is_never_reported_as_a_region_relied_on():
    """The tint has no region: every box of a given size changes the prediction as much as its placebos. (The
    trained ResNet-18 of benchmarks/shortcut_zoo.py reads the tint, flipping every tinted image, and is not flagged
    either; training it to that point takes too long for the suite.)"""
    test = shortcut_images("tint", n=90, size=SIZE, seed=99)
    model = ReadsTint()
    with torch.no_grad():
        assert (model(test.images).argmax(1) == 0)[test.tagged].double().mean() >= 0.8  # it reads the tint
    report = CleverHansAudit("input_x_gradient", classes=[0]).run(model, (test.images, test.labels))
    assert report.flagged == []
    assert report.classes[0]["reason"].startswith("not flagged")


def test_a_given_region_larger_than_max_area_is_not_localised_with_a_warning(patch_resnet):
    test = shortcut_images("patch", n=60, size=SIZE, seed=99)
    half = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    half[SIZE // 2 :] = True  # holds the patch, and half of every shape
    with pytest.warns(RuntimeWarning, match="covers 50.0% of the image, more than max_area"):
        report = CleverHansAudit("input_x_gradient", region=half, flip_images=20).run(
            patch_resnet, (test.images, test.labels)
        )
    assert report.flagged == []
    for entry in report.classes.values():
        assert entry["evidence"]["localised"] is False
        assert entry["agreement"].startswith("not localised")
        assert "not localised: the region covers 50.0% of the image" in entry["reason"]
        assert not math.isnan(entry["accuracy_drop"])  # measured, shown, not used


def test_explainer_default_keeps_working_without_refinement(patch_resnet):
    test = shortcut_images("patch", n=60, size=SIZE, seed=99)
    plain = CleverHansAudit(Explainer("input_x_gradient"), refine=False, flip_images=20).run(
        patch_resnet, (test.images, test.labels)
    )
    assert "candidate_region" in plain.classes[0]
    assert plain.classes[0]["candidate_region"] == plain.classes[0]["region"]


class TupleOutput(torch.nn.Module):
    """The trained model behind a (logits, features) tuple output, as many users' models return."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x.mean(dim=(2, 3))


def test_refined_discovery_reads_tuple_outputs_and_dict_batches_and_leaves_the_model_unchanged(
    patch_resnet, model_guard
):
    """The refinement's forwards go through the package's output and batch rules: the same boxes as the plain model
    on tensors, and the model is left as it was (weights, mode, gradients, hooks)."""
    from torch.utils.data import DataLoader

    test = shortcut_images("patch", n=60, size=SIZE, seed=99)
    plain = CleverHansAudit("input_x_gradient", classes=[0], flip_images=20).run(
        patch_resnet, (test.images, test.labels)
    )
    wrapped = model_guard(TupleOutput(patch_resnet))
    batches = DataLoader(
        [{"image": x, "label": y} for x, y in zip(test.images, test.labels)], batch_size=16, shuffle=False
    )
    found = CleverHansAudit("input_x_gradient", classes=[0], flip_images=20).run(wrapped, batches)
    assert found.classes[0]["region"] == plain.classes[0]["region"]
    assert found.classes[0]["candidate_region"] == plain.classes[0]["candidate_region"]
    assert found.flagged == plain.flagged
