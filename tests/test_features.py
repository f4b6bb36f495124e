"""Oracles for captum_ext.features: activation maximisation, filters, feature maps, top patches, concept IoU.

Every model here is tiny and built in the test (no trained fixtures), so the file runs in seconds.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn import functional as F

from captum_ext.features import (
    ActivationMaximization,
    concept_iou,
    feature_maps,
    first_layer_filters,
    receptive_field,
    top_activating_patches,
)
from captum_ext.models import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


# -- helpers --------------------------------------------------------------------------------------------------


def _zero_mean_unit(pattern: torch.Tensor) -> torch.Tensor:
    pattern = pattern - pattern.mean()
    return pattern / pattern.norm()


def _x_pattern() -> torch.Tensor:
    """A 5 x 5 "X", zero mean, unit norm: not something a smooth or random image contains by accident."""
    p = torch.zeros(5, 5)
    p[range(5), range(5)] = 1.0
    p[range(5), [4 - i for i in range(5)]] = 1.0
    return _zero_mean_unit(p)


def _best_window_correlation(image: torch.Tensor, pattern: torch.Tensor) -> float:
    """Largest Pearson correlation between ``pattern`` (k, k) and any k x k window of a (1, H, W) image."""
    k = pattern.shape[-1]
    windows = F.unfold(image[None].double(), k)[0]  # (k*k, L)
    windows = windows - windows.mean(0, keepdim=True)
    p = pattern.flatten().double() - pattern.double().mean()
    corr = (p[:, None] * windows).sum(0) / (windows.norm(dim=0) * p.norm()).clamp(min=1e-12)
    return float(corr.max())


def _pattern_cnn() -> nn.Module:
    """conv (4 channels 5x5, channel 0 set by hand to the X) -> ReLU -> 2x2 max-pool -> conv 3x3 -> ReLU."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 5, bias=False),
            relu=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 3, 3),
            relu2=nn.ReLU(),
        )
    )
    with torch.no_grad():
        model.conv.weight.copy_(0.2 * torch.randn(4, 1, 5, 5, generator=gen))
        model.conv.weight[0, 0] = _x_pattern()
        model.conv2.weight.copy_(0.2 * torch.randn(3, 4, 3, 3, generator=gen))
        model.conv2.bias.zero_()
    return model


def _seeded_small_cnn(width: int = 8) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SmallCNN(width=width).eval()


def _high_frequency_share(images: torch.Tensor, cutoff: float = 0.25) -> float:
    """Share of the (mean-removed) spectral energy above ``cutoff`` cycles/pixel (Nyquist is 0.5)."""
    x = images.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs() ** 2
    fy, fx = torch.fft.fftfreq(x.shape[-2]), torch.fft.fftfreq(x.shape[-1])
    radius = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()
    return float(power[..., radius > cutoff].sum() / power.sum())


def _shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels with zero fill (not circular: not the op the jitter used)."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(images, (pad, pad, pad, pad))
    h, w = images.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


