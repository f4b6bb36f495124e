"""CAM, Grad-CAM++, layer-wise input x gradient and LIME over superpixels (issue #16), on a real architecture
(torchvision ResNet-18, random weights) and TinyViT, each against a formula or an implementation written apart
from the code under test, or an oracle model whose answer is known."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum.attr import LayerGradCam, LayerGradientXActivation
from torch import nn
from torch.nn import functional as F

from captum_ext import Explainer
from captum_ext.attr.cam import CAM, GradCAMPlusPlus
from captum_ext.attr.layerwise import LayerwiseInputXGradient
from captum_ext.attr.superpixels import superpixel_mask
from captum_ext.models import SmallCNN, TinyViT


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_cam_equals_grad_cam_on_a_gap_linear_head(resnet, images):
    """Zhou et al. 2016 / Selvaraju et al. 2017: with global average pooling and one linear layer, Grad-CAM's channel
    weights are the classifier's weights / (h w), so ReLU(CAM) / (h w) is Grad-CAM."""
    target = torch.tensor([0, 4, 9])
    cam = CAM(resnet, resnet.layer4).attribute(images, target=target)
    grad_cam = LayerGradCam(resnet, resnet.layer4).attribute(images, target=target, relu_attributions=True)
    h, w = cam.shape[-2:]
    assert cam.shape == grad_cam.shape == (3, 1, 2, 2)
    torch.testing.assert_close(cam.clamp(min=0) / (h * w), grad_cam, rtol=1e-4, atol=1e-6)
    assert (cam < 0).any()  # CAM itself is signed: the ReLU is Grad-CAM's

    activations = {}
    handle = resnet.layer4.register_forward_hook(lambda m, a, out: activations.setdefault("a", out.detach()))
    with torch.no_grad():
        resnet(images)
    handle.remove()
    expected = torch.einsum("nk,nkhw->nhw", resnet.fc.weight[target], activations["a"])  # the paper's sum_k w_ck A_k
    torch.testing.assert_close(cam[:, 0], expected, rtol=1e-5, atol=1e-6)


class TupleOutput(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x), x.mean()


def test_cam_reads_a_tuple_output_and_leaves_the_model_unchanged(resnet, images, model_guard):
    model_guard(resnet)
    plain = Explainer("cam").attribute(resnet, images, target=[1, 2, 3])
    wrapped = Explainer("cam", layer="model.layer4").attribute(TupleOutput(resnet), images, target=[1, 2, 3])
    torch.testing.assert_close(wrapped, plain)


def test_cam_refuses_any_other_head(resnet, images):
    with pytest.raises(ValueError, match="followed by global average pooling"):
        CAM(resnet, resnet.layer3).attribute(images, target=0)  # 256 channels: no linear reads them
    with pytest.raises(ValueError, match="global average pooling and an nn.Linear"):
        Explainer("cam", layer="features").attribute(
            SmallCNN(), torch.rand(2, 1, 32, 32), target=1
        )  # 4x4 pool, not GAP


