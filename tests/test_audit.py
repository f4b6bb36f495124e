"""Clever Hans audit and SpRAy on CleverHansDigits (planted tag on class 0) and its control."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from captum_ext import Explainer
from captum_ext.audit import AuditReport, CleverHansAudit, SprayResult, spray
from captum_ext.imputation import ConstantImputer, MeanImputer

EXPLAINER = "input_x_gradient"
SHORTCUT = 0


@pytest.fixture(scope="module")
def probe(digits):
    """The whole test split (359 images): ~38 of the shortcut class, 90% of them tagged."""
    x, y, _ = digits.split("test")
    return x, y


@pytest.fixture(scope="module")
def region_report(trained_cnn, control_cnn, probe, digits) -> AuditReport:
    return CleverHansAudit(EXPLAINER, region=digits.region_mask).run(trained_cnn, probe, control=control_cnn)


@pytest.fixture(scope="module")
def discovery_report(trained_cnn, control_cnn, probe) -> AuditReport:
    return CleverHansAudit(EXPLAINER).run(trained_cnn, probe, control=control_cnn)


def _box_iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# -- region given ------------------------------------------------------------------------------------------------
def test_given_region_flags_only_the_shortcut_class(region_report, digits):
    report = region_report
    assert report.flagged == [SHORTCUT]
    entry = report.classes[SHORTCUT]
    assert entry["ratio"] >= 5.0 * 1.0  # >= 5x the area share (ratio 1 is chance)
    assert entry["ratio"] >= 3.0 * entry["control_ratio"]
    assert entry["accuracy_drop"] >= 0.2
    assert entry["evidence"] == {
        "localised": True,
        "attribution": True,
        "counterfactual": True,
        "control": True,
        "candidate": None,
    }
    for cls, other in report.classes.items():
        if cls != SHORTCUT:
            assert not other["flagged"] and other["ratio"] < 3.0, cls
    assert torch.equal(report.region, digits.region_mask)
    assert entry["region"] is None


def test_given_region_numbers_match_an_independent_reference(region_report, trained_cnn, probe, digits):
    """Relevance mass, area, class-mean map, accuracy drop and flip rate recomputed here in float64."""
    x, y = probe
    region = digits.region_mask
    entry = region_report.classes[SHORTCUT]
    own = (y == SHORTCUT).nonzero()[:, 0]
    attributions = Explainer(EXPLAINER).attribute(trained_cnn, x[own], SHORTCUT).double()
    positive = attributions.clamp(min=0).sum(1)
    normalised = positive / positive.sum((1, 2), keepdim=True)
    mass = (normalised * region).sum((1, 2))
    area = 25 / (32 * 32)
    assert entry["area"] == pytest.approx(area)
    assert entry["relevance_mass"] == pytest.approx(float(mass.mean()), rel=1e-5)
    assert entry["ratio"] == pytest.approx(float(mass.mean()) / area, rel=1e-5)
    class_map = region_report.class_maps[SHORTCUT].double()
    np.testing.assert_allclose(class_map.numpy(), normalised.mean(0).numpy(), rtol=1e-4, atol=1e-7)
    assert float((class_map * region).sum()) == pytest.approx(entry["relevance_mass"], rel=1e-4)

    with torch.no_grad():
        pred = trained_cnn(x).argmax(1)
        filled = x[own].clone()
        mean = x.double().mean(dim=(0, 2, 3)).float()
        filled[:, :, region] = mean[:, None]
        after = trained_cnn(filled).argmax(1)
    before_acc = float((pred[own] == SHORTCUT).double().mean())
    assert entry["accuracy_before"] == pytest.approx(before_acc)
    assert entry["accuracy_drop"] == pytest.approx(before_acc - float((after == SHORTCUT).double().mean()))

    source = int(own[mass.argmax()])
    assert entry["flip_source"] == source
    others = ((y != SHORTCUT) & (pred != SHORTCUT)).nonzero()[:, 0]
    others = others[torch.linspace(0, len(others) - 1, 200).round().long()]
    covered = x[others].clone()
    covered[:, :, region] = mean[:, None]
    with torch.no_grad():  # images whose own prediction needs their region are left out of the flip test
        others = others[trained_cnn(covered).argmax(1) == pred[others]]
    pasted = x[others].clone()
    pasted[:, :, region] = x[source][:, region]
    with torch.no_grad():
        flip = float((trained_cnn(pasted).argmax(1) == SHORTCUT).double().mean())
    assert entry["flip_rate"] == pytest.approx(flip)


def test_box_region_equals_mask_region_and_custom_imputer(trained_cnn, probe, digits):
    x, y = probe
    kwargs = {"classes": [SHORTCUT, 3], "max_images": 150, "imputer": MeanImputer(digits.train_mean)}
    by_box = CleverHansAudit(EXPLAINER, region=digits.region_box, **kwargs).run(trained_cnn, (x, y))
    by_mask = CleverHansAudit(EXPLAINER, region=digits.region_mask, **kwargs).run(trained_cnn, (x, y))
    assert by_box.to_dict() == by_mask.to_dict()
    # the imputer is the one given: a bright constant fill *adds* a tag, so class 0 gains accuracy instead
    bright = CleverHansAudit(
        EXPLAINER, region=digits.region_box, classes=[SHORTCUT], max_images=150, imputer=ConstantImputer(1.0)
    ).run(trained_cnn, (x, y))
    assert bright.classes[SHORTCUT]["accuracy_drop"] <= 0.0 < by_box.classes[SHORTCUT]["accuracy_drop"]


def test_control_model_is_not_flagged(control_cnn, probe, digits):
    report = CleverHansAudit(EXPLAINER, region=digits.region_mask).run(control_cnn, probe)
    assert report.flagged == []
    assert report.classes[SHORTCUT]["ratio"] < 3.0


def test_dataloader_and_prediction_target(trained_cnn, probe, digits):
    x, y = probe
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:120], y[:120]), batch_size=50)
    from_loader = CleverHansAudit(EXPLAINER, region=digits.region_mask, classes=[SHORTCUT]).run(trained_cnn, loader)
    from_pair = CleverHansAudit(EXPLAINER, region=digits.region_mask, classes=[SHORTCUT]).run(
        trained_cnn, (x[:120], y[:120])
    )
    assert from_loader.to_dict() == from_pair.to_dict()
    by_pred = CleverHansAudit(EXPLAINER, region=digits.region_mask, classes=[SHORTCUT], target="prediction").run(
        trained_cnn, loader
    )
    with torch.no_grad():
        n_pred = int((trained_cnn(x[:120]).argmax(1) == SHORTCUT).sum())
    assert by_pred.classes[SHORTCUT]["n_images"] == n_pred != from_loader.classes[SHORTCUT]["n_images"]


# -- discovery ---------------------------------------------------------------------------------------------------
def test_discovery_finds_and_verifies_the_tag(discovery_report, digits):
    report = discovery_report
    assert report.region is None
    assert report.flagged == [SHORTCUT]
    entry = report.classes[SHORTCUT]
    assert _box_iou(entry["region"], digits.region_box) >= 0.8  # 1.00 with the refinement (issue #23), 0.69 before
    assert entry["evidence"]["counterfactual"] and entry["evidence"]["candidate"]
    # the other classes' candidates sit on the digit strokes: the control model looks there just as much
    for cls, other in report.classes.items():
        if cls != SHORTCUT:
            assert _box_iou(other["region"], digits.region_box) == 0.0
            assert not other["flagged"]


def test_discovery_on_the_control_model_flags_nothing(control_cnn, probe):
    report = CleverHansAudit(EXPLAINER).run(control_cnn, probe)
    assert report.flagged == []


def test_audit_leaves_models_unchanged(trained_cnn, control_cnn, probe, model_guard):
    model_guard(trained_cnn)
    model_guard(control_cnn)
    trained_cnn.features.conv1.weight.grad = torch.ones_like(trained_cnn.features.conv1.weight)
    rng = torch.random.get_rng_state()
    try:
        # Grad-CAM registers hooks on a layer; discovery mode runs every code path
        CleverHansAudit("gradcam", classes=[SHORTCUT, 1], max_images=60).run(trained_cnn, probe, control=control_cnn)
        assert torch.equal(trained_cnn.features.conv1.weight.grad, torch.ones_like(trained_cnn.features.conv1.weight))
        assert all(p.grad is None for n, p in trained_cnn.named_parameters() if n != "features.conv1.weight")
    finally:
        trained_cnn.features.conv1.weight.grad = None
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is neither read nor advanced


# -- report --------------------------------------------------------------------------------------------------------
def test_report_serialisation_plot_html_and_repr(region_report, tmp_path):
    report = region_report
    path = tmp_path / "audit.json"
    report.to_json(path)
    loaded = json.loads(path.read_text())
    assert loaded["flagged"] == [SHORTCUT]
    assert loaded["classes"][str(SHORTCUT)]["ratio"] == pytest.approx(report.classes[SHORTCUT]["ratio"])
    assert torch.equal(torch.tensor(loaded["region"]), report.region)
    assert list(tmp_path.iterdir()) == [path]  # nothing half-written left behind

    fig = report.plot()
    assert isinstance(fig, Figure)
    map_axes = [ax for ax in fig.axes if ax.images]
    assert len(map_axes) == 20  # 10 classes + 10 control maps
    assert all(ax.collections for ax in map_axes)  # every map has the region outlined
    assert [ax.title.get_color() for ax in map_axes[:10]].count("red") == 1
    assert sum(len(ax.tables) for ax in fig.axes) == 1
    bare = report.plot(table=False)  # the HTML pages show the table as text, not a second time as a picture
    assert sum(len(ax.tables) for ax in bare.axes) == 0 and len([ax for ax in bare.axes if ax.images]) == 20
    rows = report.table()
    assert [row["class"] for row in rows if row["verdict"] == "FLAGGED"] == [str(SHORTCUT)]
    assert float(rows[SHORTCUT]["ratio"]) == pytest.approx(report.classes[SHORTCUT]["ratio"], abs=0.01)

    page = report.to_html()
    assert page.lower().startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "flagged classes: [0]" in page and page.count("FLAGGED") == 1

    text = repr(report)
    flagged_rows = [line for line in text.splitlines() if line.endswith("FLAGGED")]
    assert len(flagged_rows) == 1 and flagged_rows[0].split()[0] == str(SHORTCUT)


# -- SpRAy ---------------------------------------------------------------------------------------------------------
def test_spray_separates_tagged_from_untagged_images_of_the_shortcut_class(trained_cnn, digits):
    tagged, _ = digits.shortcut_test_images(tagged=True)
    clean, _ = digits.shortcut_test_images(tagged=False)
    x = torch.cat([tagged, clean])
    is_tagged = torch.cat([torch.ones(len(tagged)), torch.zeros(len(clean))]).bool()
    result = spray(Explainer(EXPLAINER).attribute(trained_cnn, x, SHORTCUT), embed=False)
    assert result.n_clusters >= 2  # chosen by the eigengap
    purity = [
        (float(is_tagged[result.labels == k].double().mean()), int((result.labels == k).sum()))
        for k in range(result.n_clusters)
    ]
    best = max(range(result.n_clusters), key=lambda k: (purity[k][0], purity[k][1]))
    assert purity[best][0] >= 0.9
    assert int((is_tagged & (result.labels == best)).sum()) >= 0.8 * len(tagged)
    # the tagged cluster's mean map sits on the tag, the other's does not
    region = digits.region_mask
    mass = (result.cluster_maps * region).sum((1, 2))
    assert int(mass.argmax()) == best


def _groups(n_per: int = 12):
    gen = torch.Generator().manual_seed(0)
    maps = 0.05 * torch.rand(3 * n_per, 16, 16, generator=gen)
    maps[:n_per, :5, :5] += 1.0
    maps[n_per : 2 * n_per, 10:, 10:] += 1.0
    maps[2 * n_per :, 6:10, :] += 1.0
    truth = torch.arange(3).repeat_interleave(n_per)
    return maps, truth


def test_spray_known_answer_and_float64_spectrum():
    maps, truth = _groups()
    result = spray(maps, n_neighbors=5, size=(4, 4), embed=False)
    assert isinstance(result, SprayResult)
    assert result.n_clusters == 3
    for k in range(3):  # each cluster is exactly one group
        assert len(set(truth[result.labels == k].tolist())) == 1
    # reference spectrum: normalised maps, 4x4 average pooling, symmetric binary 5-NN graph, I - D^-1/2 A D^-1/2
    m = maps.double().numpy()
    m = m / m.sum(axis=(1, 2), keepdims=True)
    pooled = m.reshape(len(m), 4, 4, 4, 4).mean(axis=(2, 4)).reshape(len(m), -1)
    d = np.linalg.norm(pooled[:, None] - pooled[None], axis=2)
    np.fill_diagonal(d, np.inf)
    a = np.zeros_like(d)
    for i, row in enumerate(d):
        a[i, np.argsort(row)[:5]] = 1.0
    a = np.maximum(a, a.T)
    dinv = 1 / np.sqrt(a.sum(1))
    lap = np.eye(len(a)) - dinv[:, None] * a * dinv[None]
    ref = np.linalg.eigvalsh(lap)[: len(result.eigenvalues)]
    np.testing.assert_allclose(result.eigenvalues.double().numpy(), ref, atol=1e-5)
    assert result.eigengap == pytest.approx(ref[3] - ref[2], abs=1e-5)
    assert spray(maps, n_clusters=2, n_neighbors=5, embed=False).n_clusters == 2


def test_spray_embedding_is_seeded_and_leaves_global_rng_alone(tmp_path):
    maps, _ = _groups(6)
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    a = spray(maps, n_neighbors=4, seed=3)
    b = spray(maps, n_neighbors=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert a.embedding is not None and torch.equal(a.embedding, b.embedding) and torch.equal(a.labels, b.labels)
    assert isinstance(a.plot(), Figure)
    a.to_json(tmp_path / "spray.json")
    assert json.loads((tmp_path / "spray.json").read_text())["labels"] == a.labels.tolist()
    assert "3 clusters" in repr(a)


# -- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_errors(trained_cnn, probe):
    x, y = probe
    small = (x[:40], y[:40])
    with pytest.raises(ValueError, match=r"Expected argument `region` to have shape \(32, 32\), but got \(16, 16\)"):
        CleverHansAudit(EXPLAINER, region=torch.ones(16, 16, dtype=torch.bool)).run(trained_cnn, small)
    with pytest.raises(ValueError, match=r"Expected argument `region` to contain at least one True pixel"):
        CleverHansAudit(EXPLAINER, region=torch.zeros(32, 32, dtype=torch.bool))
    with pytest.raises(
        TypeError,
        match=r"Expected argument `region` to be a bool tensor of shape \(H, W\), but got dtype torch.float32",
    ):
        CleverHansAudit(EXPLAINER, region=torch.ones(32, 32))
    with pytest.raises(
        ValueError,
        match=r"half-open \(x0, y0, x1, y1\) box of ints with 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32, but got \(20, 20, 40, 40\)",
    ):
        CleverHansAudit(EXPLAINER, region=(20, 20, 40, 40)).run(trained_cnn, small)
    with pytest.raises(ValueError, match=r"but got \(5, 5, 5, 9\)"):
        CleverHansAudit(EXPLAINER, region=(5, 5, 5, 9))  # empty box
    with pytest.raises(
        ValueError,
        match=r"Expected every class in argument `classes` to have images in the data .* no images for \[11\]",
    ):
        CleverHansAudit(EXPLAINER, classes=[0, 11]).run(trained_cnn, small)
    with pytest.raises(
        ValueError, match=r"Expected argument `target` to be one of 'label', 'prediction', but got 'predicted'"
    ):
        CleverHansAudit(EXPLAINER, target="predicted")
    with pytest.raises(
        ValueError, match=r"Expected argument `ratio_threshold` to be a positive real number, but got -1"
    ):
        CleverHansAudit(EXPLAINER, ratio_threshold=-1)
    with pytest.raises(TypeError, match=r"Expected argument `explainer` to be an Explainer or a short name, but got 3"):
        CleverHansAudit(3)
    with pytest.raises(TypeError, match=r"Expected argument `data` to be an \(images, labels\) pair"):
        CleverHansAudit(EXPLAINER).run(trained_cnn, x)
    with pytest.raises(ValueError, match=r"Expected the labels in `data` to have shape \(40,\), but got \(39,\)"):
        CleverHansAudit(EXPLAINER).run(trained_cnn, (x[:40], y[:39]))
    with pytest.raises(ValueError, match=r"Expected argument `maps` to hold at least 3 maps, but got 2"):
        spray(torch.rand(2, 8, 8))
    with pytest.raises(
        ValueError, match=r"Expected argument `n_neighbors` to be an int in \[1, 9\] or None, but got 10"
    ):
        spray(torch.rand(10, 8, 8), n_neighbors=10)
    with pytest.raises(
        ValueError,
        match=r"Expected argument `size` to be an \(h, w\) pair of positive ints no larger than the maps \(8, 8\), but got \(16, 16\)",
    ):
        spray(torch.rand(10, 8, 8), size=(16, 16))
