"""AttentionRollout, GradientRollout and RawAttention against float64 references written from the formulas."""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import visualization
from captum.metrics import infidelity, sensitivity_max
from conftest import assert_unchanged, snapshot
from test_attention import (
    MHAViT,
    hf_vit,
    random_tiny_vit,
    reference_mhavit,
    reference_torchvision,
    seeded,
    timm_vit,
)
from torch import nn
from torch.nn import functional as F

from captum_ext import Explainer
from captum_ext.attr import AttentionRollout, GradientRollout, RawAttention
from captum_ext.attr.attention import attention_maps
from captum_ext.attr.rollout import attention_rollout, discard_smallest, gradient_rollout

TOL = 1e-5


# -- float64 references --------------------------------------------------------------------------------------------
def ref_rollout(attentions, fusion="mean", ratio=0.0, start=0):
    """Abnar & Zuidema's rollout in float64, one sample at a time: (B, T, T)."""
    out = []
    for b in range(attentions[0].shape[0]):
        tokens = attentions[0].shape[-1]
        eye = torch.eye(tokens, dtype=torch.float64)
        r = eye
        for a in attentions[start:]:
            a = a[b].detach().double()
            a = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[fusion]
            k = int(tokens * tokens * ratio)
            if k:
                flat = a.flatten().clone()
                order = torch.argsort(flat[1:])[:k] + 1  # the CLS-CLS entry (index 0) is never dropped
                flat[order] = 0.0
                a = flat.reshape(tokens, tokens)
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(dim=1, keepdim=True)
            r = a @ r
        out.append(r)
    return torch.stack(out)


def ref_gradient_rollout(logits, attentions, target, start=0):
    """Chefer et al. 2021 in float64: R = I; R += mean_h relu(dy/dA * A) @ R, layer by layer in forward order."""
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attentions)
    tokens = attentions[0].shape[-1]
    r = torch.eye(tokens, dtype=torch.float64).repeat(logits.shape[0], 1, 1)
    for a, g in list(zip(attentions, grads))[start:]:
        r = r + (g * a).clamp(min=0).mean(1).detach() @ r
    return r


def cls_grid(r: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return r[:, 0, -grid[0] * grid[1] :].reshape(-1, *grid)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return random_tiny_vit(seed=1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(11))


# -- AttentionRollout ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.3])
def test_rollout_matches_reference(vit, images, fusion, ratio, model_guard):
    model_guard(vit)
    got = AttentionRollout(vit, head_fusion=fusion, discard_ratio=ratio).attribute(images, return_grid=True)
    _, attentions = reference_torchvision(vit, images)
    torch.testing.assert_close(got.double(), cls_grid(ref_rollout(attentions, fusion, ratio), (8, 8)), atol=TOL, rtol=0)


def test_rollout_start_layer_and_batch_independence(vit, images):
    explain = AttentionRollout(vit, discard_ratio=0.5, start_layer=2)
    batched = explain.attribute(images, return_grid=True)
    _, attentions = reference_torchvision(vit, images)
    torch.testing.assert_close(
        batched.double(), cls_grid(ref_rollout(attentions, "mean", 0.5, start=2), (8, 8)), atol=TOL, rtol=0
    )
    singles = torch.cat([explain.attribute(images[i : i + 1], return_grid=True) for i in range(3)])
    torch.testing.assert_close(batched, singles, atol=1e-6, rtol=0)


def test_rollout_non_square_with_registers(model_guard):
    model = model_guard(seeded(lambda: MHAViT(registers=2)))
    x = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(12))
    got = AttentionRollout(model, head_fusion="max", discard_ratio=0.2).attribute(x, return_grid=True)
    _, attentions = reference_mhavit(model, x)
    torch.testing.assert_close(got.double(), cls_grid(ref_rollout(attentions, "max", 0.2), (8, 12)), atol=TOL, rtol=0)
    full = AttentionRollout(model, head_fusion="max", discard_ratio=0.2).attribute(x)
    torch.testing.assert_close(full, F.interpolate(got[:, None], size=(32, 48), mode="bilinear", align_corners=False))


