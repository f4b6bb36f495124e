"""NoisyLinearImputer against an independent per-image scipy sparse solve, and ROAD on an oracle dataset."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from captum.attr import Attribution
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ext import Explainer
from captum_ext._multigrid import solve_neighbour_average
from captum_ext.evaluation import ROADResult, road, road_agreement, road_figure
from captum_ext.imputation import NoisyLinearImputer

# ROAD's neighbour weights: 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones
OFFSETS = [
    ((-1, -1), 1 / 12),
    ((-1, 0), 1 / 6),
    ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((1, 1), 1 / 12),
]


def reference_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One (H, W) plane: each masked pixel equals the weight-normalised average of its in-image neighbours;
    assembled equation by equation as a scipy sparse matrix and solved directly."""
    h, w = image.shape
    unknowns = [(i, j) for i in range(h) for j in range(w) if mask[i, j]]
    index = {p: k for k, p in enumerate(unknowns)}
    matrix = sp.lil_matrix((len(unknowns), len(unknowns)))
    rhs = np.zeros(len(unknowns))
    for k, (i, j) in enumerate(unknowns):
        for (di, dj), weight in OFFSETS:
            a, b = i + di, j + dj
            if 0 <= a < h and 0 <= b < w:
                matrix[k, k] += weight
                if mask[a, b]:
                    matrix[k, index[(a, b)]] -= weight
                else:
                    rhs[k] += weight * image[a, b]
    out = image.astype(np.float64).copy()
    if unknowns:
        solution = spla.spsolve(matrix.tocsc(), rhs)
        for k, (i, j) in enumerate(unknowns):
            out[i, j] = solution[k]
    return out


def reference_batch(images: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    x, m = images.double().numpy(), masks.numpy()
    return np.stack(
        [np.stack([reference_fill(x[n, c], m[n, c]) for c in range(x.shape[1])]) for n in range(x.shape[0])]
    )


def test_noisy_linear_matches_scipy_reference_per_channel_masks():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 14, 11, generator=gen)
    masks = torch.rand(4, 3, 14, 11, generator=gen) < torch.tensor([0.2, 0.5, 0.9]).reshape(1, 3, 1, 1)
    masks[0, 0, 3:12, 2:10] = True  # a large hole
    masks[1, 1, 0, :] = True  # a whole border row
    masks[2, 2, :, -1] = True  # a whole border column
    masks[3, 0] = False  # nothing to fill
    out = NoisyLinearImputer(noise=0.0)(x, masks)
    np.testing.assert_allclose(out.double().numpy(), reference_batch(x, masks), atol=1e-4, rtol=0)
    assert torch.equal(out[~masks], x[~masks])  # kept pixels bit-identical


def test_multigrid_solver_on_large_holes_matches_reference_in_few_iterations():
    """Large holes on a 45x38 plane (odd sides: ragged coarse levels): plain Jacobi-CG needs 52 iterations for the
    shared (N, 1) masks and 93 for the per-channel ones, the multigrid-preconditioned one 10 and 11."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 2, 45, 38, generator=gen)
    rows, cols = torch.meshgrid(torch.arange(45.0), torch.arange(38.0), indexing="ij")
    blob = (rows - 20) ** 2 + (cols - 17) ** 2 < 16**2  # a disc 32 px wide
    stripes = (cols % 9 != 0) & (rows > 3)  # 90% removed, thin kept columns
    shared = torch.stack([blob, stripes])[:, None].expand(2, 2, 45, 38)
    per_channel = torch.stack([torch.stack([blob, stripes]), torch.stack([stripes, ~blob])])
    for masks in (shared, per_channel):
        solution, iterations = solve_neighbour_average(x, masks, tol=1e-6, max_iter=200)
        assert iterations <= 25
        filled = torch.where(masks, solution, x.double())
        np.testing.assert_allclose(filled.numpy(), reference_batch(x, masks), atol=1e-4, rtol=0)
    # a fully removed plane among coarsened partial ones gets the mean and leaves its neighbours' solutions alone
    per_channel[1, 1] = True
    out = NoisyLinearImputer(noise=0.0, mean=[0.3, 0.7])(x, per_channel)
    assert torch.equal(out[1, 1], torch.full((45, 38), 0.7))
    np.testing.assert_allclose(out[0].double().numpy(), reference_batch(x[:1], per_channel[:1])[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        out[1, 0].double().numpy(), reference_fill(x[1, 0].double().numpy(), per_channel[1, 0].numpy()), atol=1e-4
    )


def test_the_scipy_backend_is_the_reference_and_the_multigrid_solver_agrees_to_1e5():
    """``backend="scipy"`` (a vectorised sparse assembly, one LU per mask) equals the equation-by-equation reference
    to rounding; the multigrid solver equals it to 1e-5 at 64 px, from salt-and-pepper masks to 90% blobs."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 64, 64, generator=gen)
    smooth = torch.nn.functional.interpolate(torch.rand(3, 1, 8, 8, generator=gen), size=(64, 64), mode="bilinear")
    masks = (
        torch.stack(
            [
                torch.rand(64, 64, generator=gen) < 0.5,  # salt and pepper
                smooth[1, 0] > smooth[1].quantile(0.5),  # blobs, 50% removed
                smooth[2, 0] > smooth[2].quantile(0.1),  # blobs, 90% removed
            ]
        )[:, None]
        .expand(3, 3, 64, 64)
        .clone()
    )
    masks[0, 2] = torch.rand(64, 64, generator=gen) < 0.3  # a channel with its own mask
    masks[1, 1] = True  # nothing left to interpolate: the mean
    direct = NoisyLinearImputer(noise=0.0, backend="scipy")(x, masks)
    multigrid = NoisyLinearImputer(noise=0.0, tol=1e-8)(x, masks)
    crop, crop_masks = x[:, :, :20, :20], masks[:, :, :20, :20]
    compared = crop_masks.clone()
    compared[1, 1] = False  # the fully removed plane: the mean, which the equation-by-equation reference has not
    reference = torch.from_numpy(reference_batch(crop, crop_masks))
    got = NoisyLinearImputer(noise=0.0, backend="scipy")(crop, crop_masks)
    np.testing.assert_allclose(got[compared].double().numpy(), reference[compared].numpy(), atol=1e-6)
    assert torch.equal(direct[1, 1], multigrid[1, 1])  # the mean fill, whichever backend
    assert float((direct - multigrid).abs().max()) <= 1e-5
    with pytest.raises(ValueError, match="`backend` to be one of 'multigrid', 'scipy', but got 'lu'"):
        NoisyLinearImputer(backend="lu")  # type: ignore[arg-type]


