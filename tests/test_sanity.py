"""Sanity checks (Adebayo et al. 2018): model-parameter and data randomisation, against oracles and the paper."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from captum.attr import Attribution
from conftest import assert_unchanged, snapshot
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from torch import nn

from captum_ext import Explainer
from captum_ext._seeds import derived_seed
from captum_ext.models import SmallCNN, TinyViT
from captum_ext.sanity import (
    data_randomization_test,
    model_randomization_test,
    parameter_layers,
    randomize_layer,
    train_on_random_labels,
)


class InputMap(Attribution):
    """A model-independent "explainer": the input itself."""

    def attribute(self, inputs, target=None):
        return inputs.detach().clone()


class EdgeMap(Attribution):
    """A model-independent "explainer": the input's edges (absolute horizontal + vertical differences)."""

    def attribute(self, inputs, target=None):
        x = inputs.detach()
        edges = torch.zeros_like(x)
        edges[..., 1:, :] += (x[..., 1:, :] - x[..., :-1, :]).abs()
        edges[..., :, 1:] += (x[..., :, 1:] - x[..., :, :-1]).abs()
        return edges


@pytest.fixture(scope="module")
def probe(digits) -> torch.Tensor:
    return digits.split("test")[0][:64]


# -- oracle: a linear network, whose gradient map is a row of the product of its weight matrices -----------------


def _linear_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Linear(12, 5))


def _spearman_means(ref: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    absolute = np.mean([spearmanr(np.abs(a), np.abs(b)).statistic for a, b in zip(ref, maps)])
    signed = np.mean([spearmanr(a, b).statistic for a, b in zip(ref, maps)])
    return float(absolute), float(signed)


@pytest.mark.parametrize("mode", ["cascading", "independent"])
@pytest.mark.parametrize("recompute_target", [False, True])
def test_linear_oracle_cascading_and_independent(mode, recompute_target, model_guard):
    model = model_guard(_linear_net())
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    seed = 7
    result = model_randomization_test(
        model,
        "saliency",
        x,
        mode=mode,
        similarity=("spearman_abs", "spearman"),
        seed=seed,
        recompute_target=recompute_target,
    )
    assert result.layers == ["2", "1"]  # top-down: logits layer first
    # Reference: layer i (forward order) is drawn with derived_seed(seed, "layer", i) by the documented initialiser.
    lin1, lin2 = copy.deepcopy(model[1]), copy.deepcopy(model[2])
    randomize_layer(lin1, derived_seed(seed, "layer", 0))
    randomize_layer(lin2, derived_seed(seed, "layer", 1))
    w1, w2 = model[1].weight.detach().double(), model[2].weight.detach().double()
    r1, r2 = lin1.weight.detach().double(), lin2.weight.detach().double()
    b = {
        "w1": model[1].bias.detach().double(),
        "w2": model[2].bias.detach().double(),
        "r1": lin1.bias.detach().double(),
        "r2": lin2.bias.detach().double(),
    }
    flat = x.reshape(16, -1).double()
    if mode == "cascading":
        stages = [(r2, w1, "r2", "w1"), (r2, r1, "r2", "r1")]
    else:
        stages = [(r2, w1, "r2", "w1"), (w2, r1, "w2", "r1")]
    original_logits = (flat @ w1.T + b["w1"]) @ w2.T + b["w2"]
    target = original_logits.argmax(1)
    ref = (w2 @ w1)[target].numpy()
    for step, (top, bottom, top_b, bottom_b) in enumerate(stages):
        t = target
        if recompute_target:
            t = ((flat @ bottom.T + b[bottom_b]) @ top.T + b[top_b]).argmax(1)
        maps = (top @ bottom)[t].numpy()
        expected_abs, expected_signed = _spearman_means(ref, maps)
        assert result.similarity["spearman_abs"][step] == pytest.approx(expected_abs, abs=1e-6)
        assert result.similarity["spearman"][step] == pytest.approx(expected_signed, abs=1e-6)


def test_layers_by_container_name_and_given_order():
    model = _linear_net()
    x = torch.rand(4, 1, 8, 8)
    result = model_randomization_test(model, "saliency", x, layers=["1", ""], similarity=("spearman_abs",))
    assert result.layers == ["1", "<model>"]  # order as given; "" randomises every layer at once
    with pytest.raises(ValueError, match="Expected each entry of `layers` to name a layer with parameters.*'0'"):
        model_randomization_test(model, "saliency", x, layers=["0"])


# -- the paper's findings --------------------------------------------------------------------------------------


def test_model_independent_explainer_fails(probe, trained_cnn):
    for attribution in (InputMap, EdgeMap):
        result = model_randomization_test(trained_cnn, Explainer(attribution), probe[:16])
        for name, values in result.similarity.items():
            assert values == pytest.approx([1.0] * 4, abs=1e-9), name
        assert result.passed is False
        assert result.reproducible is True


def test_noise_explainer_passes_plain_test_but_is_caught_by_noise_floor(probe, trained_cnn):
    result = model_randomization_test(trained_cnn, "random", probe[:32])
    assert result.passed is True  # a plain similarity test is fooled (Binder et al. 2023)
    assert abs(result.noise_floor["spearman_abs"]) < 0.1
    assert result.reproducible is False
    assert "reproducible=False" in repr(result)


def test_adebayo_on_trained_cnn(probe, trained_cnn, model_guard):
    model_guard(trained_cnn)
    rng = torch.random.get_rng_state()
    results = {
        name: model_randomization_test(trained_cnn, name, probe, similarity=("spearman_abs",))
        for name in ("guided_backprop", "saliency", "gradcam")
    }
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG stream is untouched
    top = {name: r.similarity["spearman_abs"][0] for name, r in results.items()}
    # measured (64 test images): guided backprop 0.731, gradient 0.315, Grad-CAM -0.055
    assert top["guided_backprop"] >= 0.7
    assert top["guided_backprop"] >= top["saliency"] + 0.2
    assert top["gradcam"] <= 0.5
    assert results["guided_backprop"].passed is False
    assert results["saliency"].passed is True
    assert all(r.reproducible for r in results.values())
    assert results["saliency"].layers == ["classifier", "features.conv3", "features.conv2", "features.conv1"]
    # cascading: randomising deeper layers destroys more of guided backprop's map
    gbp = results["guided_backprop"].similarity["spearman_abs"]
    assert gbp[-1] < gbp[0]


def test_trained_vit_rollout_is_class_agnostic_gradient_rollout_passes(digits, trained_vit, model_guard):
    """On the trained TinyViT: attention rollout never reads the classification head, so randomising the head
    leaves its map exactly unchanged (Spearman 1: the cascading test fails at its first step, the class-agnostic
    property Chefer et al. 2021 point out), while gradient-weighted rollout depends on the head and passes."""
    model_guard(trained_vit)
    x, y, _ = digits.split("test")
    results = {
        name: model_randomization_test(trained_vit, name, x[:64], y[:64], similarity=("spearman_abs",))
        for name in ("rollout", "gradient_rollout")
    }
    rollout, gradient = (results[n].similarity["spearman_abs"] for n in ("rollout", "gradient_rollout"))
    assert results["rollout"].layers[0] == "heads.head"
    assert rollout[0] > 0.999 and rollout[-1] < 0.3  # the head does not matter, the attention weights do
    assert results["rollout"].passed is False
    # measured: gradient rollout 0.351 after the head, 0.044 after every layer
    assert gradient[0] < 0.6 and results["gradient_rollout"].passed is True


def test_user_model_with_batchnorm_grads_and_hooks_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)
    )
    x = torch.rand(8, 1, 8, 8)
    model.train()
    model(x).sum().backward()  # .grad present, running stats moved
    model[4].register_forward_hook(lambda m, i, o: None)
    before = snapshot(model)
    result = model_randomization_test(model, "saliency", x, mode="independent", similarity=("spearman_abs",))
    assert_unchanged(model, before)
    assert result.layers == ["4", "1", "0"]  # BatchNorm is a layer of its own