def test_rollout_timm_non_square(model_guard):
    model = model_guard(timm_vit())
    x = torch.rand(2, 1, 40, 56, generator=torch.Generator().manual_seed(13))
    from test_attention import reference_timm_attention

    got = AttentionRollout(model).attribute(x, return_grid=True)
    torch.testing.assert_close(
        got.double(), cls_grid(ref_rollout(reference_timm_attention(model, x)), (5, 7)), atol=TOL, rtol=0
    )


def test_rollout_transformers(model_guard):
    model = model_guard(hf_vit())
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(14))
    maps = attention_maps(model, x).maps
    got = AttentionRollout(model, head_fusion="min").attribute(x, return_grid=True)
    torch.testing.assert_close(got.double(), cls_grid(ref_rollout(maps, "min"), (4, 4)), atol=TOL, rtol=0)


def test_identity_attention_rolls_out_to_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    for fusion in ("mean", "max", "min"):
        assert torch.equal(attention_rollout([eye] * 4, fusion, discard_ratio=0.5), torch.eye(5).expand(2, 5, 5))


def test_uniform_attention_known_answer(vit, model_guard):
    """Zero queries make every block's attention uniform, 1/T; then (0.5 U + 0.5 I)^L = 2^-L I + (1 - 2^-L) U."""
    model = random_tiny_vit(seed=1)
    for block in model.encoder.layers:
        dim = block.self_attention.embed_dim
        with torch.no_grad():
            block.self_attention.in_proj_weight[:dim] = 0
            block.self_attention.in_proj_bias[:dim] = 0
    model_guard(model)
    got = AttentionRollout(model).attribute(torch.rand(2, 1, 32, 32), return_grid=True)
    expected = (1 - 0.5**4) / 65
    torch.testing.assert_close(got, torch.full((2, 8, 8), expected), atol=1e-7, rtol=0)


def test_discard_exempts_cls_and_works_per_sample():
    a = torch.tensor([[[0.0, 0.5], [0.2, 0.3]], [[0.4, 0.1], [0.6, 0.7]]])
    out = discard_smallest(a, 0.5)  # k = 2 per sample
    assert torch.equal(out, torch.tensor([[[0.0, 0.5], [0.0, 0.0]], [[0.4, 0.0], [0.0, 0.7]]]))
    assert torch.equal(a[0, 1], torch.tensor([0.2, 0.3]))  # not in place


# -- GradientRollout ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [3, [1, 4, 7], "tensor"])
def test_gradient_rollout_matches_reference(vit, images, target, model_guard):
    model_guard(vit)
    index = torch.tensor([2, 0, 9]) if target == "tensor" else torch.as_tensor(target).expand(3)
    got = GradientRollout(vit).attribute(images, target=index if target == "tensor" else target, return_grid=True)
    logits, attentions = reference_torchvision(vit, images)
    want = cls_grid(ref_gradient_rollout(logits, attentions, index), (8, 8))
    assert want.abs().max() > 1e-3  # the map is not trivially zero
    torch.testing.assert_close(got.double(), want, atol=TOL, rtol=1e-4)


def test_gradient_rollout_predicted_class_start_layer_and_layer_order(vit, images):
    logits, attentions = reference_torchvision(vit, images)
    want = cls_grid(ref_gradient_rollout(logits, attentions, logits.argmax(1), start=1), (8, 8))
    got = GradientRollout(vit, start_layer=1).attribute(images, return_grid=True)
    torch.testing.assert_close(got.double(), want, atol=TOL, rtol=1e-4)
    logits, attentions = reference_torchvision(vit, images)
    grads = torch.autograd.grad(logits.gather(1, logits.argmax(1)[:, None]).sum(), attentions)
    attentions = [a.detach() for a in attentions]
    torch.testing.assert_close(
        cls_grid(gradient_rollout(attentions[1:], grads[1:]), (8, 8)), want.float(), atol=TOL, rtol=1e-4
    )
    reversed_pairs = cls_grid(gradient_rollout(attentions[1:], list(grads[1:])[::-1]).float(), (8, 8))
    assert not torch.allclose(got, reversed_pairs, atol=1e-3)  # pairing by block matters


def test_gradient_rollout_non_square_and_inference_mode(model_guard):
    model = model_guard(seeded(lambda: MHAViT(registers=1, batch_first=True)))
    x = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(15))
    with torch.inference_mode():
        got = GradientRollout(model).attribute(x, target=torch.tensor([0, 4]), return_grid=True)
    logits, attentions = reference_mhavit(model, x)
    want = cls_grid(ref_gradient_rollout(logits, attentions, torch.tensor([0, 4])), (8, 12))
    torch.testing.assert_close(got.double(), want, atol=TOL, rtol=1e-4)


