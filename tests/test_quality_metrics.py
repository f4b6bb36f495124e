"""Robustness, randomisation and faithfulness-correlation metrics (issue #16), each against a loop written here from
the paper's definition, or an oracle model whose answer is known."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency
from skimage.metrics import structural_similarity
from torch import nn

from captum_ext import Explainer
from captum_ext.attr.superpixels import superpixel_mask
from captum_ext.metrics import (
    IROF,
    AvgSensitivity,
    FaithfulnessCorrelation,
    LocalLipschitzEstimate,
    MaxSensitivity,
    RandomLogit,
)
from captum_ext.metrics.faithfulness_correlation import faithfulness_correlation, irof
from captum_ext.metrics.random_logit import other_classes, random_logit
from captum_ext.metrics.robustness import avg_sensitivity, local_lipschitz_estimate, max_sensitivity


class Quadratic(nn.Module):
    """Class c scores sum_i w_ci x_i^2: its gradient 2 w_c x moves with the input (a known sensitivity)."""

    def __init__(self, classes: int = 3, side: int = 8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, side * side, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return (x.flatten(1) ** 2) @ self.weight.T


class Linear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(5, 1, 8, 8, generator=gen), torch.tensor([0, 1, 2, 0, 1])


def test_sensitivities_and_lipschitz_equal_their_definitions(batch):
    """Yeh et al. 2019 (relative, as Quantus) and Alvarez-Melis & Jaakkola 2018, with the documented seeded noise,
    recomputed sample by sample with Captum's Saliency."""
    x, y = batch
    model = Quadratic()
    saliency = lambda inputs: Saliency(model).attribute(inputs, target=y, abs=False)  # noqa: E731
    base = saliency(x)
    uniform = (torch.rand((6, 1, *x.shape[1:]), generator=torch.Generator().manual_seed(3)) * 2 - 1) * 0.2  # per sample
    relative = torch.stack(
        [(saliency(x + u) - base).flatten(1).norm(dim=1) / base.flatten(1).norm(dim=1) for u in uniform]
    )
    explainer = Explainer("saliency")
    torch.testing.assert_close(
        max_sensitivity(model, explainer, x, y, samples=6, seed=3), relative.amax(0), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        avg_sensitivity(model, explainer, x, y, samples=6, seed=3), relative.mean(0), rtol=1e-4, atol=1e-6
    )

    gauss = (torch.randn((6, 1, *x.shape[1:]), generator=torch.Generator().manual_seed(4)) * 0.1).expand(6, *x.shape)
    unit = lambda m: m / m.flatten(1).abs().amax(1)[:, None, None, None]  # noqa: E731
    lipschitz = torch.stack(
        [
            (unit(saliency(x + g)) - unit(base)).flatten(1).norm(dim=1) / (g.flatten(1).norm(dim=1) + 1e-10)
            for g in gauss
        ]
    )
    torch.testing.assert_close(
        local_lipschitz_estimate(model, explainer, x, y, samples=6, seed=4), lipschitz.amax(0), rtol=1e-4, atol=1e-6
    )

    linear = Linear(torch.randn(3, 64, generator=torch.Generator().manual_seed(5)))  # its gradient ignores the input
    assert max_sensitivity(linear, explainer, x, y, samples=4).abs().max() < 1e-6
    metric = MaxSensitivity(explainer, samples=6, scale=0.2, seed=3)
    metric.update(model, x[:2], None, y[:2])
    metric.update(model, x[2:], base[2:], y[2:])
    assert float(metric.compute()) == pytest.approx(
        float(
            torch.cat(
                [
                    max_sensitivity(model, explainer, x[:2], y[:2], samples=6, seed=3),
                    max_sensitivity(model, explainer, x[2:], y[2:], samples=6, seed=3),
                ]
            ).mean()
        ),
        rel=1e-5,
    )
    for cls in (AvgSensitivity, LocalLipschitzEstimate):
        assert cls(explainer, samples=2).higher_is_better is False


def test_random_logit_is_one_for_class_blind_maps_and_uses_two_dimensional_ssim(batch):
    """Sixt et al. 2020: maps that do not depend on the class score SSIM 1; maps on disjoint regions score low."""
    x, y = batch
    pattern = torch.rand(64, generator=torch.Generator().manual_seed(6))
    blind = Linear(torch.stack([pattern * (c + 1) for c in range(3)]))  # every class: the same map, rescaled
    assert torch.allclose(random_logit(blind, "saliency", x, y, num_classes=3), torch.ones(5), atol=1e-6)
    regions = torch.zeros(3, 8, 8)
    regions[0, :4, :4], regions[1, 4:, 4:], regions[2, :4, 4:] = 1.0, 1.0, 1.0
    disjoint = Linear(regions.reshape(3, 64) * pattern)
    scores = random_logit(disjoint, "saliency", x, y, num_classes=3, seed=2)
    other = other_classes(y, 3, seed=2)
    assert bool((other != y).all())
    for i in range(5):  # skimage's 2-D SSIM on |map| scaled to [0, 1]
        a = (regions[y[i]].reshape(64) * pattern).reshape(8, 8).numpy()
        b = (regions[other[i]].reshape(64) * pattern).reshape(8, 8).numpy()
        expected = structural_similarity(a / a.max(), b / b.max(), data_range=1.0, win_size=7)
        assert float(scores[i]) == pytest.approx(expected, abs=1e-5)
    metric = RandomLogit("saliency", num_classes=3, seed=2)
    metric.update(disjoint, x, None, y)
    assert float(metric.compute()) == pytest.approx(float(scores.mean()), rel=1e-5)


