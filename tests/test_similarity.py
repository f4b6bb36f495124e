"""MapSimilarity and its functions against scipy's spearmanr and scikit-image's SSIM and HOG (float64 references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from captum_ext.metrics import MapSimilarity
from captum_ext.metrics.similarity import (
    hog_features,
    hog_similarity,
    map_similarity,
    spearman_similarity,
    ssim_similarity,
)


def _pairs(n: int = 6, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated signed maps with ties (rounded values) and smooth structure, like saliency maps."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.randn(n, 1, size + 4, size + 4, generator=gen), 5, stride=1)[:, 0]
    a = base + 0.3 * torch.randn(n, size, size, generator=gen)
    b = base + 0.8 * torch.randn(n, size, size, generator=gen)
    return (a * 4).round() / 4, b.double()


def _unit_abs_np(m: np.ndarray) -> np.ndarray:
    m = np.abs(m).astype(np.float64)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


@pytest.mark.parametrize("absolute", [True, False])
def test_spearman_matches_scipy_with_ties(absolute):
    a, b = _pairs()
    got = spearman_similarity(a, b, absolute=absolute)
    for i in range(a.shape[0]):
        x, y = a[i].double().numpy().ravel(), b[i].numpy().ravel()
        if absolute:
            x, y = np.abs(x), np.abs(y)
        assert got[i].item() == pytest.approx(spearmanr(x, y).statistic, abs=1e-10)


def test_spearman_signed_differs_from_abs_on_sign_flip():
    a, _ = _pairs(n=2)
    assert torch.allclose(spearman_similarity(a, -a, absolute=True), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(spearman_similarity(a, -a, absolute=False), -torch.ones(2, dtype=torch.float64))


def test_ssim_matches_skimage():
    a, b = _pairs(n=4, size=28)
    got = ssim_similarity(a, b)
    for i in range(a.shape[0]):
        x, y = _unit_abs_np(a[i].numpy()), _unit_abs_np(b[i].numpy())
        expected = structural_similarity(x, y, data_range=1.0, win_size=7)
        assert got[i].item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("size", [(32, 32), (27, 41)])
def test_hog_features_match_skimage(size):
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(3, *size, generator=gen, dtype=torch.float64)
    got = hog_features(maps)
    for i in range(3):
        expected = hog(
            maps[i].numpy(),
            orientations=9,
            pixels_per_cell=(8, 8),
            cells_per_block=(3, 3),
            block_norm="L2-Hys",
            feature_vector=True,
        )
        # scikit-image sums each cell's histogram in float32 (its Cython `cdef float total`): agree to ~1e-7
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-6, atol=1e-7)


def test_hog_similarity_is_pearson_of_skimage_hog():
    a, b = _pairs(n=3)
    got = hog_similarity(a, b)
    for i in range(3):
        fa = hog(_unit_abs_np(a[i].numpy()), block_norm="L2-Hys")
        fb = hog(_unit_abs_np(b[i].numpy()), block_norm="L2-Hys")
        assert got[i].item() == pytest.approx(pearsonr(fa, fb).statistic, abs=1e-6)


def test_constant_maps_are_defined_not_nan():
    a, _ = _pairs(n=2)
    const = torch.full_like(a, 0.5)
    zero = torch.zeros_like(a)
    for name, value in map_similarity(const, zero).items():
        assert torch.equal(value, torch.ones(2, dtype=torch.float64)), name  # both constant: same
    one_sided = map_similarity(a, zero)
    for name in ("spearman_abs", "spearman", "hog"):
        assert torch.equal(one_sided[name], torch.zeros(2, dtype=torch.float64)), name  # one constant: none
    # SSIM stays finite by construction; against an all-zero map it is C1*C2-bounded and well below 1
    assert torch.isfinite(one_sided["ssim"]).all() and (one_sided["ssim"] < 0.5).all()


def test_metric_accumulates_mean_over_batches():
    a, b = _pairs(n=6)
    metric = MapSimilarity()
    metric.update(a[:4], b[:4])
    metric.update(a[4:], b[4:])
    got = metric.compute()
    assert list(got) == ["spearman_abs", "spearman", "ssim", "hog"]
    for name, values in map_similarity(a, b).items():
        assert got[name].item() == pytest.approx(values.mean().item(), abs=1e-12)
    # reference for the accumulated mean: scipy per image
    ref = np.mean(
        [spearmanr(np.abs(a[i].double().numpy().ravel()), np.abs(b[i].numpy().ravel())).statistic for i in range(6)]
    )
    assert got["spearman_abs"].item() == pytest.approx(ref, abs=1e-10)
    metric.reset()
    metric.update(a[:1], a[:1])
    assert metric.compute()["spearman"].item() == pytest.approx(1.0)


def test_metric_subset_and_order():
    a, b = _pairs(n=2)
    metric = MapSimilarity(metrics=("hog", "spearman"))
    metric.update(a, b)
    assert list(metric.compute()) == ["hog", "spearman"]


def test_errors_name_the_argument():
    a, b = _pairs(n=2)
    with pytest.raises(ValueError, match="Expected argument `metrics` to be a non-empty sequence of distinct names"):
        MapSimilarity(metrics=("spearman", "pearson"))
    with pytest.raises(
        ValueError, match="Expected argument `maps_b` to be a \\(N, H, W\\) or \\(N, C, H, W\\) tensor, but got shape"
    ):
        map_similarity(a, b[:, None, None])
    with pytest.raises(ValueError, match="Expected `maps_a` and `maps_b` to have the same shape"):
        map_similarity(a, b[:1])
    with pytest.raises(ValueError, match="Expected argument `maps_a` to hold finite values"):
        map_similarity(a.clone().fill_(float("nan")), b)
    with pytest.raises(ValueError, match="Expected maps of at least 24 x 24 pixels for HOG"):
        hog_similarity(a[:, :16, :16], b[:, :16, :16])
    with pytest.raises(ValueError, match="Expected argument `win_size` to be an odd int"):
        ssim_similarity(a, b, win_size=4)


def test_metric_states_merge_like_a_ddp_sync():
    """Sum states: two ranks' metrics merged (what DDP's sum-reduction does) equal one metric over all pairs."""
    a, b = _pairs(n=6)
    rank0, rank1, whole = MapSimilarity(), MapSimilarity(), MapSimilarity()
    rank0.update(a[:2], b[:2])
    rank1.update(a[2:], b[2:])
    whole.update(a, b)
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), whole.compute()
    for name in expected:
        assert merged[name].item() == pytest.approx(expected[name].item(), abs=1e-12)


def test_attributions_with_channels_use_the_sanity_checks_reductions():
    # Channels that cancel: sum over channels is 0 where sum of |a| is large, so the two reductions rank differently.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    metric = MapSimilarity(metrics=("spearman_abs", "spearman", "ssim"))
    metric.update(a, b)
    got = metric.compute()
    for name, reduced_a, reduced_b in (
        ("spearman_abs", a.abs().sum(1), b.abs().sum(1)),
        ("spearman", a.sum(1), b.sum(1)),
    ):
        ref = np.mean([spearmanr(reduced_a[i].flatten(), reduced_b[i].flatten())[0] for i in range(3)])
        assert float(got[name]) == pytest.approx(ref, abs=1e-10)
    assert float(got["ssim"]) == pytest.approx(
        float(map_similarity(a.abs().sum(1), b.abs().sum(1), ("ssim",))["ssim"].mean()), abs=1e-12
    )
