"""DeletionAUC, InsertionAUC and AOPC against a float64 per-image, per-step reference written here, and an oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from captum_ext.imputation import ConstantImputer
from captum_ext.metrics import AOPC, DeletionAUC, InsertionAUC
from captum_ext.metrics.faithfulness import perturbation_curve
from captum_ext.models import SmallCNN

N, C, H, W, K = 7, 2, 5, 6, 3


def _linear_model(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(K, C * H * W, generator=gen))
        model[1].bias.copy_(torch.randn(K, generator=gen))
    return model


def _reference_curves(
    model: nn.Module,
    x: torch.Tensor,
    saliency: np.ndarray,
    target: np.ndarray,
    steps: int,
    mode: str,
    substrate: np.ndarray,
) -> np.ndarray:
    """One image and one step at a time in float64: rank by sorting, replace, softmax, read the target."""
    weight = model[1].weight.detach().double().numpy()
    bias = model[1].bias.detach().double().numpy()
    xs = x.double().numpy()
    curves = np.zeros((x.shape[0], steps + 1))
    for i in range(x.shape[0]):
        order = np.argsort(-saliency[i].ravel(), kind="stable")
        for k in range(steps + 1):
            count = int(np.floor(k / steps * H * W + 0.5))
            chosen = np.zeros(H * W, dtype=bool)
            chosen[order[:count]] = True
            chosen = chosen.reshape(H, W)
            replace = chosen if mode == "deletion" else ~chosen
            img = np.where(replace[None], substrate[i], xs[i])
            logits = weight @ img.ravel() + bias
            probs = np.exp(logits - logits.max())
            curves[i, k] = (probs / probs.sum())[target[i]]
    return curves


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(N, C, H, W, generator=gen)
    attr = torch.randn(N, C, H, W, generator=gen)  # continuous values: no ties, the ranking is unique
    target = torch.randint(0, K, (N,), generator=gen)
    return x, attr, target


def test_deletion_and_aopc_match_float64_reference(batch):
    x, attr, target = batch
    model = _linear_model()
    saliency = attr.abs().sum(1).double().numpy()
    ref = _reference_curves(model, x, saliency, target.numpy(), 8, "deletion", np.zeros((N, C, H, W)))
    curve = perturbation_curve(model, x, attr, target, steps=8, mode="deletion")
    np.testing.assert_allclose(curve.double().numpy(), ref, atol=1e-5)

    deletion, aopc = DeletionAUC(steps=8), AOPC(steps=8)
    # two updates accumulate to the mean over all images seen
    for metric in (deletion, aopc):
        metric.update(model, x[:3], attr[:3], target[:3])
        metric.update(model, x[3:], attr[3:], target[3:])
    np.testing.assert_allclose(float(deletion.compute()), np.trapezoid(ref, dx=1 / 8, axis=1).mean(), atol=1e-5)
    np.testing.assert_allclose(float(aopc.compute()), (ref[:, :1] - ref).mean(), atol=1e-5)


def test_insertion_default_blur_matches_scipy_reference(batch):
    x, attr, target = batch
    model = _linear_model(2)
    saliency = attr.sum(1).double().numpy()
    # Petsiuk's blurred substrate: Gaussian sigma 5, edge-replicate, radius 3 sigma
    blurred = np.stack(
        [
            [gaussian_filter(x[i, c].double().numpy(), sigma=5.0, mode="nearest", truncate=3.0) for c in range(C)]
            for i in range(N)
        ]
    )
    ref = _reference_curves(model, x, saliency, target.numpy(), 5, "insertion", blurred)
    metric = InsertionAUC(steps=5, reduce="sum")
    metric.update(model, x, attr, target)
    np.testing.assert_allclose(float(metric.compute()), np.trapezoid(ref, dx=1 / 5, axis=1).mean(), atol=1e-5)


def test_saliency_maps_imputer_and_logits_without_softmax(batch):
    x, attr, target = batch
    model = _linear_model(3)
    saliency = torch.rand(N, H, W, generator=torch.Generator().manual_seed(4))
    curve = perturbation_curve(model, x, saliency, 1, steps=4, imputer=ConstantImputer(0.5), apply_softmax=False)
    for i in range(N):  # raw logit of class 1 after removing the top round-half-up(k / 4 * 30) pixels
        order = torch.argsort(saliency[i].flatten(), descending=True)
        for k, count in enumerate([0, 8, 15, 23, 30]):
            img = x[i].clone().reshape(C, -1)
            img[:, order[:count]] = 0.5
            expected = model(img.reshape(1, C, H, W))[0, 1]
            torch.testing.assert_close(curve[i, k], expected, atol=1e-5, rtol=0)


def test_chunked_equals_unchunked_and_steps_share_forward_passes(batch):
    x, attr, target = batch
    model = _linear_model()
    calls = []

    def counted(inputs: torch.Tensor) -> torch.Tensor:
        calls.append(inputs.shape[0])
        return model(inputs)

    big = perturbation_curve(counted, x, attr, target, steps=16, batch_size=512)
    assert calls == [N * 17]  # every step of every image in one forward pass
    small = perturbation_curve(model, x, attr, target, steps=16, batch_size=1)
    torch.testing.assert_close(big, small, atol=1e-6, rtol=0)


def test_merged_states_equal_one_pass(batch):
    x, attr, target = batch
    model = _linear_model()
    whole, part_a, part_b = DeletionAUC(steps=4), DeletionAUC(steps=4), DeletionAUC(steps=4)
    whole.update(model, x, attr, target)
    part_a.update(model, x[:2], attr[:2], target[:2])
    part_b.update(model, x[2:], attr[2:], target[2:])
    part_a.merge_state(part_b)  # the same sum/count reduction DDP applies across ranks
    torch.testing.assert_close(part_a.compute(), whole.compute())


def test_oracle_orders_deletion_insertion_and_aopc():
    """The model reads only a known region: removing it first must hurt most, keeping it first help most."""
    h = w = 8
    region = torch.zeros(h, w, dtype=torch.bool)
    region[2:5, 1:4] = True
    model = nn.Sequential(nn.Flatten(), nn.Linear(h * w, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = region.flatten().float()
        model[1].bias.zero_()
    x = torch.rand(16, 1, h, w, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    oracle = region.float().expand(16, h, w)
    anti = 1.0 - oracle
    random = torch.rand(16, h, w, generator=torch.Generator().manual_seed(1))
    scores = {}
    for name, saliency in (("oracle", oracle), ("random", random), ("anti", anti)):
        metrics = (DeletionAUC(steps=16), InsertionAUC(steps=16, imputer=ConstantImputer(0.0)), AOPC(steps=16))
        for metric in metrics:
            metric.update(model, x, saliency, 0)
        scores[name] = [float(m.compute()) for m in metrics]
    assert scores["oracle"][0] < scores["random"][0] - 0.05 < scores["anti"][0] - 0.1
    assert scores["oracle"][1] > scores["random"][1] + 0.05 > scores["anti"][1] + 0.1
    assert scores["oracle"][2] > scores["random"][2] + 0.05 > scores["anti"][2] + 0.1


def test_model_left_unchanged(model_guard):
    model = model_guard(SmallCNN().train())
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    metric = DeletionAUC(steps=4)
    metric.update(model, x, torch.rand(3, 32, 32), torch.tensor([1, 2, 3]))
    assert model.training


def test_errors_name_the_argument(batch):
    x, attr, target = batch
    model = _linear_model()
    with pytest.raises(ValueError, match="Expected argument `steps` to be an int >= 1, but got 0"):
        DeletionAUC(steps=0)
    with pytest.raises(ValueError, match="Expected argument `reduce` to be one of"):
        AOPC(reduce="abs")
    with pytest.raises(TypeError, match="Expected argument `imputer`"):
        InsertionAUC(imputer="blur")
    with pytest.raises(ValueError, match=r"Expected argument `attributions` of shape .* but got \(7, 5\)"):
        DeletionAUC().update(model, x, attr[:, 0, :, 0], target)
    with pytest.raises(TypeError, match=r"`target` to hold integer class indices, but got a tensor of torch.float32"):
        DeletionAUC().update(model, x, attr, target.float())
    with pytest.raises(ValueError, match=r"`target` to hold class indices in \[0, \d+\), but got 99 at position 0"):
        DeletionAUC().update(model, x, attr, torch.full_like(target, 99))
    with pytest.raises(ValueError, match="Expected argument `mode` to be one of 'deletion', 'insertion'"):
        perturbation_curve(model, x, attr, target, mode="morf")


def test_accuracy_curves_say_whether_the_target_is_still_the_top_class():
    """Issue #16: the insertion / deletion accuracy curves beside the probability curves. A 2-class model whose
    class-1 logit is fixed at 0: the target 0 stays top exactly while its own logit (the logit curve) is positive."""
    from captum_ext.metrics.faithfulness import perturbation_curve
    from captum_ext.plots import perturbation_figure

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, generator=gen)

    def model(x):
        score = x.flatten(1) @ weight
        return torch.stack([score, torch.zeros_like(score)], dim=1)

    x, attributions = torch.rand(6, 1, 8, 8, generator=gen), torch.randn(6, 1, 8, 8, generator=gen)
    target = torch.zeros(6, dtype=torch.long)
    for mode in ("deletion", "insertion"):
        logit = perturbation_curve(model, x, attributions, target, steps=8, mode=mode, apply_softmax=False)
        top1 = perturbation_curve(model, x, attributions, target, steps=8, mode=mode, top1=True)
        assert torch.equal(top1, (logit >= 0).float())  # a tie (the all-black image: 0 vs 0) goes to class 0, argmax's
    probability = perturbation_curve(model, x, attributions, target, steps=8)
    figure = perturbation_figure({"deletion": {"probability": probability, "accuracy": top1}})
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["probability", "accuracy"]
