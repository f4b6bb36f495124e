"""The model passes each check makes (issue #26): counted by ``count_passes``, and no more than the check needs.

A check's cost is bounded below by its passes (``benchmarks/limits.py`` times them bare). These tests pin the
counts against the formula each check's docs give, and that the passes saved (the Explainer's former one-image
target probe, cascading steps that change no parameter, the unperturbed images deletion, insertion, AOPC and IROF
share, IROF's steps past an image's own superpixels) change no result.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torchvision.models import resnet18

from captum_ext import Explainer
from captum_ext._seeds import derived_seed
from captum_ext.attr.superpixels import superpixel_mask
from captum_ext.metrics import AOPC, DeletionAUC, InsertionAUC
from captum_ext.metrics.faithfulness import perturbation_curve, perturbation_scores
from captum_ext.metrics.faithfulness_correlation import irof
from captum_ext.models import SmallCNN
from captum_ext.passes import count_passes
from captum_ext.sanity import data_randomization_test, model_randomization_test, parameter_layers, randomize_layer


@pytest.fixture(scope="module")
def fresh_resnet():
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=3).eval()


X = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize(
    ("method", "kwargs", "forward", "backward"),
    [
        ("saliency", {}, 4, 4),  # one pass: the targets are checked inside it, no probe forward of their own
        ("integrated_gradients", {"n_steps": 5}, 20, 20),
        ("gradcam", {"layer": "layer4"}, 4, 4),
        ("random", {}, 1, 0),  # no model call of its own: one forward of one image checks the targets
    ],
)
def test_an_attribution_makes_only_its_methods_passes(fresh_resnet, method, kwargs, forward, backward):
    with count_passes(fresh_resnet) as passes:
        Explainer(method, **kwargs).attribute(fresh_resnet, X, Y)
    assert (passes.forward, passes.backward) == (forward, backward)
    assert not fresh_resnet._forward_hooks  # removed on exit


def test_a_target_outside_the_classes_is_refused_inside_the_pass_and_leaves_no_hook(fresh_resnet):
    for method, kwargs in (("saliency", {}), ("gradcam", {"layer": "layer4"}), ("random", {})):
        with pytest.raises(ValueError, match=r"`target` to hold class indices in \[0, 3\), but got 3 at position 1"):
            Explainer(method, **kwargs).attribute(fresh_resnet, X, torch.tensor([0, 3, 0, 0]))
        hooks = [m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in fresh_resnet.modules()]
        assert not any(hooks)


def test_counts_deletion_passes_and_removes_its_hook_on_error():
    model = SmallCNN().eval()
    x = torch.rand(3, 1, 32, 32)
    with count_passes(model) as passes:
        perturbation_curve(model, x, torch.rand(3, 32, 32), 0, steps=8, batch_size=5)
    assert (passes.forward, passes.backward) == (3 * 9, 0)
    assert passes.calls == 6  # 27 perturbed images, 5 a call, each batch built when it is forwarded
    with pytest.raises(ValueError), count_passes(model):
        DeletionAUC().update(model, x, torch.rand(2, 32, 32), 0)
    assert not model._forward_hooks
    with pytest.raises(TypeError, match="`model` to be an nn.Module"), count_passes(lambda t: t):  # type: ignore[arg-type]
        pass


def _reference_cascading(model, inputs, target):
    """Adebayo's cascading test written out step by step: every layer re-initialised top-down in a copy, the
    saliency map recomputed after every step (none skipped), Spearman of the channel-summed |map| per image."""
    work = copy.deepcopy(model)
    order = parameter_layers(work, inputs)
    explainer = Explainer("saliency")

    def abs_map(m):
        return explainer.attribute(m, inputs, target).abs().sum(1).flatten(1).numpy()

    original = abs_map(work)
    curve = []
    for i in reversed(range(len(order))):
        randomize_layer(work.get_submodule(order[i]), derived_seed(0, "layer", i))
        after = abs_map(work)
        curve.append(np.mean([spearmanr(original[j], after[j])[0] for j in range(len(inputs))]))
    return curve


def test_cascading_skips_the_layers_a_fresh_model_cannot_change_and_keeps_every_value(fresh_resnet):
    norms = [n for n, m in fresh_resnet.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with count_passes(fresh_resnet) as passes:
        result = model_randomization_test(fresh_resnet, "saliency", X, Y, similarity=("spearman_abs",), keep_maps=0)
    assert sorted(result.unchanged) == sorted(norms)  # weight 1, bias 0 already: re-initialising changes nothing
    changed = len(result.layers) - len(norms)
    assert result.passes == 1 + changed
    assert passes.backward == 4 * (1 + changed + 1)  # + the noise floor's second pass
    expected = _reference_cascading(fresh_resnet, X, Y)
    np.testing.assert_allclose(result.similarity["spearman_abs"], expected, atol=1e-5)


def test_independent_mode_reuses_the_original_map_for_a_step_that_changes_nothing(fresh_resnet):
    result = model_randomization_test(
        fresh_resnet, "saliency", X, Y, mode="independent", similarity=("spearman_abs",), keep_maps=1
    )
    curve = dict(zip(result.layers, result.similarity["spearman_abs"]))
    assert all(curve[name] == pytest.approx(1.0) for name in result.unchanged)
    assert curve["fc"] < 1.0
    for i, name in enumerate(result.layers, start=1):  # the kept maps: the original's where nothing changed
        if name in result.unchanged:
            assert torch.equal(result.maps[i], result.maps[0])
    assert result.to_dict()["unchanged"] == result.unchanged
    assert type(result).from_dict(result.to_dict()).passes == result.passes


def test_deletion_insertion_aopc_and_irof_share_their_passes_and_keep_their_values():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    attributions = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    with count_passes(model) as shared:
        scores = perturbation_scores(model, x, attributions, y, ("deletion", "insertion", "aopc", "irof"), steps=8)
    alone = {}
    with count_passes(model) as separate:
        for name, metric in (
            ("deletion", DeletionAUC(steps=8)),
            ("insertion", InsertionAUC(steps=8)),
            ("aopc", AOPC(steps=8)),
        ):
            alone[name] = torch.stack(
                [_one(metric, model, x[i : i + 1], attributions[i : i + 1], y[i : i + 1]) for i in range(6)]
            )
        alone["irof"] = irof(model, x, attributions, y)
    for name, value in alone.items():
        torch.testing.assert_close(scores[name], value, atol=1e-6, rtol=1e-5)
    segments = superpixel_mask(x, 100, 1.0)[:, 0].flatten(1).amax(1) + 1
    assert shared.forward == 6 * (1 + 2 * 8) + int(segments.sum())  # the unperturbed images once; IROF's own steps
    assert separate.forward == 3 * 6 * (8 + 1) + int(segments.sum()) + 6
    with pytest.raises(ValueError, match="distinct names from 'deletion'"):
        perturbation_scores(model, x, attributions, y, ("deletion", "deletion"))
    with pytest.raises(ValueError, match=r"`unperturbed` to be an \(N,\) = \(6,\) tensor or None, but got \(2,\)"):
        irof(model, x, attributions, y, unperturbed=torch.ones(2))
    with pytest.raises(TypeError, match="IROF needs `forward_func` to be an nn.Module"):
        perturbation_scores(lambda t: model(t), x, attributions, y, ("irof",))


def _one(metric, model, x, attributions, y):
    metric.reset()
    metric.update(model, x, attributions, y)
    return metric.compute()


def test_a_stochastic_method_is_explained_again_at_every_step(fresh_resnet):
    """The review's counterexample: reusing the original map for an unchanged step is right only for a deterministic
    method; a noise map drawn again must score about 0, as a real pass does, not the 1.0 of a copied map."""
    result = model_randomization_test(
        fresh_resnet, "random", X, Y, mode="independent", similarity=("spearman_abs",), keep_maps=0
    )
    assert result.unchanged == [] and result.passes == 1 + len(result.layers)
    assert max(abs(v) for v in result.similarity["spearman_abs"]) < 0.2


def test_a_refused_target_does_not_advance_the_stochastic_sequence(fresh_resnet):
    explainer = Explainer("smoothgrad", nt_samples=2)
    with pytest.raises(ValueError, match="class indices"):
        explainer.attribute(fresh_resnet, X, torch.tensor([0, 7, 0, 0]))
    first = explainer.attribute(fresh_resnet, X, Y)
    assert torch.equal(first, Explainer("smoothgrad", nt_samples=2).attribute(fresh_resnet, X, Y))


def test_irof_maps_of_the_wrong_shape_are_refused_before_any_pass():
    model = SmallCNN().eval()
    x = torch.rand(2, 1, 32, 32)
    with count_passes(model) as passes, pytest.raises(ValueError, match="inputs' shape .* for IROF"):
        perturbation_scores(model, x, torch.rand(2, 32, 32), 0, ("deletion", "irof"))
    assert passes.forward == 0
    result = data_randomization_test(model, "saliency", x, target=0, random_model=SmallCNN().eval())
    assert result.passes == 2


def test_shared_scores_on_a_trained_resnet_with_a_planted_cue_under_bf16_and_a_tuple_output():
    """A torchvision ResNet-18 trained here to read a bright corner patch (class 1): input x gradient finds it, so
    its deletion AUC is far below a random ranking's and its insertion AUC and AOPC far above (Petsiuk et al. 2018's
    ordering), with the shared passes, inside a bf16 autocast region and through a (logits, aux) output; the model is
    left as it was, and a trained network's BatchNorms change when re-initialised, so no randomisation step is skipped.
    """
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)

    def batch(n):
        x, y = torch.rand(n, 3, 32, 32, generator=gen) * 0.5, torch.randint(0, 2, (n,), generator=gen)
        x[y == 1, :, 2:8, 2:8] = 1.0
        return x, y

    model = resnet18(weights=None, num_classes=2)
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(150):
        x, y = batch(32)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x, y = batch(32)
    assert float((model(x).argmax(1) == y).float().mean()) > 0.9
    state = {k: v.clone() for k, v in model.state_dict().items()}

    class Pair(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            return self.inner(images), None

    scores = {}
    for name in ("input_x_gradient", "random"):
        maps = Explainer(name).attribute(model, x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = perturbation_scores(Pair(model), x, maps, y, steps=8)
        assert all(v.dtype == torch.float32 for v in got.values())
        scores[name] = {k: float(v[y == 1].mean()) for k, v in got.items()}
    ours, random = scores["input_x_gradient"], scores["random"]
    assert ours["deletion"] < random["deletion"] - 0.3 and ours["insertion"] > random["insertion"] + 0.2
    assert ours["aopc"] > random["aopc"] + 0.3
    result = model_randomization_test(model, "saliency", x[:8], y[:8], similarity=("spearman_abs",), keep_maps=0)
    assert result.unchanged == [] and result.passes == 1 + len(result.layers)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and not model.training
    assert not any(m._forward_hooks for m in model.modules())