# -- activation maximisation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_model() -> tuple[nn.Module, torch.Tensor]:
    """f(x) = W x on flattened (1, 8, 8) images, three outputs, no bias."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 64, generator=gen)
    linear = nn.Linear(64, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return nn.Sequential(nn.Flatten(), linear), weight


def test_linear_oracle_l2_only_gives_the_closed_form(linear_model, model_guard):
    # maximise w.x - l2 |x|^2: the optimum is x* = w / (2 l2); from the seeded random start with Adam
    model, weight = model_guard(linear_model[0]), linear_model[1]
    l2 = 2.0
    am = ActivationMaximization(model, (1, 8, 8), steps=64, l2=l2, tv=0, jitter=0, blur_every=0)
    images = am.visualize(target=[0, 1, 2])
    assert images.shape == (3, 1, 8, 8)
    flat = images.flatten(1).double()
    cosine = F.cosine_similarity(flat, weight.double(), dim=1)
    assert bool((cosine >= 0.99).all()), cosine
    closed_form = weight.double() / (2 * l2)
    torch.testing.assert_close(
        flat, closed_form, rtol=0, atol=0.05 * float(closed_form.abs().max())
    )  # Adam hovers within ~lr
    # an int target is the same optimisation for K = 1
    single = am.visualize(target=2)
    assert single.shape == (1, 1, 8, 8)
    assert float(F.cosine_similarity(single.flatten(1).double(), weight[2:].double())) >= 0.99


def test_trace_is_the_activation_at_each_step(linear_model, model_guard):
    model, weight = model_guard(linear_model[0]), linear_model[1]
    l2 = 2.0
    am = ActivationMaximization(model, (1, 8, 8), steps=64, l2=l2, tv=0, jitter=0, blur_every=0, seed=3)
    images, trace = am.visualize(target=[1, 0], return_trace=True)
    assert trace.shape == (64, 2)
    # the optimum's activation is |w|^2 / (2 l2); the trace ends there and starts near w.x0 (x0 ~ 0.01 N(0,1))
    optimum = weight[[1, 0]].double().pow(2).sum(1) / (2 * l2)
    torch.testing.assert_close(trace[-1].double(), optimum, rtol=0.02, atol=0)
    assert bool((trace[0].abs() < 0.01 * optimum).all())
    # and the last images' activation is what the trace would read next
    torch.testing.assert_close((images.flatten(1) * weight[[1, 0]]).sum(1).double(), optimum, rtol=0.02, atol=0)
    # the same seed gives the same run (jitter included); another seed another one
    runs = [ActivationMaximization(model, (1, 8, 8), steps=3, seed=s).visualize(target=0) for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # blur is off with blur_every=0 or blur_sigma=0, and on by default
    off, sigma0, on = (
        ActivationMaximization(model, (1, 8, 8), steps=8, l2=0, tv=0, jitter=0, **kw).visualize(target=0)
        for kw in ({"blur_every": 0}, {"blur_sigma": 0}, {})
    )
    assert torch.equal(off, sigma0) and not torch.equal(off, on)


def test_hand_set_filter_maximising_image_contains_the_pattern(model_guard):
    model = model_guard(_pattern_cnn())
    pattern = _x_pattern()
    am = ActivationMaximization(model, (1, 12, 12), steps=48, l2=0.05, tv=0, jitter=0, blur_every=0)
    images = am.visualize(layer="relu", channel=[0, 1, 2, 3])
    corr = [_best_window_correlation(images[k], pattern) for k in range(4)]
    # measured: 0.73 for the X channel, 0.23 to 0.57 for the random filters
    assert corr[0] >= 0.65, corr
    assert corr[0] > max(corr[1:]) + 0.1, corr
    # every random channel's image contains its own filter better than the X does
    for k in range(1, 4):
        own = _best_window_correlation(images[k], model.conv.weight[k, 0].detach())
        assert own > corr[k], (k, own, corr[k])


def test_tv_and_blur_reduce_high_frequency_energy(model_guard):
    model = model_guard(_seeded_small_cnn())
    targets = [0, 3, 7]
    common = {"steps": 48, "l2": 0.0, "jitter": 0}
    naive = ActivationMaximization(model, (1, 32, 32), tv=0, blur_every=0, **common).visualize(target=targets)
    tv = ActivationMaximization(model, (1, 32, 32), tv=1e-3, blur_every=0, **common).visualize(target=targets)
    blur = ActivationMaximization(model, (1, 32, 32), tv=0, blur_every=4, blur_sigma=0.5, **common).visualize(
        target=targets
    )
    hf_naive, hf_tv, hf_blur = map(_high_frequency_share, (naive, tv, blur))
    # measured: naive 0.773 of the energy above 0.25 cycles/pixel; TV 0.073; blur 0.193
    assert hf_naive > 0.5
    assert hf_tv / hf_naive <= 0.3, (hf_naive, hf_tv)
    assert hf_blur / hf_naive <= 0.5, (hf_naive, hf_blur)


def test_jitter_makes_the_result_robust_to_two_pixel_shifts(model_guard):
    model = model_guard(_seeded_small_cnn())
    targets = list(range(10))
    rows = torch.arange(10)

    def drop(images: torch.Tensor) -> float:
        with torch.no_grad():
            base = model(images)[rows, targets]
            shifted = [model(_shift(images, dy, dx))[rows, targets] for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2))]
        return float((1 - torch.stack(shifted).mean(0) / base).mean())

    settings = {"steps": 32, "l2": 0.01, "tv": 0, "blur_every": 0}
    still = ActivationMaximization(model, (1, 32, 32), jitter=0, **settings).visualize(target=targets)
    jittered = ActivationMaximization(model, (1, 32, 32), jitter=2, **settings).visualize(target=targets)
    # measured: the logit drops by ~130% of itself without jitter, by ~0% with it
    assert drop(still) > 0.3
    assert abs(drop(jittered)) < 0.25 * drop(still)


def test_value_range_clamps_and_model_is_unchanged_in_train_mode_with_grads(model_guard):
    model = _seeded_small_cnn()
    model.train()
    model.features.conv1.weight.grad = torch.ones_like(model.features.conv1.weight)
    model.classifier.bias.requires_grad_(False)
    model_guard(model)
    am = ActivationMaximization(model, (1, 32, 32), steps=6, value_range=(0.0, 1.0))
    images = am.visualize(target=[1, 2])
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    am.visualize(layer="features.relu2", channel=[0, 5])
    with torch.inference_mode():
        assert am.visualize(layer="features.conv3", channel=1).shape == (1, 1, 32, 32)


def test_channel_objective_is_the_spatial_mean(model_guard):
    # a 1x1 conv with weight 1 and no bias: channel 0's mean activation is the image mean; with L2 only the
    # optimum is the constant image 1 / (2 * l2 * H * W) per pixel
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    model = model_guard(nn.Sequential(OrderedDict(conv=conv)))
    l2 = 1.0 / 64
    images = ActivationMaximization(model, (1, 4, 4), steps=96, l2=l2, tv=0, jitter=0, blur_every=0).visualize(
        layer="conv", channel=[0, 1]
    )
    expected = torch.full((1, 4, 4), 1 / (2 * l2 * 16), dtype=torch.float64)
    torch.testing.assert_close(images[0].double(), expected, rtol=0.01, atol=0)
    torch.testing.assert_close(images[1].double(), -expected, rtol=0.01, atol=0)


def test_activation_maximization_errors():
    model = _seeded_small_cnn()
    with pytest.raises(TypeError, match="Expected argument `model` to be a torch.nn.Module, but got str"):
        ActivationMaximization("net", (1, 32, 32))
    with pytest.raises(
        ValueError, match=r"Expected argument `input_shape` to be \(C, H, W\) positive ints, but got \(2, 1, 32, 32\)"
    ):
        ActivationMaximization(model, (2, 1, 32, 32))
    with pytest.raises(ValueError, match="Expected argument `steps` to be an int >= 1, but got 0"):
        ActivationMaximization(model, (1, 32, 32), steps=0)
    with pytest.raises(ValueError, match="Expected argument `l2` to be a non-negative real number, but got -1"):
        ActivationMaximization(model, (1, 32, 32), l2=-1)
    with pytest.raises(ValueError, match="Expected argument `lr` to be a positive real number, but got 0"):
        ActivationMaximization(model, (1, 32, 32), lr=0)
    with pytest.raises(
        ValueError, match=r"Expected argument `value_range` to be None or \(lo, hi\) with lo < hi, but got \(1, 0\)"
    ):
        ActivationMaximization(model, (1, 32, 32), value_range=(1, 0))
    am = ActivationMaximization(model, (1, 32, 32), steps=1)
    with pytest.raises(
        ValueError, match="Expected either argument `target` .* but got target=None, layer=None, channel=None"
    ):
        am.visualize()
    with pytest.raises(ValueError, match="Expected either argument `target`"):
        am.visualize(target=1, layer="features.conv1", channel=0)
    with pytest.raises(
        ValueError,
        match="Expected argument `layer` with exactly one of `channel` and `direction`, but got layer='features.conv1', channel=None",
    ):
        am.visualize(layer="features.conv1")
    with pytest.raises(ValueError, match="exactly one of `channel` and `direction`"):
        am.visualize(layer="features.conv1", channel=0, direction=torch.ones(1, 16))
    with pytest.raises(ValueError, match=r"`direction` to be a \(K, channels\) tensor"):
        am.visualize(layer="features.conv1", direction=torch.ones(16))
    with pytest.raises(
        ValueError,
        match=r"Expected argument `target` to be a non-negative int or a non-empty list of them, but got \[\]",
    ):
        am.visualize(target=[])
    with pytest.raises(ValueError, match=r"Expected every index to be < 10 .* but got \[3, 10\]"):
        am.visualize(target=[3, 10])
    with pytest.raises(ValueError, match="Expected argument `layer` to name a submodule of the model; 'nope'"):
        am.visualize(layer="nope", channel=0)


# -- filters and feature maps ---------------------------------------------------------------------------------


def test_first_layer_filters_tiles_are_the_scaled_weights(model_guard):
    model = model_guard(_pattern_cnn())
    grid = first_layer_filters(model, scale=3, nrow=2)
    weight = model.conv.weight.detach().double()
    assert grid.shape == (3, 2 * (15 + 1) + 1, 2 * (15 + 1) + 1)
    for k in range(4):
        row, col = divmod(k, 2)
        top, left = 1 + row * 16, 1 + col * 16
        tile = grid[0, top : top + 15 : 3, left : left + 15 : 3].double()  # one pixel per weight
        expected = 0.5 + weight[k, 0] / (2 * weight[k, 0].abs().max())
        torch.testing.assert_close(tile, expected, rtol=0, atol=1e-6)
    # the X filter: its centre is the largest positive weight (white), a corner of the X as well
    assert float(grid[0, 1 + 6, 1 + 6]) == pytest.approx(1.0)
    # choosing a named layer; a non-conv layer is refused
    assert first_layer_filters(model, layer="conv2", scale=1).shape[0] == 3
    with pytest.raises(ValueError, match="Expected argument `layer` to name an nn.Conv2d, but 'relu' is a ReLU"):
        first_layer_filters(model, layer="relu")
    with pytest.raises(ValueError, match="Expected the model to contain an nn.Conv2d"):
        first_layer_filters(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="Expected argument `scale` to be an int >= 1, but got 0"):
        first_layer_filters(model, scale=0)


def test_feature_maps_are_the_layer_output_on_one_scale(model_guard):
    model = model_guard(_pattern_cnn())
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 12, 12, generator=gen)
    grids = feature_maps(model, "relu", x, scale=1, nrow=4)
    assert grids.shape == (2, 3, 1 + 8 + 1, 1 + 4 * 9)
    reference = F.conv2d(x.double(), model.conv.weight.detach().double()).clamp(min=0)  # (2, 4, 8, 8)
    for n in range(2):
        lo, hi = reference[n].min(), reference[n].max()
        scaled = (reference[n] - lo) / (hi - lo)
        for c in range(4):
            tile = grids[n, 0, 1:9, 1 + 9 * c : 1 + 9 * c + 8].double()
            torch.testing.assert_close(tile, scaled[c], rtol=0, atol=1e-5)
    with pytest.raises(
        ValueError,
        match=r"Expected argument `inputs` to be images \(N, C, H, W\), but got a tensor of shape \(1, 12, 12\)",
    ):
        feature_maps(model, "relu", x[0])
    with pytest.raises(
        ValueError, match=r"Expected layer 'flat' to output \(N, channels, h, w\), but got shape \(2, 64\)"
    ):
        feature_maps(nn.Sequential(OrderedDict(flat=nn.Flatten())), "flat", torch.zeros(2, 1, 8, 8))


# -- receptive field and top patches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, unit, box",
    [
        # analytic: conv1 3x3 pad 1 -> pool 2 -> conv2 3x3 pad 1 -> pool 2 -> conv3 3x3 pad 1
        ("features.conv1", (5, 7), (6, 4, 9, 7)),
        ("features.relu2", (4, 4), (5, 5, 13, 13)),
        ("features.relu2", (0, 15), (27, 0, 32, 5)),  # clipped at the border
        ("features.relu3", (4, 4), (9, 9, 27, 27)),  # 18 x 18
        ("features.pool2", (4, 4), (13, 13, 23, 23)),
    ],
)
def test_receptive_field_matches_the_analytic_one(layer, unit, box, model_guard):
    model = model_guard(_seeded_small_cnn(width=16))
    assert receptive_field(model, layer, (1, 32, 32), [unit]).tolist() == [list(box)]


def test_receptive_field_errors():
    model = _seeded_small_cnn()
    with pytest.raises(
        ValueError,
        match=r"Expected every unit position in argument `units` to lie in the layer's 8 x 8 grid, but got \(8, 0\)",
    ):
        receptive_field(model, "features.relu3", (1, 32, 32), [(8, 0)])
    with pytest.raises(
        ValueError, match=r"Expected argument `units` to be a non-empty list of \(i, j\) positions, but got \[\]"
    ):
        receptive_field(model, "features.relu3", (1, 32, 32), [])


@pytest.fixture(scope="module")
def pattern_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """48 noisy 16 x 16 images; the X pasted (amplitude 2) at a random place in images 0..11, the X's
    transpose-free rival (a plus sign) in images 12..23, nothing in the rest. Returns images, X corners (row, col)."""
    gen = torch.Generator().manual_seed(7)
    images = 0.3 * torch.randn(48, 1, 16, 16, generator=gen)
    plus = torch.zeros(5, 5)
    plus[2, :], plus[:, 2] = 1.0, 1.0
    corners = torch.randint(0, 12, (24, 2), generator=gen)
    for n, (r, c) in enumerate(corners.tolist()):
        images[n, 0, r : r + 5, c : c + 5] += 2 * (_x_pattern() if n < 12 else _zero_mean_unit(plus))
    return images, corners[:12], torch.arange(12)


def test_top_patches_of_the_hand_set_unit_contain_the_pattern(pattern_data, model_guard):
    images, corners, with_x = pattern_data
    model = model_guard(_pattern_cnn())
    batches = [(images[i : i + 16], torch.zeros(16)) for i in range(0, 48, 16)]
    result = top_activating_patches(model, "relu", 0, batches, k=8)
    assert result.receptive_field == (5, 5) and result.patches.shape == (8, 1, 5, 5)
    # the winners are images that carry the X, cut exactly where it was pasted
    assert set(result.indices.tolist()) <= set(with_x.tolist())
    for n in range(8):
        r, c = corners[int(result.indices[n])].tolist()
        assert result.boxes[n].tolist() == [c, r, c + 5, r + 5]
        # noise 0.3 on an X of amplitude 2 x unit norm: the expected correlation is about 2 / sqrt(4 + 25 * 0.09) = 0.8
        assert _best_window_correlation(result.patches[n], _x_pattern()) >= 0.7
    # float64 reference: each image's max response, the top 8 sorted
    reference = F.conv2d(images.double(), model.conv.weight[:1].detach().double()).clamp(min=0).flatten(1).amax(1)
    torch.testing.assert_close(result.activations.double(), reference.topk(8).values, rtol=1e-5, atol=1e-5)


def test_top_patches_on_a_deeper_layer_use_its_receptive_field(pattern_data, model_guard, tmp_path):
    images = pattern_data[0]
    model = model_guard(_pattern_cnn())
    result = top_activating_patches(model, "relu2", 1, [images[:20], images[20:]], k=5, pad_value=-9.0)
    # conv 5 -> pool 2 -> conv 3: 5 + 1 + 2 * 2 = 10 pixels, stride 2
    assert result.receptive_field == (10, 10)
    for n in range(5):
        i, j = result.units[n].tolist()
        assert result.boxes[n].tolist() == [2 * j, 2 * i, 2 * j + 10, 2 * i + 10]
        x0, y0, x1, y1 = result.boxes[n].tolist()
        assert torch.equal(result.patches[n], images[int(result.indices[n]), :, y0:y1, x0:x1])
    # the same under inference mode (e.g. inside a validation loop)
    with torch.inference_mode():
        again = top_activating_patches(model, "relu2", 1, [images[:20], images[20:]], k=5, pad_value=-9.0)
    assert torch.equal(again.boxes, result.boxes) and torch.equal(again.patches, result.patches)
    # JSON round trip, figure and table
    result.to_json(tmp_path / "top.json")
    data = json.loads((tmp_path / "top.json").read_text())
    assert data["indices"] == result.indices.tolist() and data["receptive_field"] == [10, 10]
    assert isinstance(result.plot(), Figure)
    assert "rank" in repr(result) and "activation" in repr(result)
    assert result.grid(scale=2).shape[0] == 3


def test_top_patches_pad_a_clipped_field_on_the_cut_side(model_guard):
    # a 5x5 conv with padding 2 and distinct weights w[a, b] = 30 - 5a + b: a single bright pixel at (r, c) wins
    # at the unit with the smallest a and largest b that still covers it, so the winning fields are clipped
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_((30 - 5 * torch.arange(5.0)[:, None] + torch.arange(5.0)[None, :]).view(1, 1, 5, 5))
    model = model_guard(nn.Sequential(OrderedDict(conv=conv)))
    x = torch.zeros(2, 1, 12, 12)
    x[0, 0, 5, 0] = 2.0  # wins at unit (7, 0): field rows 5..9, columns 0..2 (clipped on the left), 64
    x[1, 0, 11, 5] = 1.0  # wins at unit (11, 3): field rows 9..11 (clipped at the bottom), columns 1..5, 24
    result = top_activating_patches(model, "conv", 0, [x], k=2, pad_value=-1.0)
    assert result.receptive_field == (5, 5)
    assert result.units.tolist() == [[7, 0], [11, 3]]
    assert result.activations.tolist() == [64.0, 24.0]
    assert result.boxes.tolist() == [[0, 5, 3, 10], [1, 9, 6, 12]]
    first, second = result.patches[0, 0], result.patches[1, 0]
    assert torch.equal(first[:, 2:], x[0, 0, 5:10, 0:3]) and bool((first[:, :2] == -1).all())
    assert torch.equal(second[:3], x[1, 0, 9:12, 1:6]) and bool((second[3:] == -1).all())


def test_top_patches_errors():
    model = _seeded_small_cnn()
    with pytest.raises(ValueError, match="Expected argument `k` to be an int >= 1, but got 0"):
        top_activating_patches(model, "features.relu1", 0, [torch.zeros(1, 1, 32, 32)], k=0)
    with pytest.raises(
        ValueError, match=r"Expected argument `channel` to be < 8 \(channels of 'features.relu1'\), but got 8"
    ):
        top_activating_patches(model, "features.relu1", 8, [torch.zeros(1, 1, 32, 32)])
    with pytest.raises(
        ValueError, match="Expected argument `dataloader` to yield at least one batch, but it was empty"
    ):
        top_activating_patches(model, "features.relu1", 0, [])
    with pytest.raises(
        ValueError,
        match=r"Expected argument `dataloader` to yield images \(N, C, H, W\) or tuples starting with them, but got str",
    ):
        top_activating_patches(model, "features.relu1", 0, [("a", 1)])


# -- concept IoU ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def concept_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """64 noisy 24 x 24 images in 4 batches, each with a bright 6 x 6 square and a dark 6 x 6 square painted
    (not overlapping); masks (N, 2, 24, 24): concept 0 "bright", concept 1 "dark"."""
    gen = torch.Generator().manual_seed(11)
    batches = []
    for _ in range(4):
        x = 0.1 * torch.randn(16, 1, 24, 24, generator=gen)
        masks = torch.zeros(16, 2, 24, 24, dtype=torch.bool)
        for n in range(16):
            r0, c0 = torch.randint(0, 7, (2,), generator=gen).tolist()
            r1, c1 = torch.randint(12, 19, (2,), generator=gen).tolist()
            if torch.rand(1, generator=gen).item() < 0.5:
                (r0, c0), (r1, c1) = (r1, c1), (r0, c0)
            x[n, 0, r0 : r0 + 6, c0 : c0 + 6] += 1.0
            x[n, 0, r1 : r1 + 6, c1 : c1 + 6] -= 1.0
            masks[n, 0, r0 : r0 + 6, c0 : c0 + 6] = True
            masks[n, 1, r1 : r1 + 6, c1 : c1 + 6] = True
        batches.append((x, masks))
    return batches


def _concept_model() -> nn.Module:
    """3x3 conv with 3 units: 0 = mean brightness (wired to "bright"), 1 = a vertical edge, 2 = random."""
    gen = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 1 / 9
        conv.weight[1, 0] = torch.tensor([[1.0, 0.0, -1.0]] * 3)
        conv.weight[2, 0] = torch.randn(3, 3, generator=gen)
    return nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.MaxPool2d(2)))


def test_concept_iou_finds_the_wired_unit(concept_data, model_guard, tmp_path):
    model = model_guard(_concept_model())
    # the bright square covers 36 / 576 = 6.25% of the pixels, so a unit mask of the top 5% can match it
    result = concept_iou(model, "relu", concept_data, quantile=0.95, concepts=["bright", "dark"])
    iou = result.iou
    assert iou.shape == (3, 2)
    assert float(iou[0, 0]) > 0.5, iou
    assert float(iou[1:, 0].max()) < 0.25 * float(iou[0, 0]), iou
    assert result.detectors[0][0] == "bright"
    # the same at the pooled (12 x 12) layer: the unit map is upsampled to the 24 x 24 masks
    pooled = concept_iou(model, "pool", concept_data, quantile=0.95, concepts=["bright", "dark"])
    assert float(pooled.iou[0, 0]) > 0.5 and float(pooled.iou[1:, 0].max()) < 0.25 * float(pooled.iou[0, 0])
    result.to_json(tmp_path / "iou.json")
    assert json.loads((tmp_path / "iou.json").read_text())["detectors"]["0"][0] == "bright"
    assert isinstance(result.plot(), Figure)
    assert "best concept" in repr(result)


def test_concept_iou_matches_a_float64_reference(concept_data, model_guard):
    model = model_guard(_concept_model())
    q = 0.9
    result = concept_iou(model, "pool", concept_data, quantile=q)
    with torch.no_grad():
        acts = [model(x).double() for x, _ in concept_data]  # (16, 3, 12, 12) each
    values = torch.cat([a.transpose(0, 1).flatten(1) for a in acts], dim=1).numpy()
    thresholds = np.quantile(values, q, axis=1)
    np.testing.assert_allclose(result.thresholds.numpy(), thresholds, rtol=1e-5, atol=1e-6)
    inter = np.zeros((3, 2))
    union = np.zeros((3, 2))
    for a, (_, masks) in zip(acts, concept_data):
        up = F.interpolate(a, size=(24, 24), mode="bilinear", align_corners=False).numpy()
        unit = up > thresholds[None, :, None, None]
        m = masks.numpy()
        for u in range(3):
            for c in range(2):
                inter[u, c] += np.logical_and(unit[:, u], m[:, c]).sum()
                union[u, c] += np.logical_or(unit[:, u], m[:, c]).sum()
    np.testing.assert_allclose(result.iou.numpy(), inter / union, rtol=1e-6, atol=1e-6)
    assert result.concepts == ["0", "1"]
    assert set(result.detectors) == {u for u in range(3) if (inter / union)[u].max() > 0.04}


def test_concept_iou_errors(concept_data):
    model = _concept_model()
    with pytest.raises(ValueError, match=r"Expected argument `quantile` to be a number in \(0, 1\), but got 1.0"):
        concept_iou(model, "relu", concept_data, quantile=1.0)
    with pytest.raises(ValueError, match="Expected argument `concepts` to name all 2 concepts, but got 1 names"):
        concept_iou(model, "relu", concept_data, concepts=["bright"])
    with pytest.raises(ValueError, match=r"Expected argument `dataloader` to yield \(images \(N, C, H, W\), masks"):
        concept_iou(model, "relu", [torch.zeros(2, 1, 24, 24)])
    with pytest.raises(
        ValueError, match="Expected argument `dataloader` to yield at least one batch, but it was empty"
    ):
        concept_iou(model, "relu", [])