def test_noisy_linear_warns_when_the_iteration_cap_stops_it():
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[5:35, 5:35] = True
    with pytest.warns(RuntimeWarning, match="used all max_iter=1 iterations and may not have reached tol"):
        NoisyLinearImputer(noise=0.0, max_iter=1)(x, mask)


def test_noisy_linear_broadcasts_hw_mask_and_is_exact_for_linear_images():
    """A plane affine in (row, col) solves the neighbour-average equations exactly (holes off the border, where
    the one-sided average of an affine function is not its centre value)."""
    rows, cols = torch.meshgrid(torch.arange(9.0), torch.arange(12.0), indexing="ij")
    x = (0.3 + 0.02 * rows - 0.01 * cols).expand(2, 2, 9, 12).contiguous()
    mask = torch.zeros(2, 9, 12, dtype=torch.bool)
    mask[:, 2:7, 3:9] = True
    mask[1, 4:8, 8:11] = True
    out = NoisyLinearImputer(noise=0.0)(x, mask)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.double().numpy(), reference_batch(x, mask[:, None].expand(2, 2, 9, 12)), atol=1e-4)


def test_noisy_linear_noise_only_on_filled_pixels_and_seeded():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 16, 16, generator=gen)
    mask = torch.rand(6, 16, 16, generator=gen) < 0.5
    clean = NoisyLinearImputer(noise=0.0)(x, mask)
    noisy = NoisyLinearImputer(noise=0.05, seed=3)(x, mask)
    assert torch.equal(noisy[:, 0][~mask], x[:, 0][~mask])
    residual = (noisy - clean)[:, 0][mask]
    assert abs(float(residual.std()) - 0.05) < 0.005 and abs(float(residual.mean())) < 0.005
    assert torch.equal(noisy, NoisyLinearImputer(noise=0.05, seed=3)(x, mask))
    assert not torch.equal(noisy, NoisyLinearImputer(noise=0.05, seed=4)(x, mask))


def test_fully_removed_image_falls_back_to_the_mean():
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[0] = True  # image 0: every pixel removed; image 1 untouched
    out = NoisyLinearImputer(noise=0.0, mean=[0.25, 0.75])(x, mask)
    torch.testing.assert_close(out[0], torch.tensor([0.25, 0.75]).reshape(2, 1, 1).expand(2, 6, 6))
    assert torch.equal(out[1], x[1])
    batch_mean = NoisyLinearImputer(noise=0.0)(x, mask)[0, :, 0, 0]
    torch.testing.assert_close(batch_mean, x.mean(dim=(0, 2, 3)))