def test_gradient_rollout_transformers_logits_output(model_guard):
    """Hugging Face output object (``.logits``); reference: HF's own eager attention of a float64 copy."""
    model = model_guard(hf_vit())
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(16))
    got = GradientRollout(model).attribute(x, target=1, return_grid=True)
    twin = copy.deepcopy(model).double()
    twin.set_attn_implementation("eager")
    out = twin(x.double().requires_grad_(), output_attentions=True)
    want = cls_grid(ref_gradient_rollout(out.logits, list(out.attentions), torch.tensor([1, 1])), (4, 4))
    scale = want.abs().max()  # HF's 0.02-std initialisation gives small values: compare relative to the largest
    assert scale > 1e-5
    torch.testing.assert_close(got.double() / scale, want / scale, atol=TOL, rtol=1e-4)


def test_rollout_transformers_deit_two_prefix_tokens(model_guard):
    """DeiT (CLS + distillation token): the captured attention equals HF's own ``output_attentions`` and rollout
    reads the CLS row over the 4x4 patch grid after both prefix tokens."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DeiTConfig(
        image_size=32,
        patch_size=8,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
    )
    model = model_guard(seeded(lambda: transformers.DeiTForImageClassificationWithTeacher(config), 3))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(21))
    captured = attention_maps(model, x)
    assert captured.grid == (4, 4) and captured.num_prefix_tokens == 2
    twin = copy.deepcopy(model)
    twin.set_attn_implementation("eager")
    want_maps = twin(x, output_attentions=True).attentions
    for got, want in zip(captured.maps, want_maps, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    got = AttentionRollout(model).attribute(x, return_grid=True)
    torch.testing.assert_close(
        got.double(), cls_grid(ref_rollout([m.double() for m in want_maps]), (4, 4)), atol=TOL, rtol=0
    )


# -- RawAttention ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer, head, token", [(-1, None, "cls"), (0, 2, "cls"), (None, None, 5), (2, -1, 64)])
def test_raw_attention_matches_reference(vit, images, layer, head, token, model_guard):
    model_guard(vit)
    got = RawAttention(vit, layer=layer, head=head, token=token).attribute(images, return_grid=True)
    _, attentions = reference_torchvision(vit, images)
    stack = torch.stack([a.detach() for a in attentions])  # (L, B, H, T, T)
    stack = stack.mean(0) if layer is None else stack[layer]
    rows = stack[:, :, 0 if token == "cls" else token]
    rows = rows.mean(1) if head is None else rows[:, head]
    torch.testing.assert_close(got.double(), rows[:, 1:].reshape(-1, 8, 8), atol=TOL, rtol=0)


# -- Captum forms, the Explainer and the invariants ----------------------------------------------------------------
def test_explainer_short_names(vit, images, model_guard):
    model_guard(vit)
    got = Explainer("rollout", init_kwargs={"head_fusion": "max"}).attribute(vit, images, target=1)
    _, attentions = reference_torchvision(vit, images)
    grid = cls_grid(ref_rollout(attentions, "max"), (8, 8)).float()
    up = F.interpolate(grid[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, up, atol=TOL, rtol=0)
    target = torch.tensor([1, 2, 3])
    got = Explainer("gradient_rollout").attribute(vit, images, target=target)
    expected = GradientRollout(vit).attribute(images, target=target)
    torch.testing.assert_close(got, expected)
    saliency = Explainer("gradient_rollout").saliency(vit, images, target=3, reduce="positive")
    assert saliency.shape == (3, 32, 32)


def test_tuple_inputs_and_rgb_channels(model_guard):
    model = model_guard(random_tiny_vit(seed=2, in_channels=3))
    x = torch.rand(2, 3, 32, 32)
    (out,) = AttentionRollout(model).attribute((x,))
    assert out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out[:, 0], out[:, 2])
    assert torch.equal(RawAttention(model).attribute((x,))[0], RawAttention(model).attribute(x))


def test_models_unchanged_in_train_mode_and_with_grads():
    model = random_tiny_vit(seed=3).train()
    model(torch.rand(2, 1, 32, 32)).sum().backward()  # leave .grad populated
    before = snapshot(model)
    x = torch.rand(2, 1, 32, 32)
    for explain in (AttentionRollout(model), GradientRollout(model), RawAttention(model)):
        explain.attribute(x, target=0)
    assert_unchanged(model, before)


def test_errors_name_the_argument(vit, images):
    with pytest.raises(ValueError, match=r"`head_fusion` to be one of 'mean', 'max', 'min', but got 'avg'"):
        AttentionRollout(vit, head_fusion="avg")
    with pytest.raises(ValueError, match=r"`discard_ratio` to be a real number in \[0, 1\), but got 1.5"):
        AttentionRollout(vit, discard_ratio=1.5)
    with pytest.raises(ValueError, match="`start_layer` to be a non-negative int, but got -1"):
        GradientRollout(vit, start_layer=-1)
    with pytest.raises(ValueError, match="`start_layer` to be below the model's 4 blocks, but got 4"):
        AttentionRollout(vit, start_layer=4).attribute(images)
    with pytest.raises(ValueError, match="`layer` to index one of the model's 4 blocks, but got 4"):
        RawAttention(vit, layer=4).attribute(images)
    with pytest.raises(ValueError, match="`head` to index one of the model's 4 heads, but got 4"):
        RawAttention(vit, head=4).attribute(images)
    with pytest.raises(TypeError, match="`token` to be 'cls' or an int token index, but got 'patch'"):
        RawAttention(vit, token="patch")
    with pytest.raises(
        ValueError, match=r"`target` to be an int or hold one index per input \(3,\), but got shape \(2,\)"
    ):
        GradientRollout(vit).attribute(images, target=[1, 2])
    with pytest.raises(ValueError, match=r"`target` to hold class indices in \[0, 10\), but got -1 at position 1"):
        GradientRollout(vit).attribute(images, target=[3, -1, 12])
    with pytest.raises(ValueError, match=r"`inputs` to be a float \(N, C, H, W\) tensor, but got shape \(1, 32, 32\)"):
        AttentionRollout(vit).attribute(images[0])


class NoClsViT(MHAViT):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        for norm, attn in zip(self.norms, self.attns):
            y = norm(t).transpose(0, 1)
            t = t + attn(y, y, y, need_weights=False)[0].transpose(0, 1)
        return self.head(t.mean(1))


def test_no_cls_token_is_refused_but_raw_patch_attention_works():
    model = seeded(NoClsViT)
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="Expected a CLS token before the 4x4 patch tokens"):
        AttentionRollout(model).attribute(x)
    assert RawAttention(model, token=3).attribute(x, return_grid=True).sum().item() == pytest.approx(1.0, abs=1e-5)


def test_captum_metrics_and_visualisation_accept_the_maps(vit, images):
    import matplotlib

    matplotlib.use("Agg")
    explain = AttentionRollout(vit)
    maps = explain.attribute(images, target=0)

    def perturb(inputs):
        gen = torch.Generator().manual_seed(0)
        noise = 0.01 * torch.randn(inputs.shape, generator=gen)
        return noise, inputs - noise

    with torch.random.fork_rng():
        torch.manual_seed(0)
        score = infidelity(vit, perturb, images, maps, target=0, n_perturb_samples=4)
        sens = sensitivity_max(explain.attribute, images, perturb_radius=0.01, n_perturb_samples=3)
    assert score.shape == (3,) and torch.isfinite(score).all()
    assert sens.shape == (3,) and torch.isfinite(sens).all()
    figure, _ = visualization.visualize_image_attr(
        maps[0].permute(1, 2, 0).numpy(),
        images[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="positive",
        use_pyplot=False,
    )
    assert figure is not None


# -- the Clever Hans digits ---------------------------------------------------------------------------------------
def test_rollout_finds_the_shortcut_tag_against_a_control(trained_vit, control_vit, digits):
    images, _ = digits.shortcut_test_images(tagged=True)
    region = digits.region_mask

    def tag_share(model: nn.Module) -> float:
        maps = AttentionRollout(model).attribute(images, return_grid=False)[:, 0]
        return float((maps * region).sum() / maps.sum())

    shortcut, control = tag_share(trained_vit), tag_share(control_vit)
    assert shortcut >= 2 * control, (shortcut, control)