def test_faithfulness_correlation_is_one_for_the_exact_linear_attribution(batch):
    """Bhatt et al. 2020: for a linear model, w * (x - black) predicts every subset's logit drop exactly."""
    x, y = batch
    weight = torch.randn(3, 64, generator=torch.Generator().manual_seed(7))
    model = Linear(weight)
    black = x.flatten(1).amin(1)[:, None, None, None]
    exact = weight[y].reshape(5, 1, 8, 8) * (x - black)
    torch.testing.assert_close(
        faithfulness_correlation(model, x, exact, y, runs=30, subset_size=10), torch.ones(5), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        faithfulness_correlation(model, x, -exact, y, runs=30, subset_size=10), -torch.ones(5), atol=1e-5, rtol=0
    )
    noise = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    assert faithfulness_correlation(model, x, noise, y, runs=200, subset_size=10).abs().mean() < 0.3
    metric = FaithfulnessCorrelation(runs=30, subset_size=10)
    metric.update(model, x, exact, y)
    assert float(metric.compute()) == pytest.approx(1.0, abs=1e-5)


def _irof_loop(model, x, a, y, n_segments):
    """Rieger & Hansen 2020, one image at a time: cumulative removal of superpixels by mean relevance."""
    out = []
    for i in range(x.shape[0]):
        seg = superpixel_mask(x[i : i + 1], n_segments, 1.0)[0, 0]
        k = int(seg.max()) + 1
        relevance = [float(a[i].mean(0)[seg == s].mean()) for s in range(k)]
        order = sorted(range(k), key=lambda s: -relevance[s])
        image, fill = x[i].clone(), x[i].mean(dim=(1, 2), keepdim=True)
        p0 = torch.softmax(model(x[i : i + 1]), 1)[0, y[i]]
        drops = []
        for s in order:
            image = torch.where(seg == s, fill, image)
            drops.append(1 - float(torch.softmax(model(image[None]), 1)[0, y[i]] / p0))
        out.append(sum(drops) / k)
    return torch.tensor(out)


def test_irof_equals_the_segment_by_segment_loop_and_rewards_the_true_relevance(batch):
    x, y = batch
    weight = torch.randn(3, 64, generator=torch.Generator().manual_seed(9)) * 3
    model = Linear(weight)
    truth = weight[y].reshape(5, 1, 8, 8) * x
    with torch.no_grad():
        expected = _irof_loop(model, x, truth, y, 16)
    torch.testing.assert_close(irof(model, x, truth, y, n_segments=16), expected, rtol=1e-4, atol=1e-6)
    assert irof(model, x, truth, y, n_segments=16).mean() > irof(model, x, -truth, y, n_segments=16).mean()
    metric = IROF(n_segments=16)
    metric.update(model, x, truth, y)
    assert float(metric.compute()) == pytest.approx(float(expected.mean()), rel=1e-4)