def test_imputer_errors_name_the_argument():
    with pytest.raises(ValueError, match="Expected argument `noise` to be a non-negative real number, but got -1"):
        NoisyLinearImputer(noise=-1)
    with pytest.raises(ValueError, match="Expected argument `max_iter` to be a positive int or None, but got 0"):
        NoisyLinearImputer(max_iter=0)
    with pytest.raises(ValueError, match="Expected argument `mean` to be finite"):
        NoisyLinearImputer(mean=[float("nan")])
    with pytest.raises(ValueError, match="Expected argument `mask`"):
        NoisyLinearImputer()(torch.zeros(1, 1, 4, 4), torch.zeros(3, 3, dtype=torch.bool))


# ---- ROAD on an oracle: the class signal sits in a known region and the model reads only that region ----
SIDE = 12
REGION = torch.zeros(SIDE, SIDE, dtype=torch.bool)
REGION[3:9, 4:10] = True  # 36 of 144 pixels (25%)


class RegionAttribution(Attribution):
    """The oracle: the true region ranks first; a small ramp makes every ranking unique (no ties)."""

    def __init__(self, forward_func, region: torch.Tensor):
        super().__init__(forward_func)
        self.region = region

    def attribute(self, inputs, target=None, invert: bool = False):
        ramp = torch.arange(self.region.numel(), dtype=inputs.dtype).reshape(self.region.shape) / 1e4
        first = ~self.region if invert else self.region
        return (first.to(inputs.dtype) + ramp).expand_as(inputs).clone()


@pytest.fixture(scope="module")
def oracle_data():
    gen = torch.Generator().manual_seed(0)
    n = 96
    y = torch.arange(n) % 2
    x = 0.5 * torch.randn(n, 1, SIDE, SIDE, generator=gen)
    x = x + torch.where(y == 0, 1.0, -1.0).reshape(-1, 1, 1, 1) * REGION
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([REGION.flatten().float(), -REGION.flatten().float()]))
        model[1].bias.zero_()
    return model, x, y


def test_road_oracle_morf_lerf_and_random(oracle_data, model_guard):
    model, x, y = oracle_data
    model_guard(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    oracle = Explainer(RegionAttribution, init_kwargs={"region": REGION}, name="oracle")
    morf = road(model, loader, oracle, fractions=(0.25, 0.5), order="morf")
    lerf = road(model, loader, oracle, fractions=(0.9, 0.95), order="lerf")
    assert morf.baseline_accuracy == 1.0
    assert morf.accuracy[0.5] <= 0.65 and morf.random_accuracy[0.5] >= 0.85  # region gone: near chance
    assert lerf.accuracy == {0.9: 1.0, 0.95: 1.0} and lerf.random_accuracy[0.95] < 0.95  # region removed last
    assert morf.better_than_random and lerf.better_than_random
    anti = road(model, loader, Explainer(RegionAttribution, init_kwargs={"region": REGION}, invert=True), (0.25, 0.5))
    assert not anti.better_than_random


def test_road_matches_per_image_reference_and_is_batch_invariant(oracle_data):
    """The MoRF accuracy equals a per-image loop: numpy ranking, scipy imputation, the model's argmax."""
    model, x, y = oracle_data
    oracle = Explainer(RegionAttribution, init_kwargs={"region": REGION})
    imputer = NoisyLinearImputer(noise=0.0)
    fractions = (0.2, 0.3)
    small = road(model, DataLoader(TensorDataset(x, y), batch_size=7), oracle, fractions, imputer=imputer)
    large = road(model, DataLoader(TensorDataset(x, y), batch_size=96), oracle, fractions, imputer=imputer)
    assert small.accuracy == large.accuracy and small.random_accuracy == large.random_accuracy
    score = (REGION.double() + torch.arange(SIDE * SIDE, dtype=torch.float64).reshape(SIDE, SIDE) / 1e4).numpy()
    weight = model[1].weight.detach().double().numpy()
    for fraction in fractions:
        count = int(np.floor(fraction * SIDE * SIDE + 0.5))
        removed = np.zeros(SIDE * SIDE, dtype=bool)
        removed[np.argsort(-score.ravel(), kind="stable")[:count]] = True
        correct = 0
        for i in range(x.shape[0]):
            filled = reference_fill(x[i, 0].double().numpy(), removed.reshape(SIDE, SIDE))
            correct += int(np.argmax(weight @ filled.ravel()) == int(y[i]))
        assert small.accuracy[fraction] == correct / x.shape[0]


def test_road_result_roundtrip_and_errors(oracle_data, tmp_path):
    model, x, y = oracle_data
    loader = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8)
    result = road(model, loader, "saliency", fractions=(0.1, 0.7), order="lerf")
    result.to_json(tmp_path / "road.json")
    again = ROADResult.from_json(tmp_path / "road.json")
    assert again == result and list(again.accuracy) == [0.1, 0.7]
    assert "LERF" in repr(result) and result.plot().axes
    with pytest.raises(ValueError, match="Expected argument `order` to be one of 'morf', 'lerf', but got 'top'"):
        road(model, loader, "saliency", order="top")
    with pytest.raises(ValueError, match="Expected argument `fractions` to be distinct numbers in \\[0, 1\\]"):
        road(model, loader, "saliency", fractions=(0.5, 1.5))
    with pytest.raises(TypeError, match="Expected argument `explainer` to be an Explainer or a short name"):
        road(model, loader, 3)


