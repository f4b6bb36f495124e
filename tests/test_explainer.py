"""Explainer against references written here (autograd, Grad-CAM's formula, a Riemann sum), not against Captum."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from captum_ext import Explainer
from captum_ext._context import eval_mode
from captum_ext._model import capture_output
from captum_ext.attr import RandomAttribution
from captum_ext.explainer import METHODS, default_cam_layer, forward_order, last_conv_layer

# CAM needs a global-average-pool + linear head, which SmallCNN (a 4x4 pool) has not: tested on ResNet-18 instead
GRADIENT_METHODS = [m for m in METHODS if m not in ("rollout", "gradient_rollout", "cam")]


@pytest.fixture(scope="module")
def batch(digits):
    x, y, _ = digits.split("test")
    return x[:8].clone(), y[:8].clone()


def test_saliency_equals_autograd_gradient_of_target_logit(trained_cnn, batch, model_guard):
    x, y = batch
    model_guard(trained_cnn)
    ours = Explainer("saliency").attribute(trained_cnn, x, target=y)
    xr = x.double().clone().requires_grad_()
    logits = copy.deepcopy(trained_cnn).double()(xr)
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), xr)
    torch.testing.assert_close(ours.double(), grad, rtol=1e-4, atol=1e-6)
    assert (ours < 0).any(), "saliency keeps the sign"


def test_gradcam_equals_its_formula(trained_cnn, batch, model_guard):
    x, y = batch
    model_guard(trained_cnn)
    ours = Explainer("gradcam", layer="features.conv3").attribute(trained_cnn, x, target=y)
    model = copy.deepcopy(trained_cnn).double()
    acts = {}
    handle = model.features.conv3.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    logits = model(x.double())
    handle.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), a)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    ref = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-7)


def test_gradcam_default_layer_is_the_last_spatial_block_output(trained_cnn, batch):
    x, y = batch
    assert last_conv_layer(trained_cnn, x) == "features.conv3"
    assert default_cam_layer(trained_cnn, x) == "features"  # after relu3, as pytorch-grad-cam's target layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # some post-ReLU maps have no positive evidence
        default = Explainer("gradcam").attribute(trained_cnn, x, target=y)
        explicit = Explainer("gradcam", layer="features").attribute(trained_cnn, x, target=y)
    torch.testing.assert_close(default, explicit)


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("resnet18", "layer4"),
        ("resnet50", "layer4"),
        ("vgg11", "features"),
        ("densenet121", "features"),
        ("efficientnet_b0", "features"),
        ("convnext_tiny", "features"),
    ],
)
def test_gradcam_default_layer_on_torchvision_cnns_is_the_block_output(builder, expected):
    """Not the last conv (``layer4.1.conv2`` of a ResNet sits before bn2, the residual add and the ReLU)."""
    model = getattr(torchvision.models, builder)(weights=None)
    assert default_cam_layer(model, torch.zeros(1, 3, 64, 64)) == expected


def test_gradcam_never_defaults_to_a_vit_patch_embedding():
    vit = torchvision.models.vit_b_16(weights=None, image_size=32)
    with pytest.raises(ValueError, match=r"'conv_proj'.*patch embedding.*gradient_rollout"):
        Explainer("gradcam").attribute(vit, torch.rand(1, 3, 32, 32), target=0)


def test_integrated_gradients_equals_riemann_sum(trained_cnn, batch):
    x, y = batch
    steps = 32
    ours = Explainer("integrated_gradients", n_steps=steps, method="riemann_right").attribute(trained_cnn, x, y)
    model = copy.deepcopy(trained_cnn).double()
    total = torch.zeros_like(x, dtype=torch.float64)
    for k in range(1, steps + 1):
        xs = (x.double() * k / steps).requires_grad_()
        (g,) = torch.autograd.grad(model(xs).gather(1, y[:, None]).sum(), xs)
        total += g
    ref = x.double() * total / steps
    # float32 against a float64 reference: elements near zero carry the float32 rounding of the whole sum, so the
    # absolute tolerance is relative to the map's scale (1e-6 alone failed by 4e-5 on maps up to 0.5 on some CPUs)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-3, atol=2e-4 * float(ref.abs().max()))


def test_noise_tunnel_methods_on_a_linear_model_give_known_answers():
    # f(x) = w . x has gradient w everywhere: SmoothGrad = w, SmoothGrad^2 = w^2, VarGrad = 0, whatever the noise.
    torch.manual_seed(0)
    w = torch.randn(3, 1, 4, 4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False))
    model[1].weight.data = w.reshape(3, 16)
    x = torch.rand(2, 1, 4, 4)
    target = torch.tensor([0, 2])
    expected = w[target]
    torch.testing.assert_close(Explainer("smoothgrad").attribute(model, x, target), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        Explainer("smoothgrad_sq").attribute(model, x, target), expected**2, rtol=1e-5, atol=1e-6
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # VarGrad of a linear model is zero everywhere: warned
        torch.testing.assert_close(
            Explainer("vargrad").attribute(model, x, target), torch.zeros_like(x), atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion", "input_x_gradient"])
def test_a_model_that_ignores_its_input_gets_an_all_zero_map(method):
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.arange(3.0))

        def forward(self, x):
            return self.bias.expand(x.shape[0], -1) + 0 * x.sum(dim=(1, 2, 3))[:, None]

    with pytest.warns(RuntimeWarning, match=r"all 2 maps are all zero; likely cause: the target scores do not depend"):
        attributions = Explainer(method).attribute(Constant(), torch.rand(2, 1, 8, 8), target=1)
    assert torch.count_nonzero(attributions) == 0


def test_occlusion_fills_with_the_batch_mean_not_black():
    # f(x) = x[0, 0, 0]: occluding pixel (0, 0) with the fill value v changes the output by x00 - v.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1, bias=False))
    model[1].weight.data.zero_()
    model[1].weight.data[0, 0] = 1.0
    x = torch.full((2, 1, 8, 8), 0.5)
    x[0, 0, 0, 0] = 0.9
    fill = float(x.mean())
    attr = Explainer("occlusion").attribute(model, x, target=0)
    assert attr[0, 0, 0, 0].item() == pytest.approx(0.9 - fill, abs=1e-6)
    explicit = Explainer("occlusion", baselines=torch.tensor([0.0])).attribute(model, x, target=0)
    assert explicit[0, 0, 0, 0].item() == pytest.approx(0.9, abs=1e-6)


def test_works_on_a_deep_copy_and_resolves_the_layer_there(trained_cnn, batch):
    x, y = batch
    explainer = Explainer("gradcam", layer="features.conv2")
    copied = copy.deepcopy(trained_cnn)
    torch.testing.assert_close(explainer.attribute(copied, x, y), explainer.attribute(trained_cnn, x, y))
    with torch.no_grad():
        copied.features.conv2.weight.mul_(-1)
    assert not torch.allclose(explainer.attribute(copied, x, y), explainer.attribute(trained_cnn, x, y))


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_method_leaves_the_model_unchanged(method, trained_cnn, batch, model_guard):
    x, y = batch
    model = copy.deepcopy(trained_cnn).train()
    model.features.conv1.weight.grad = torch.ones_like(model.features.conv1.weight)
    model.classifier.bias.requires_grad_(False)
    model_guard(model)
    attributions = Explainer(method).attribute(model, x[:4], target=y[:4])
    assert attributions.shape == x[:4].shape
    assert torch.isfinite(attributions).all() and attributions.abs().sum() > 0


def test_maps_are_computed_in_eval_mode(trained_cnn, batch):
    # Dropout in train mode would make two saliency calls differ; in eval mode they are equal.
    x, y = batch
    model = nn.Sequential(copy.deepcopy(trained_cnn), nn.Dropout(0.5)).train()
    a = Explainer("saliency").attribute(model, x, y)
    b = Explainer("saliency").attribute(model, x, y)
    torch.testing.assert_close(a, b)
    assert model.training and model[1].training


def test_gradients_work_inside_inference_mode(trained_cnn, batch):
    x, y = batch
    expected = Explainer("saliency").attribute(trained_cnn, x, y)
    with torch.inference_mode():
        inside = Explainer("saliency").attribute(trained_cnn, x.clone(), y)
    torch.testing.assert_close(inside, expected)


def test_target_none_means_the_predicted_class(trained_cnn, batch):
    x, _ = batch
    predicted = trained_cnn(x).argmax(1)
    torch.testing.assert_close(
        Explainer("saliency").attribute(trained_cnn, x), Explainer("saliency").attribute(trained_cnn, x, predicted)
    )


def test_random_explainer_is_a_seeded_sequence(trained_cnn, batch):
    x, y = batch
    first = Explainer("random", seed=3)
    a1, a2 = first.attribute(trained_cnn, x, y), first.attribute(trained_cnn, x, y)
    assert not torch.equal(a1, a2)
    second = Explainer("random", seed=3)
    assert torch.equal(second.attribute(trained_cnn, x, y), a1)
    assert torch.equal(second.attribute(trained_cnn, x, y), a2)
    assert not torch.equal(Explainer("random", seed=4).attribute(trained_cnn, x, y), a1)


def test_stochastic_methods_do_not_touch_the_global_rng(trained_cnn, batch):
    x, y = batch
    state = torch.get_rng_state()
    Explainer("smoothgrad").attribute(trained_cnn, x, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_saliency_reduces_channels(trained_cnn, batch):
    x, y = batch
    explainer = Explainer("input_x_gradient")
    full = explainer.attribute(trained_cnn, x, y)
    torch.testing.assert_close(explainer.saliency(trained_cnn, x, y, reduce="sum_abs"), full.abs().sum(1))
    torch.testing.assert_close(explainer.saliency(trained_cnn, x, y, reduce="positive"), full.clamp(min=0).sum(1))


def test_captum_class_and_pickle_round_trip(trained_cnn, batch):
    from captum.attr import LayerGradCam, Saliency

    x, y = batch
    by_class = Explainer(Saliency, abs=False).attribute(trained_cnn, x, y)
    torch.testing.assert_close(by_class, Explainer("saliency").attribute(trained_cnn, x, y))
    layer = Explainer(LayerGradCam, layer="features", relu_attributions=True)
    restored = pickle.loads(pickle.dumps(layer))
    torch.testing.assert_close(restored.attribute(trained_cnn, x, y), Explainer("gradcam").attribute(trained_cnn, x, y))


def test_fingerprint_changes_with_every_kwarg():
    base = Explainer("integrated_gradients", n_steps=16)
    assert base.fingerprint() == Explainer("integrated_gradients", n_steps=16).fingerprint()
    assert base.fingerprint() != Explainer("integrated_gradients", n_steps=17).fingerprint()
    assert base.fingerprint() != Explainer("integrated_gradients", n_steps=16, seed=1).fingerprint()
    occl = Explainer("occlusion", baselines=torch.tensor([0.1]))
    assert occl.fingerprint() != Explainer("occlusion", baselines=torch.tensor([0.2])).fingerprint()


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"Expected argument `method` .*'saliency'.*'vargrad'.*but got 'grad_cam'"):
        Explainer("grad_cam")
    with pytest.raises(TypeError, match="Expected argument `method`"):
        Explainer(nn.Linear)


def test_unknown_layer_lists_the_modules(trained_cnn, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"Expected argument `layer`.*'features.conv9'.*'features.conv3'"):
        Explainer("gradcam", layer="features.conv9").attribute(trained_cnn, x, y)


def test_bad_inputs_and_targets_raise_clear_errors(trained_cnn, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"`inputs` to be a float \(N, C, H, W\) tensor.*shape \(1, 32, 32\)"):
        Explainer("saliency").attribute(trained_cnn, x[0], 0)
    with pytest.raises(
        ValueError, match=r"`target` to be an int or hold one index per input \(8,\), but got shape \(2,\)"
    ):
        Explainer("saliency").attribute(trained_cnn, x, [0, 1])
    with pytest.raises(ValueError, match="Expected argument `reduce`"):
        Explainer("saliency").saliency(trained_cnn, x, y, reduce="abs")


def test_a_user_attribution_that_samples_is_seeded_and_leaves_the_global_rng_alone(trained_cnn, batch):
    from captum.attr import Attribution

    class Sampling(Attribution):  # draws from the global RNG, like Lime or KernelShap do
        def attribute(self, inputs, target=None):
            return torch.rand(inputs.shape)

    x, y = batch
    state = torch.get_rng_state()
    a = Explainer(Sampling, seed=1).attribute(trained_cnn, x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(Explainer(Sampling, seed=1).attribute(trained_cnn, x, y), a)


def test_random_explainer_rejects_attribute_kwargs():
    with pytest.raises(
        ValueError, match=r"The 'random' explainer takes no attribute keyword arguments, but got \['n_steps'\]"
    ):
        Explainer("random", n_steps=3)


def test_random_attribution_never_reads_the_global_rng():
    x = torch.zeros(2, 1, 4, 4)
    state = torch.get_rng_state()
    random = RandomAttribution(nn.Identity())
    first, second = random.attribute(x), random.attribute(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(first, second)  # successive calls move on
    again = RandomAttribution(nn.Identity())
    assert torch.equal(first, again.attribute(x)) and torch.equal(second, again.attribute(x))  # seeded sequence
    assert not torch.equal(first, RandomAttribution(nn.Identity(), seed=1).attribute(x))


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def _exploding_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), Exploding(), nn.Flatten(), nn.Linear(2, 2))
    return model.train()


@pytest.mark.parametrize(
    "call", ["forward_order", "capture_output", "capture_input", "eval_mode", "saliency", "guided_backprop", "gradcam"]
)
def test_a_failing_forward_leaves_no_hooks_and_restores_modes(call, model_guard):
    """DESIGN invariant 1 under an exception: every helper that hooks or switches modes undoes it in ``finally``."""
    model, x = model_guard(_exploding_model()), torch.rand(2, 1, 5, 5)  # asserted unchanged at teardown
    calls = {
        "forward_order": lambda: forward_order(model, x, lambda m: isinstance(m, nn.Conv2d)),
        "capture_output": lambda: _forward_inside(capture_output(model, "0"), model, x),
        "capture_input": lambda: _forward_inside(capture_output(model, "1", use_input=True), model, x),
        "eval_mode": lambda: _forward_inside(eval_mode(model), model, x),
        # guided backprop hooks every ReLU-like module; Grad-CAM without `layer=` first runs a probe forward
        **{
            name: (lambda name=name: Explainer(name).attribute(model, x, torch.tensor([0, 1])))
            for name in ("saliency", "guided_backprop", "gradcam")
        },
    }
    with pytest.raises(RuntimeError, match="boom"):
        calls[call]()


def _forward_inside(context, model, x):
    with context, eval_mode(model):  # eval mode: the failing forward must not move BatchNorm's statistics
        model(x)
