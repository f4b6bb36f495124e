"""Localisation metrics against float64 references written here, known answers, DDP sync and error wording."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from captum_ext.metrics import PointingGame, RelevanceMass, RelevanceRankAccuracy
from captum_ext.metrics.localisation import pointing_game, relevance_mass, relevance_rank_accuracy


def _box(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    region = torch.zeros(h, w, dtype=torch.bool)
    region[y0:y1, x0:x1] = True
    return region


def _positive64(attributions: torch.Tensor) -> np.ndarray:
    a = attributions.double().numpy()
    a = np.maximum(a, 0.0)
    return a.sum(axis=1) if a.ndim == 4 else a


def ref_mass(attributions: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    pos, g = _positive64(attributions), region.numpy()
    out = []
    for i, r in enumerate(pos):
        gi = g if g.ndim == 2 else g[i]
        total = r.sum()
        out.append(r[gi].sum() / total if total > 0 else 0.0)
    return np.array(out)


def ref_rank(attributions: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    """Valid for maps without ties among the top pixels (continuous random values)."""
    pos, g = _positive64(attributions), region.numpy()
    out = []
    for i, r in enumerate(pos):
        gi = (g if g.ndim == 2 else g[i]).ravel()
        k = int(gi.sum())
        top = np.argsort(-r.ravel(), kind="stable")[:k]
        out.append(gi[top].sum() / k)
    return np.array(out)


def ref_pointing(attributions: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    pos, g = _positive64(attributions), region.numpy()
    out = []
    for i, r in enumerate(pos):
        gi = g if g.ndim == 2 else g[i]
        out.append(float(r.max() > 0 and gi.ravel()[int(np.argmax(r))]))
    return np.array(out)


@pytest.fixture
def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    # signed attributions with a bias towards the region so the scores are far from chance and from 1
    out = []
    for n in (5, 3, 7):
        a = torch.randn(n, 3, 12, 10, generator=gen)
        a[:, :, 2:6, 3:8] += 0.7
        out.append(a)
    return out


REGION = _box(12, 10, 3, 2, 8, 6)

CASES = [
    (RelevanceMass, relevance_mass, ref_mass),
    (RelevanceRankAccuracy, relevance_rank_accuracy, ref_rank),
    (PointingGame, pointing_game, ref_pointing),
]


@pytest.mark.parametrize("metric_cls, fn, ref", CASES)
def test_functional_matches_float64_reference(metric_cls, fn, ref, batches):
    for a in batches:
        np.testing.assert_allclose(fn(a, REGION).double().numpy(), ref(a, REGION), rtol=1e-5, atol=1e-6)
        # (N, H, W) input: the positive part of a single-channel map
        a2 = a[:, 0]
        np.testing.assert_allclose(fn(a2, REGION).double().numpy(), ref(a2, REGION), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric_cls, fn, ref", CASES)
def test_metric_accumulates_mean_over_batches(metric_cls, fn, ref, batches):
    metric = metric_cls(REGION)
    seen = []
    for a in batches:
        metric.update(a)
        seen.append(ref(a, REGION))
    expected = np.concatenate(seen).mean()
    assert abs(float(metric.compute()) - expected) < 1e-6
    assert 0.0 < expected < 1.0  # the data is informative: neither chance-free nor saturated
    # chunked equals unchunked
    whole = metric_cls(REGION)
    whole.update(torch.cat(batches))
    assert abs(float(whole.compute()) - float(metric.compute())) < 1e-6
    metric.reset()
    metric.update(batches[0])
    assert abs(float(metric.compute()) - ref(batches[0], REGION).mean()) < 1e-6


def test_per_image_regions_match_reference(batches):
    a = batches[2]
    gen = torch.Generator().manual_seed(3)
    regions = torch.rand(a.shape[0], 12, 10, generator=gen) < 0.2
    regions[:, 0, 0] = True  # never empty
    np.testing.assert_allclose(relevance_mass(a, regions).double().numpy(), ref_mass(a, regions), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(relevance_rank_accuracy(a, regions).double().numpy(), ref_rank(a, regions), atol=1e-6)
    np.testing.assert_allclose(pointing_game(a, regions).double().numpy(), ref_pointing(a, regions), atol=0)


def test_known_answers():
    region = _box(8, 8, 2, 2, 5, 5)
    inside = region.float()[None]
    # all relevance inside -> 1, 1, 1
    assert float(relevance_mass(inside, region)) == 1.0
    assert float(relevance_rank_accuracy(inside, region)) == 1.0
    assert float(pointing_game(inside, region)) == 1.0
    # only negative relevance inside, positive outside -> 0, 0, 0 (the negative part is ignored)
    flipped = 1.0 - 3.0 * inside
    assert float(relevance_mass(flipped, region)) == 0.0
    assert float(relevance_rank_accuracy(flipped, region)) == 0.0
    assert float(pointing_game(flipped, region)) == 0.0
    # a map with no positive relevance scores 0 everywhere (never NaN)
    zero = torch.zeros(2, 8, 8)
    for fn in (relevance_mass, pointing_game):
        assert fn(zero, region).tolist() == [0.0, 0.0]
    # a uniform map: mass equals the area share exactly
    assert abs(float(relevance_mass(torch.ones(1, 8, 8), region)) - 9 / 64) < 1e-7


def test_ties_are_not_broken_by_position():
    """A constant map must not favour the top-left corner: seeded ties give chance-level rank accuracy."""
    region = _box(16, 16, 0, 0, 4, 4)  # the top-left corner, the region a positional tie-break would favour
    flat = torch.ones(200, 16, 16)
    score = float(relevance_rank_accuracy(flat, region).mean())
    assert score < 0.2  # chance is 16/256 = 0.0625; a positional tie-break would give 0.25 (the first row)


def test_region_on_other_device_and_dtype_float64(batches):
    a = batches[0].double()
    np.testing.assert_allclose(relevance_mass(a, REGION).numpy(), ref_mass(a, REGION), rtol=1e-12)


@pytest.mark.parametrize("metric_cls", [RelevanceMass, RelevanceRankAccuracy, PointingGame])
def test_bad_input_errors(metric_cls):
    with pytest.raises(
        TypeError,
        match=r"Expected argument `region` to be a bool tensor of shape \(H, W\), but got dtype torch.float32",
    ):
        metric_cls(torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"Expected argument `region` to contain at least one True pixel"):
        metric_cls(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"Expected argument `region` to have shape \(H, W\), but got \(1, 4, 4\)"):
        metric_cls(torch.ones(1, 4, 4, dtype=torch.bool))
    metric = metric_cls(torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"Expected argument `region` to have shape \(5, 5\), but got \(4, 4\)"):
        metric.update(torch.rand(2, 5, 5))
    with pytest.raises(
        ValueError,
        match=r"Expected argument `attributions` to be a float \(N, H, W\) or \(N, C, H, W\) tensor, but got shape \(4, 4\)",
    ):
        metric.update(torch.rand(4, 4))


def _ddp_worker(rank: int, world: int, port: int, shards: list, region: torch.Tensor, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        values = {}
        for cls in (RelevanceMass, RelevanceRankAccuracy, PointingGame):
            metric = cls(region)
            metric.update(shards[rank])
            values[cls.__name__] = float(metric.compute())
        out.put((rank, values))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_sync_to_the_global_mean(batches):
    """Two gloo ranks, each with a disjoint shard of unequal size, compute the mean over the union."""
    shards = [batches[0], torch.cat(batches[1:])]
    ctx = mp.get_context("fork")  # fork: no re-import of torch in the children (spawn costs ~30 s on 2 cores)
    queue = ctx.SimpleQueue()
    mp.start_processes(
        _ddp_worker, args=(2, free_port(), shards, REGION, queue), nprocs=2, join=True, start_method="fork"
    )
    out = dict(queue.get() for _ in range(2))
    union = torch.cat(shards)
    expected = {
        "RelevanceMass": ref_mass(union, REGION).mean(),
        "RelevanceRankAccuracy": ref_rank(union, REGION).mean(),
        "PointingGame": ref_pointing(union, REGION).mean(),
    }
    for rank in (0, 1):
        for name, value in expected.items():
            assert abs(out[rank][name] - value) < 1e-6, (rank, name)


@pytest.mark.parametrize("metric_cls", [RelevanceRankAccuracy, PointingGame])
def test_seed_must_be_an_int(metric_cls):
    with pytest.raises(TypeError, match=r"Expected argument `seed` to be an int >= 0, but got 1.5"):
        metric_cls(REGION, seed=1.5)


def test_the_box_surrounds_the_largest_component_above_fifteen_percent_of_the_peak():
    """Selvaraju et al. 2017 (after Zhou et al. 2016): binarise at 15% of the maximum, keep the largest connected
    segment, take its bounding box."""
    from captum_ext.boxes import largest_component_box

    heat = torch.full((2, 12, 12), 0.1)  # below 15% of the peak: background
    heat[:, 1:3, 1:4] = 1.0  # the peak: 6 pixels
    heat[0, 6:10, 5:9] = 0.2  # 16 pixels at 20% of the peak: the largest component
    heat[1, 6:10, 5:9] = 0.14  # the same at 14%: below the threshold
    heat[:, 10, 9] = 0.5  # touches the 16-pixel block at a corner only: 8-connected, so part of it
    assert largest_component_box(heat).tolist() == [[5, 6, 10, 11], [1, 1, 4, 3]]  # (x0, y0, x1, y1)
    assert largest_component_box(heat, threshold=0.6).tolist() == [[1, 1, 4, 3], [1, 1, 4, 3]]
    assert largest_component_box(-heat).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]  # no positive relevance: empty


def test_box_iou_and_the_top1_localisation_error_against_hand_counts():
    from captum_ext.boxes import box_iou
    from captum_ext.metrics import LocalisationError
    from captum_ext.metrics.localisation import localisation_error

    a = torch.tensor([[0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 0, 0]])
    b = torch.tensor([[2, 2, 6, 6], [0, 0, 2, 2], [0, 0, 0, 0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([4 / 28, 1.0, 0.0]))

    heat = torch.zeros(4, 16, 16)
    heat[:, 4:10, 4:10] = 1.0  # every map's box: (4, 4, 10, 10), 36 pixels
    objects = torch.tensor([[4, 4, 10, 10], [4, 4, 11, 10], [4, 4, 16, 16], [4, 4, 10, 10]])  # IoU 1, 36/42, 36/144, 1
    predictions, labels = torch.tensor([1, 2, 3, 0]), torch.tensor([1, 2, 3, 5])  # the last is misclassified
    assert localisation_error(heat, objects, predictions, labels).tolist() == [0.0, 0.0, 1.0, 1.0]
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, objects.tolist()):
        mask[y0:y1, x0:x1] = True
    metric = LocalisationError()
    metric.update(heat[:2], masks[:2], predictions[:2], labels[:2])  # object masks give their bounding boxes
    metric.update(heat[2:], objects[2:], predictions[2:], labels[2:])
    assert float(metric.compute()) == 0.5
    with pytest.raises(ValueError, match="`boxes` to be \\(N, 4\\) integer"):
        localisation_error(heat, torch.rand(4, 4), predictions, labels)


def test_boxes_are_x0_y0_x1_y1_and_out_of_range_boxes_are_refused():
    """Issue #17: one box convention, (x0, y0, x1, y1). A wide object box on a wide image is read as wide; the same box
    in the old (top, left, bottom, right) order does not fit the image and is refused instead of read transposed."""
    from captum_ext.metrics.localisation import largest_component_box, localisation_error

    heat = torch.zeros(1, 1, 8, 20)  # (N, C, H, W): the wrapper takes the positive part of attributions
    heat[0, 0, 2:5, 3:15] = 1.0  # 3 rows x 12 columns
    assert largest_component_box(heat).tolist() == [[3, 2, 15, 5]]
    ok = localisation_error(heat, torch.tensor([[3, 2, 15, 5]]), torch.tensor([0]), torch.tensor([0]))
    assert ok.tolist() == [0.0]
    with pytest.raises(
        ValueError, match=r"`boxes` to be half-open \(x0, y0, x1, y1\) boxes .* but got \[2, 3, 5, 15\]"
    ):
        localisation_error(heat, torch.tensor([[2, 3, 5, 15]]), torch.tensor([0]), torch.tensor([0]))