def test_relative_stabilities_equal_their_definitions(batch):
    """Agarwal et al. 2022, sample by sample: the relative map change over the relative input change, the logit
    change, or the relative change of a layer's output, maximised over perturbations that keep the prediction."""
    from captum_ext.metrics import RelativeOutputStability, RelativeRepresentationStability
    from captum_ext.metrics.robustness import relative_stability

    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(16, 64, generator=torch.Generator().manual_seed(10)))
    saliency = lambda inputs: Saliency(model).attribute(inputs, target=y, abs=False)  # noqa: E731
    safe = lambda t: torch.where(t == 0, torch.full_like(t, 1e-6), t)  # noqa: E731
    hidden = lambda inputs: model[:3](inputs).detach()  # noqa: E731
    base, logits0 = saliency(x), model(x).detach()
    noise = (torch.rand((8, 1, *x.shape[1:]), generator=torch.Generator().manual_seed(11)) * 2 - 1) * 0.3
    expected = {kind: torch.full((8, 5), -float("inf")) for kind in ("input", "output", "representation")}
    for s, u in enumerate(noise):
        moved, logits1 = saliency(x + u), model(x + u).detach()
        top = ((moved - base) / safe(base)).flatten(1).norm(dim=1)
        denominators = {
            "input": (u.expand_as(x) / safe(x)).flatten(1).norm(dim=1),
            "output": (logits1 - logits0).norm(dim=1),
            "representation": ((hidden(x + u) - hidden(x)) / safe(hidden(x))).norm(dim=1),
        }
        kept = logits1.argmax(1) == logits0.argmax(1)
        for kind, below in denominators.items():
            expected[kind][s] = torch.where(kept, top / below.clamp(min=1e-6), -float("inf"))
    for kind in expected:
        layer = "2" if kind == "representation" else None
        ours = relative_stability(kind, model, "saliency", x, y, samples=8, radius=0.3, seed=11, layer=layer)
        torch.testing.assert_close(
            ours, expected[kind].amax(0).nan_to_num(neginf=float("nan")), rtol=1e-4, atol=1e-6, equal_nan=True
        )
    metric = RelativeOutputStability("saliency", samples=8, scale=0.3, seed=11)
    metric.update(model, x, None, y)
    assert float(metric.compute()) == pytest.approx(float(expected["output"].amax(0).mean()), rel=1e-4)
    metric = RelativeRepresentationStability("saliency", "2", samples=8, scale=0.3, seed=11)
    metric.update(model, x, None, y)
    assert float(metric.compute()) == pytest.approx(float(expected["representation"].amax(0).mean()), rel=1e-4)
    with pytest.raises(ValueError, match="`layer`"):
        relative_stability("representation", model, "saliency", x, y)


def test_monotonicity_correlation_is_one_for_the_true_feature_importance():
    """Nguyen & Martínez 2020: with a logit difference of 0 at the input and every feature perturbed to the same
    values, the probability change grows with |w_i|, so |w| ranks the features exactly as their effects do."""
    from captum_ext.metrics import MonotonicityCorrelation
    from captum_ext.metrics.faithfulness_correlation import monotonicity_correlation

    w = torch.randn(64, generator=torch.Generator().manual_seed(12))
    w = w - w.mean()  # at x = 0.5 everywhere the two logits are equal
    model = Linear(torch.stack([w, -w]))
    x = torch.full((2, 1, 8, 8), 0.5)
    y = torch.tensor([0, 1])
    importance = w.abs().reshape(1, 1, 8, 8).expand(2, 1, 8, 8)
    torch.testing.assert_close(
        monotonicity_correlation(model, x, importance, y, features_in_step=1, samples=5),
        torch.ones(2),
        atol=1e-6,
        rtol=0,
    )
    reversed_ = monotonicity_correlation(model, x, 1 / importance, y, features_in_step=1, samples=5)
    torch.testing.assert_close(reversed_, -torch.ones(2), atol=1e-6, rtol=0)
    metric = MonotonicityCorrelation(features_in_step=1, samples=3)
    metric.update(model, x, importance, y)
    assert float(metric.compute()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="`features_in_step` to divide the 64"):
        monotonicity_correlation(model, x, importance, y, features_in_step=5)


def test_occlusion_rank_correlation_is_one_where_occlusion_equals_the_method(batch):
    """For a linear model, occluding one pixel at a time with baseline b changes the logit by w (x - b): exactly
    input x gradient of (x - b), so their rank correlation is 1; a random map is near 0."""
    from captum_ext.metrics.similarity import occlusion_rank_correlation

    x, y = batch
    model = Linear(torch.randn(3, 64, generator=torch.Generator().manual_seed(13)))
    pixelwise = Explainer("occlusion", sliding_window_shapes=(1, 1, 1), strides=(1, 1, 1), baselines=0.0)
    same = occlusion_rank_correlation(model, "input_x_gradient", x, y, occlusion=pixelwise)
    torch.testing.assert_close(same, torch.ones(5), atol=1e-6, rtol=0)
    assert occlusion_rank_correlation(model, "random", x, y, occlusion=pixelwise).abs().mean() < 0.3


def test_nan_inputs_or_maps_are_refused_and_the_model_is_left_alone(batch, model_guard):
    """No silent wrong answer: a NaN input or map is a ValueError naming it; a model in train mode (BatchNorm) is
    scored in eval mode and left exactly as it was."""
    x, y = batch
    model = model_guard(nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(64, 3)).train())
    maps = torch.rand(5, 1, 8, 8)
    faithfulness_correlation(model, x, maps, y, runs=4, subset_size=4)
    irof(model, x, maps, y, n_segments=4)
    max_sensitivity(model, "saliency", x, y, samples=2)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs"):
        faithfulness_correlation(model, bad, maps, y, runs=4, subset_size=4)
    with pytest.raises(ValueError, match="attributions"):
        irof(model, x, maps * float("nan"), y)
    with pytest.raises(ValueError, match="inputs"):
        max_sensitivity(model, "saliency", bad, y, samples=2)
    with pytest.raises(ValueError, match="attributions"):
        random_logit(model, "saliency", x, y, attributions=maps.expand(5, 1, 8, 8) * float("nan"))