def test_grad_cam_plus_plus_matches_the_papers_weights(resnet, images):
    """Chattopadhyay et al. 2018, eq. 19 with the score's gradients: alpha = g^2 / (2 g^2 + sum_ab A g^3),
    w_k = sum_ij alpha ReLU(g), map = ReLU(sum_k w_k A_k); computed here from Captum's own layer gradients."""
    target = torch.tensor([2, 2, 7])
    ours = GradCAMPlusPlus(resnet, resnet.layer4).attribute(images, target=target)
    grads, activations = compute_layer_gradients_and_eval(resnet, resnet.layer4, images, target_ind=target)
    g, a = grads[0], activations[0]
    denominator = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3
    alpha = torch.zeros_like(g)
    alpha[denominator != 0] = (g**2)[denominator != 0] / denominator[denominator != 0]
    expected = F.relu(((alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-7)
    assert ours.amax() > 0
    via_explainer = Explainer("gradcam_plus_plus").attribute(resnet, images, target=target)  # default layer: layer4
    torch.testing.assert_close(
        via_explainer[:, :1],
        F.interpolate(expected, size=(64, 64), mode="bilinear", align_corners=False),
        rtol=1e-4,
        atol=1e-6,
    )


def _layerwise_reference(model, layers, images, target):
    """Captum's LayerGradientXActivation per layer, summed over channels, upsampled, scaled to max |.| = 1, averaged."""
    total = torch.zeros(images.shape[0], 1, *images.shape[-2:])
    for layer in layers:
        layer_map = LayerGradientXActivation(model, layer).attribute(images, target=target).sum(1, keepdim=True)
        layer_map = F.interpolate(layer_map, size=images.shape[-2:], mode="bilinear", align_corners=False)
        total += layer_map / layer_map.abs().amax(dim=(1, 2, 3), keepdim=True)
    return total / len(layers)


def test_layerwise_input_x_gradient_averages_captums_layer_maps(resnet):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([3, 5])
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]  # ResNet-18 registers them in forward order
    ours = LayerwiseInputXGradient(resnet).attribute(images, target=target)
    torch.testing.assert_close(ours, _layerwise_reference(resnet, convs, images, target), rtol=1e-4, atol=1e-6)
    skipped = Explainer("layerwise_input_x_gradient", init_kwargs={"skip_first": 5}).attribute(resnet, images, target)
    torch.testing.assert_close(
        skipped[:, :1], _layerwise_reference(resnet, convs[5:], images, target), rtol=1e-4, atol=1e-6
    )
    with pytest.raises(ValueError, match="at least one layer after skipping the first 30"):
        LayerwiseInputXGradient(resnet, skip_first=30).attribute(images, target=target)


class TopLeft(nn.Module):
    """Oracle: class 1's score is the mean of the top-left 8 x 8 block; class 0's is 0. Nothing else matters."""

    def forward(self, x):
        score = x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_lime_puts_the_weight_on_the_superpixels_the_oracle_reads():
    """Ribeiro et al. 2016: LIME's linear surrogate over superpixels recovers which segments drive the score."""
    gen = torch.Generator().manual_seed(3)
    images = (
        F.interpolate(torch.rand(2, 1, 8, 8, generator=gen), size=(32, 32), mode="bilinear", align_corners=False) / 2
    )
    images[:, :, :8, :8] += (
        0.5  # brighter than the batch mean that LIME switches a superpixel off to: a positive effect
    )
    explainer = Explainer("lime", n_segments=16, n_samples=96, seed=1)
    maps = explainer.attribute(TopLeft(), images, target=1)[:, 0]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[:8, :8] = True
    mask = superpixel_mask(images, n_segments=16)[:, 0]
    for i in range(2):
        read = torch.tensor([bool(inside[mask[i] == s].any()) for s in range(int(mask[i].max()) + 1)])
        untouched = ~read[mask[i]]  # pixels of superpixels that share nothing with the block
        assert maps[i][inside].min() > 0 and maps[i][inside].mean() > 10 * maps[i][untouched].abs().mean()
    again = Explainer("lime", n_segments=16, n_samples=96, seed=1).attribute(TopLeft(), images, target=1)[:, 0]
    torch.testing.assert_close(again, maps)  # seeded: the same recipe gives the same maps


def test_superpixels_are_numbered_without_gaps_and_noise_is_not_one_segment():
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))  # pure noise, RGB
    mask = superpixel_mask(images, n_segments=36)
    for one in mask[:, 0]:
        ids = one.unique()
        assert torch.equal(ids, torch.arange(len(ids))) and len(ids) >= 20  # skimage's Lab default gave 1 segment here


@pytest.mark.parametrize("name", ["layerwise_input_x_gradient", "lime"])
def test_the_input_level_methods_run_on_a_vit(name):
    torch.manual_seed(0)
    model = TinyViT(in_channels=3).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision initialises ViT heads to zero: every map would be 0
    maps = Explainer(name).saliency(model, torch.rand(2, 3, 32, 32), target=[1, 2])
    assert maps.shape == (2, 32, 32) and bool(torch.isfinite(maps).all())
    assert bool((maps.flatten(1).std(1) > 0).all())


def test_a_lime_map_does_not_depend_on_the_rest_of_the_batch():
    """Each image is explained alone, with its own superpixel count, its own mean as the "off" value and the same
    random stream: in a batch of three or alone, the first image gets the same map (what DDP sharding needs)."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    alone = Explainer("lime", n_segments=8, n_samples=16, seed=4).attribute(model, x[:1], target=2)
    batched = Explainer("lime", n_segments=8, n_samples=16, seed=4).attribute(model, x, target=2)
    torch.testing.assert_close(batched[:1], alone)