def test_road_fully_removed_images_get_the_dataset_mean_not_the_batch_mean():
    """Batch 1 is all black, batch 2 all white: the dataset mean is 0.5, the batch means 0 and 1. A model that
    predicts class 1 iff the image mean exceeds 0.6 gets every fully removed image right only with the dataset
    mean (with the batch mean it would call the white batch class 1: accuracy 0.5)."""

    class MeanThreshold(nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([0.6 - m, m - 0.6], dim=1) * 100

    x = torch.cat([torch.zeros(4, 1, 6, 6), torch.ones(4, 1, 6, 6)])
    labels = torch.zeros(8, dtype=torch.long)
    loader = DataLoader(TensorDataset(x, labels), batch_size=4)
    for batches in (loader, (batch for batch in loader)):  # one pass: a one-shot generator works too
        result = road(MeanThreshold(), batches, "saliency", fractions=(0.5, 1.0))
        assert result.accuracy[1.0] == 1.0 and result.random_accuracy[1.0] == 1.0
        assert result.accuracy[0.5] == 0.5  # half removed: black stays black, white stays white
        assert result.baseline_accuracy == 0.5  # unmodified: the white images are class 1


def test_road_agreement_reads_both_orders_on_the_oracle(oracle_data):
    """The oracle region ranked first wins both orders; the same ranking inverted (region last) wins neither; a
    ranking that is right in one order only is reported as such (Rong et al. 2022's order disagreement)."""
    model, x, y = oracle_data
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    oracle = Explainer(RegionAttribution, init_kwargs={"region": REGION}, name="oracle")
    anti = Explainer(RegionAttribution, init_kwargs={"region": REGION}, invert=True, name="anti")
    fractions = (0.75, 0.9, 0.95)  # random LeRF falls only once most pixels are gone
    runs = {
        (e.name, order): road(model, loader, e, fractions, order=order)
        for e in (oracle, anti)
        for order in ("morf", "lerf")
    }
    assert road_agreement(runs["oracle", "morf"], runs["oracle", "lerf"]) == "both orders"
    assert road_agreement(runs["anti", "morf"], runs["anti", "lerf"]) == "neither"

    # one explainer right in one order only: the oracle's curve in that order, the anti-oracle's in the other
    def mixed(result: ROADResult) -> ROADResult:
        return dataclasses.replace(result, explainer="mixed")

    assert road_agreement(mixed(runs["oracle", "morf"]), mixed(runs["anti", "lerf"])) == "MoRF only"
    assert road_agreement(mixed(runs["anti", "morf"]), mixed(runs["oracle", "lerf"])) == "LeRF only"
    with pytest.raises(ValueError, match="`morf` and `lerf` to score one explainer"):
        road_agreement(runs["oracle", "morf"], runs["anti", "lerf"])


def test_road_agreement_margin_and_errors():
    morf = ROADResult("m", "morf", {0.5: 0.59}, {0.5: 0.6}, 0.9)  # one image in a hundred better than random
    lerf = ROADResult("m", "lerf", {0.5: 0.7}, {0.5: 0.6}, 0.9)
    assert road_agreement(morf, lerf) == "LeRF only"
    assert road_agreement(morf, lerf, margin=0.0) == "both orders"
    with pytest.raises(ValueError, match="`morf` to be a ROADResult with order 'morf'"):
        road_agreement(lerf, morf)
    with pytest.raises(ValueError, match="`margin`"):
        road_agreement(morf, lerf, margin=-1)


def test_road_figure_one_panel_per_order_with_each_curve():
    morf = ROADResult("saliency", "morf", {0.1: 0.5, 0.5: 0.2}, {0.1: 0.7, 0.5: 0.6}, 0.8)
    other = ROADResult("gradcam", "morf", {0.1: 0.6, 0.5: 0.5}, {0.1: 0.7, 0.5: 0.6}, 0.8)
    lerf = ROADResult("saliency", "lerf", {0.1: 0.8, 0.5: 0.7}, {0.1: 0.7, 0.5: 0.6}, 0.8)
    fig = road_figure([morf, other, lerf])
    left, right = fig.axes
    assert [line.get_label() for line in left.get_lines()][:3] == ["saliency", "gradcam", "random"]
    assert list(left.get_lines()[0].get_ydata()) == [0.5, 0.2]
    assert list(right.get_lines()[0].get_ydata()) == [0.8, 0.7] and left.get_title().startswith("MoRF")
    with pytest.raises(ValueError, match="`results`"):
        road_figure([])