# -- randomisation details ---------------------------------------------------------------------------------------


def test_multihead_attention_fully_randomised():
    mha = nn.MultiheadAttention(16, 4)  # torch zero-initialises the biases: its own initialiser would keep them
    before = {k: v.clone() for k, v in mha.named_parameters()}
    rng = torch.random.get_rng_state()
    randomize_layer(mha, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng)
    for name, param in mha.named_parameters():
        assert (param != before[name]).float().mean() > 0.99, name
    again = copy.deepcopy(mha)
    randomize_layer(again, seed=0)
    for (name, a), b in zip(mha.named_parameters(), again.parameters()):
        assert torch.equal(a, b), name  # the seed fixes the draw


def test_vit_layers_cover_every_parameter_once():
    model = TinyViT(num_layers=1)
    order = parameter_layers(model, torch.zeros(2, 1, 32, 32))
    block = "encoder.layers.encoder_layer_0"
    assert order == [
        "",
        "conv_proj",
        "encoder",
        f"{block}.ln_1",
        f"{block}.self_attention",
        f"{block}.ln_2",
        f"{block}.mlp.0",
        f"{block}.mlp.3",
        "encoder.ln",
        "heads.head",
    ]
    owned = []
    for name in order:
        module = model.get_submodule(name)
        params = module.parameters() if isinstance(module, nn.MultiheadAttention) else module.parameters(recurse=False)
        owned += [id(p) for p in params]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())


def test_vit_randomisation_runs_and_leaves_model(model_guard):
    model = TinyViT(num_layers=1)
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision zero-initialises the head
    model_guard(model)
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    result = model_randomization_test(model, "saliency", x, similarity=("spearman_abs",))
    assert result.layers[0] == "heads.head" and result.layers[-1] == "<model>"
    assert result.similarity["spearman_abs"][0] < 0.99


