"""maps.py and imputation.py against formulas and scipy written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from captum_ext import maps
from captum_ext.imputation import BlurImputer, ConstantImputer, MeanImputer, NoiseImputer


def test_channel_reductions_match_their_formulas():
    a = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(maps.reduce_channels(a, "sum_abs"), a.abs().sum(1))
    torch.testing.assert_close(maps.reduce_channels(a, "sum"), a.sum(1))
    torch.testing.assert_close(maps.reduce_channels(a, "positive"), torch.where(a > 0, a, 0).sum(1))
    torch.testing.assert_close(maps.reduce_channels(a, "max_abs"), a.abs().max(1).values)
    with pytest.raises(
        ValueError, match=r"`reduce` to be one of 'sum_abs', 'sum', 'positive', 'max_abs', but got 'abs'"
    ):
        maps.reduce_channels(a, "abs")
    with pytest.raises(ValueError, match=r"`attributions` to be a 4-d tensor"):
        maps.reduce_channels(a[0], "sum")


def test_ranking_orders_by_value_and_breaks_ties_by_a_seeded_permutation():
    values = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert maps.rank_pixels(values).tolist() == [[1, 2, 3, 0]]
    flat = torch.zeros(1, 8, 8)
    r0, r0_again, r1 = maps.rank_pixels(flat, seed=0), maps.rank_pixels(flat, seed=0), maps.rank_pixels(flat, seed=1)
    assert torch.equal(r0, r0_again) and not torch.equal(r0, r1)
    assert sorted(r0[0].tolist()) == list(range(64))
    assert not torch.equal(r0[0], torch.arange(64)), "ties must not fall back to raster order"


def test_ranking_of_an_image_does_not_depend_on_its_place_in_the_batch_or_shard():
    """Issue #15: with a tie break drawn per batch row, a DDP shard ranked an image's ties unlike the whole batch."""
    gen = torch.Generator().manual_seed(3)
    tied = (torch.rand(6, 8, 8, generator=gen) * 3).floor()  # three values: many ties
    whole = maps.rank_pixels(tied, seed=5)
    for start, step in ((0, 2), (1, 2), (2, 3)):  # the shards of 2 and 3 ranks
        torch.testing.assert_close(maps.rank_pixels(tied[start::step], seed=5), whole[start::step])
    for i in range(6):
        torch.testing.assert_close(maps.rank_pixels(tied[i : i + 1], seed=5), whole[i : i + 1])
        # the ranking sorts by value first: every pixel ranked before another has a value at least as large
        ordered = tied[i].flatten()[whole[i]]
        assert bool((ordered[:-1] >= ordered[1:]).all())


def test_top_k_mask_selects_the_largest_pixels():
    m = torch.rand(4, 10, 10, generator=torch.Generator().manual_seed(0))
    mask = maps.top_k_mask(m, 0.3)
    assert mask.sum(dim=(1, 2)).tolist() == [30] * 4
    for i in range(4):
        assert m[i][mask[i]].min() > m[i][~mask[i]].max()
    with pytest.raises(ValueError, match=r"`fraction` to be a real number in \[0, 1\], but got 1.5"):
        maps.top_k_mask(m, 1.5)


def test_normalisations():
    m = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    torch.testing.assert_close(maps.normalize_minmax(m)[0], (m[0] - 1) / 4)
    assert torch.count_nonzero(maps.normalize_minmax(m)[1]) == 0
    p = maps.normalize_percentile(m, q=50)
    torch.testing.assert_close(p[0], (m[0] / torch.quantile(m[0].flatten(), 0.5)).clamp(-1, 1))


def test_upsample_is_bilinear_without_corner_alignment():
    m = torch.tensor([[[0.0, 1.0]]])
    up = maps.upsample(m, (1, 4))
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


def test_mean_imputer_fills_exactly_the_masked_pixels_with_the_training_mean(digits):
    x, _, _ = digits.split("test")
    x = x[:6]
    train = digits.split("train")[0]
    mean = train.double().mean(dim=(0, 2, 3)).float()
    torch.testing.assert_close(digits.train_mean, mean)
    mask = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(1)) < 0.3
    out = MeanImputer(digits.train_mean)(x, mask)
    assert torch.equal(out[:, 0][~mask], x[:, 0][~mask])
    torch.testing.assert_close(out[:, 0][mask], mean.expand(int(mask.sum())))
    assert torch.equal(x, digits.split("test")[0][:6]), "inputs must not be changed in place"


def test_masks_broadcast_over_batch_and_channels():
    x = torch.rand(2, 3, 4, 4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 2] = True
    out = ConstantImputer(7.0)(x, mask)
    assert (out[:, :, 1, 2] == 7.0).all()
    assert torch.count_nonzero(out != x) == 6
    out_rgb = MeanImputer([0.1, 0.2, 0.3])(x, mask)
    torch.testing.assert_close(out_rgb[0, :, 1, 2], torch.tensor([0.1, 0.2, 0.3]))


def test_blur_imputer_matches_scipy_gaussian_filter():
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.ones(12, 12, dtype=torch.bool)
    ours = BlurImputer(sigma=2.0)(x, mask)
    ref = np.stack(
        [ndimage.gaussian_filter(x[i, 0].numpy(), sigma=2.0, mode="nearest", truncate=3.0) for i in range(2)]
    )
    np.testing.assert_allclose(ours[:, 0].numpy(), ref, atol=1e-10)


def test_noise_imputer_is_seeded():
    x = torch.zeros(1, 1, 8, 8)
    mask = torch.ones(8, 8, dtype=torch.bool)
    a, b = NoiseImputer(std=1.0, seed=5)(x, mask), NoiseImputer(std=1.0, seed=5)(x, mask)
    assert torch.equal(a, b) and not torch.equal(a, NoiseImputer(std=1.0, seed=6)(x, mask))
    assert 0.5 < float(a.std()) < 1.5


def test_imputer_errors_name_the_argument_and_expected_form():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"`mask` of shape \(H, W\) = \(4, 4\).*but got \(5, 5\)"):
        ConstantImputer()(x, torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`mask` to be a bool tensor"):
        ConstantImputer()(x, torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"`inputs` to be a \(N, C, H, W\) tensor, but got shape \(4, 4\)"):
        ConstantImputer()(x[0, 0], torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="MeanImputer has 2 channel means but `inputs` has 1 channels"):
        MeanImputer([0.1, 0.2])(x, torch.ones(4, 4, dtype=torch.bool))