def test_batchnorm_running_stats_kept_unless_reset():
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    bn.weight.data.fill_(2.0)
    randomize_layer(bn, seed=0)
    assert torch.equal(bn.running_mean, torch.full((3,), 0.5)) and torch.equal(bn.weight, torch.ones(3))
    randomize_layer(bn, seed=0, reset_running_stats=True)
    assert torch.equal(bn.running_mean, torch.zeros(3))


def test_errors_name_the_argument():
    model, x = _linear_net(), torch.rand(2, 1, 8, 8)
    with pytest.raises(
        ValueError, match="Expected argument `mode` to be one of 'cascading', 'independent', but got 'top'"
    ):
        model_randomization_test(model, "saliency", x, mode="top")
    with pytest.raises(ValueError, match="Expected argument `similarity` to be a non-empty sequence"):
        model_randomization_test(model, "saliency", x, similarity=("pearson",))
    with pytest.raises(ValueError, match="Expected argument `threshold` to be a real number in \\[-1, 1\\], but got 2"):
        model_randomization_test(model, "saliency", x, threshold=2)
    with pytest.raises(ValueError, match="Expected argument `inputs` to be a float \\(N, C, H, W\\) tensor"):
        model_randomization_test(model, "saliency", x[0])
    with pytest.raises(TypeError, match="Expected argument `explainer` to be an Explainer or a short name"):
        model_randomization_test(model, 3, x)
    with pytest.raises(TypeError, match="Expected argument `layers` to be a non-empty sequence"):
        model_randomization_test(model, "saliency", x, layers="1")


# -- SanityResult ------------------------------------------------------------------------------------------------


def test_result_json_plots_and_repr(tmp_path):
    model = SmallCNN()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    result = model_randomization_test(model, "saliency", x, keep_maps=2)
    assert result.maps.shape == (5, 2, 32, 32) and result.images.shape == (2, 1, 32, 32)
    path = result.to_json(tmp_path / "sub" / "result.json")
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["layers"] == result.layers and data["passed"] == result.passed
    assert data["similarity"]["hog"] == pytest.approx(result.similarity["hog"])
    curve = result.plot()
    assert isinstance(curve, Figure)
    assert len(curve.axes[0].lines) == 4 + 2  # one per metric + threshold + noise floor
    grid = result.plot("maps")
    assert len(grid.axes) == 2 * (1 + 1 + 4)  # rows x (input, original, 4 steps)
    text = repr(result)
    assert "features.conv1" in text and "noise floor" in text and "passed=" in text
    with pytest.raises(ValueError, match="Expected argument `kind` to be one of 'curve', 'maps', but got 'bar'"):
        result.plot("bar")
    no_maps = model_randomization_test(model, "saliency", x, keep_maps=0, similarity=("spearman_abs",))
    with pytest.raises(ValueError, match="kept no maps"):
        no_maps.plot("maps")


# -- data randomisation -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_label_cnn(digits, trained_cnn):
    x, y, _ = digits.split("train")
    model, accuracy, history = train_on_random_labels(trained_cnn, (x[:128], y[:128]), max_epochs=60, seed=0)
    return model, accuracy, history


def test_random_label_model_fits_its_training_set(random_label_cnn):
    _, accuracy, history = random_label_cnn
    assert accuracy >= 0.9  # memorised 128 permuted labels (chance is ~0.1)
    assert history[-1] == accuracy and len(history) < 60  # stopped at the target


def test_data_randomization_gradient_changes_more_than_guided_backprop(
    probe, trained_cnn, random_label_cnn, model_guard
):
    model_guard(trained_cnn)
    random_model = random_label_cnn[0]
    gradient = data_randomization_test(trained_cnn, "saliency", probe, random_model=random_model)
    guided = data_randomization_test(trained_cnn, "guided_backprop", probe, random_model=random_model)
    assert gradient.layers == ["random labels"] and gradient.test == "data"
    assert gradient.similarity["spearman_abs"][0] < guided.similarity["spearman_abs"][0]
    assert gradient.train_accuracy is None


def test_data_randomization_trains_like_train_on_random_labels(model_guard):
    model = model_guard(SmallCNN())
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 32, 32, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    result = data_randomization_test(
        model, "saliency", x[:4], (x, y), max_epochs=2, seed=3, similarity=("spearman_abs",)
    )
    random_model, accuracy, _ = train_on_random_labels(model, (x, y), max_epochs=2, seed=3)
    again = data_randomization_test(model, "saliency", x[:4], random_model=random_model, similarity=("spearman_abs",))
    assert result.train_accuracy == accuracy
    assert result.similarity == again.similarity  # the same seeded training run
    with pytest.raises(ValueError, match="Expected exactly one of `train_data`.*but got neither"):
        data_randomization_test(model, "saliency", x[:4])
    with pytest.raises(ValueError, match="Expected argument `train_data` to be \\(images"):
        data_randomization_test(model, "saliency", x[:4], (x, y.float()))
    with pytest.raises(ValueError, match="Expected argument `target_accuracy` to be a real number in \\(0, 1\\]"):
        train_on_random_labels(model, (x, y), target_accuracy=1.5)
