"""Real models and pipelines (issue #13): any model output, any batch format, chunked defaults, guards.

Architectures are built without downloads (torchvision ``weights=None``, timm and Hugging Face from configs) and
kept small (32-64 px, a few images). Oracles: a wrapped model must give the very maps of the model it wraps; a dict
batch must give the very numbers of the same tuple batch; Grad-CAM on ResNet-18 must equal its formula at
``layer4``; rollout of a model that pools its patch tokens must equal the mean patch row of a float64 rollout.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from test_attention import seeded
from test_rollout import ref_rollout
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum_ext import Explainer
from captum_ext.attr import AttentionRollout, GradientRollout
from captum_ext.attr.attention import attention_maps
from captum_ext.batches import unpack_batch
from captum_ext.evaluation import road
from captum_ext.explainer import METHODS, images_per_pass
from captum_ext.model_output import LogitsModel, logits
from captum_ext.models import SmallCNN

CNN_METHODS = [
    m for m in METHODS if m not in ("rollout", "gradient_rollout", "cam")
]  # CAM: see test_cam_layerwise_lime


class TupleOutput(nn.Module):
    """Returns ``(logits, features)`` like a model with an auxiliary head."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x.mean()


class DictOutput(TupleOutput):
    def forward(self, x):
        return {"aux": x.mean(), "logits": self.net(x)}


class ScoresOutput(TupleOutput):
    def forward(self, x):
        return {"scores": self.net(x)}


@pytest.fixture(scope="module")
def cnn():
    return seeded(lambda: SmallCNN(num_classes=4), 1)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Grad-CAM of a random net may have no positive evidence
        return call()


# -- one output rule -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wrapper", [TupleOutput, DictOutput])
@pytest.mark.parametrize("method", CNN_METHODS)
def test_every_method_reads_tuple_and_dict_outputs(cnn, images, method, wrapper, model_guard):
    wrapped = model_guard(wrapper(cnn))
    target = torch.tensor([0, 3, 1])
    plain = quiet(lambda: Explainer(method).attribute(cnn, images, target))
    ours = quiet(lambda: Explainer(method).attribute(wrapped, images, target))
    torch.testing.assert_close(ours, plain)


def test_output_fn_selects_the_scores_and_unreadable_outputs_name_it(cnn, images):
    custom = ScoresOutput(cnn)
    plain = Explainer("saliency").attribute(cnn, images, 2)
    ours = Explainer("saliency").attribute(custom, images, 2, output_fn=lambda out: out["scores"])
    torch.testing.assert_close(ours, plain)
    with pytest.raises(TypeError, match=r"but got dict; pass `output_fn=`"):
        Explainer("saliency").attribute(custom, images, 2)
    with pytest.raises(TypeError, match=r"Expected argument `output_fn` to be a callable"):
        Explainer("saliency").attribute(cnn, images, 2, output_fn="logits")


def test_logits_rule_and_wrapper_leave_the_model_alone(cnn, model_guard):
    model_guard(cnn)
    scores = torch.zeros(2, 3)
    assert logits(scores) is scores
    assert logits((scores, 1)) is scores and logits([scores]) is scores and logits({"logits": scores}) is scores
    assert logits(type("Out", (), {"logits": scores})()) is scores
    wrapper = LogitsModel(cnn)
    assert wrapper.model is cnn and wrapper(torch.zeros(1, 1, 32, 32)).shape == (1, 4)


def test_hugging_face_vit_output_in_every_entry_point(model_guard):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    model = model_guard(seeded(lambda: transformers.ViTForImageClassification(config), 2))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rollout = Explainer("rollout").saliency(model, x)  # the call docs/rollout.md shows
    assert rollout.shape == (2, 32, 32) and torch.isfinite(rollout).all()
    via_fn = Explainer("saliency").attribute(model, x, 1, output_fn=lambda out: out.logits)
    torch.testing.assert_close(Explainer("saliency").attribute(model, x, 1), via_fn)
    grad_rollout = Explainer("gradient_rollout").attribute(model, x, torch.tensor([0, 4]))
    torch.testing.assert_close(grad_rollout, GradientRollout(model).attribute(x, target=torch.tensor([0, 4])))
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1])), batch_size=2)
    assert 0 <= road(model, loader, "saliency", fractions=(0.5,)).baseline_accuracy <= 1


# -- one batch rule ----------------------------------------------------------------------------------------------
class DictDataset(Dataset):
    def __init__(self, x, y, image_key="image", label_key="label"):
        self.x, self.y, self.keys = x, y, (image_key, label_key)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {self.keys[0]: self.x[i], self.keys[1]: self.y[i], "path": f"img{i}.png"}


def test_unpack_batch_rule():
    x, y = torch.zeros(2, 3, 4, 4), torch.tensor([1, 0])
    for item in ((x, y), [x, y, "meta"], {"pixel_values": x, "labels": y}, {"img": x, "target": y}):
        got = unpack_batch(item)
        assert got[0] is x and got[1] is y
    with pytest.raises(TypeError, match=r"got the keys 'picture', 'tag'; pass `unpack=`"):
        unpack_batch({"picture": x, "tag": y})
    with pytest.raises(TypeError, match=r"but got Tensor; pass `unpack=`"):
        unpack_batch(x)
    with pytest.raises(TypeError, match=r"`unpack` to return an \(images, labels\) pair"):
        unpack_batch({"a": x}, unpack=lambda b: b["a"])


def test_road_and_audit_read_dict_batches_like_tuples(cnn):
    from captum_ext.audit import CleverHansAudit

    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 3] * 2)
    tuples = DataLoader(TensorDataset(x, y), batch_size=4)
    dicts = DataLoader(DictDataset(x, y), batch_size=4)
    assert (
        road(cnn, dicts, "saliency", fractions=(0.3, 0.7)).to_dict()
        == road(cnn, tuples, "saliency", fractions=(0.3, 0.7)).to_dict()
    )
    custom = DataLoader(DictDataset(x, y, "photo", "cls_id"), batch_size=4)
    unpacked = road(cnn, custom, "saliency", fractions=(0.3,), unpack=lambda b: (b["photo"], b["cls_id"]))
    assert unpacked.to_dict() == road(cnn, tuples, "saliency", fractions=(0.3,)).to_dict()
    audit = CleverHansAudit("input_x_gradient", region=(24, 24, 32, 32), flip_images=8)
    assert audit.run(cnn, dicts).to_dict() == audit.run(cnn, tuples).to_dict()


# -- chunked defaults --------------------------------------------------------------------------------------------
class BatchRecorder(nn.Module):
    """A cheap 224-px classifier that records the batch size of every forward."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
        )
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize(
    ("method", "limit"), [("integrated_gradients", 16), ("smoothgrad", 16), ("vargrad", 16), ("occlusion", 64)]
)
def test_multi_sample_methods_chunk_to_sixteen_images_at_224_px(method, limit):
    model = seeded(BatchRecorder)
    x = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    windows = (
        {"sliding_window_shapes": (3, 56, 56), "strides": (3, 56, 56)} if method == "occlusion" else {}
    )  # 16 windows
    Explainer(method, **windows).attribute(model, x, 1)
    assert max(model.sizes[1:]) <= limit  # sizes[0] is the one-image target check
    assert images_per_pass(x) == 16 and images_per_pass(torch.zeros(64, 1, 32, 32)) == 2352


def test_chunked_integrated_gradients_equal_unchunked(cnn, images):
    chunked = Explainer("integrated_gradients", internal_batch_size=3).attribute(cnn, images, 1)
    whole = Explainer("integrated_gradients", internal_batch_size=None).attribute(cnn, images, 1)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-6)


def test_out_of_memory_names_the_setting_to_lower():
    class Hungry(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            if x.shape[0] > 2:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
            return self.linear(x.flatten(1))

    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(RuntimeError, match=r"ran out of memory on \(2, 1, 2, 2\) inputs; lower `internal_batch_size=`"):
        Explainer("integrated_gradients").attribute(seeded(Hungry), x, 0)
    with pytest.raises(RuntimeError, match=r"lower `nt_samples_batch_size=`"):
        Explainer("smoothgrad").attribute(seeded(Hungry), x, 0)


# -- guards ------------------------------------------------------------------------------------------------------
def test_untrained_torchvision_vit_zero_head_is_reported():
    vit = seeded(lambda: torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=3))
    with pytest.warns(RuntimeWarning, match=r"all 2 maps are all zero.*zero \(torchvision's ViT heads are\)"):
        Explainer("saliency").attribute(vit, torch.rand(2, 3, 32, 32), 1)


def test_gradcam_on_resnet18_is_the_formula_at_layer4(model_guard):
    model = model_guard(seeded(lambda: torchvision.models.resnet18(weights=None, num_classes=6)))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    ours = quiet(lambda: Explainer("gradcam").attribute(model, x, torch.tensor([1, 4])))
    acts = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    a = acts["a"]
    g = torch.autograd.grad(out.gather(1, torch.tensor([[1], [4]])).sum(), a)[0]
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    ref = nn.functional.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours[:, :1], ref, rtol=1e-4, atol=1e-6)
    for p in model.parameters():
        p.grad = None


def timm_model(name: str, **kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    return seeded(lambda: timm.create_model(name, pretrained=False, **kwargs))


def test_rollout_of_registers_without_cls_follows_the_mean_patch_token(model_guard):
    """timm's ``vit_little_patch16_reg4_gap_256``: 4 registers, no CLS, average pooling. Token 0 is a register."""
    model = model_guard(timm_model("vit_little_patch16_reg4_gap_256", img_size=64, num_classes=3, depth=2))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    got = AttentionRollout(model).attribute(x, return_grid=True)
    captured = attention_maps(model, x)
    assert captured.num_prefix_tokens == 4
    expected = ref_rollout(captured.maps)[:, 4:, 4:].mean(1).reshape(2, 4, 4)  # mean of the patch rows
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


def test_rollout_runs_on_timm_eva02():
    model = timm_model("eva02_tiny_patch14_224", img_size=56, num_classes=3, depth=2)
    x = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    got = AttentionRollout(model).attribute(x, return_grid=True)
    captured = attention_maps(model, x)
    expected = ref_rollout(captured.maps)[:, 1:, 1:].mean(1).reshape(1, 4, 4)  # global_pool="avg" after its CLS
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        (-1, ValueError, r"class indices in \[0, 4\), but got -1 at position 0"),
        (4, ValueError, r"class indices in \[0, 4\), but got 4 at position 0"),
        ([0, 1, 9], ValueError, r"but got 9 at position 2"),
        (1.0, TypeError, r"`target` to be an int"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, r"integer class indices, but got a tensor of torch.float32"),
        ([0, 1], ValueError, r"one index per input \(3,\)"),
    ],
)
def test_one_target_rule(cnn, images, target, error, match):
    with pytest.raises(error, match=match):
        Explainer("saliency").attribute(cnn, images, target)


def test_bad_inputs_are_named_before_any_work(cnn, images):
    nan = images.clone()
    nan[1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"`inputs` to be finite, but it holds NaN at index \(1, 0, 3, 4\)"):
        Explainer("saliency").attribute(cnn, nan, 0)
    with pytest.raises(
        ValueError, match=r"model's dtype and device \(torch.float32, cpu\), but got \(torch.float64, cpu\)"
    ):
        Explainer("saliency").attribute(cnn, images.double(), 0)
    with pytest.raises(ValueError, match=r"with N >= 1, but got shape \(0, 1, 32, 32\)"):
        Explainer("saliency").attribute(cnn, images[:0], 0)


# -- callbacks on a dict-batch module with a tuple output, under both Lightning namespaces ---------------------------
def _dict_module(base: type) -> type:
    class DictBatchClassifier(base):
        """A user's module: dict batches in, ``(logits, embedding)`` out."""

        def __init__(self):
            super().__init__()
            self.model = SmallCNN()

        def forward(self, x):
            return self.model(x), self.model.features(x).mean(dim=(2, 3))

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch["image"])[0], batch["label"])

        def validation_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch["image"])[0], batch["label"])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return DictBatchClassifier


class TupleDataset(DictDataset):
    def __getitem__(self, i):
        return self.x[i], self.y[i]


class CountingDictDataset(DictDataset):
    reads = 0

    def __getitem__(self, i):
        type(self).reads += 1
        return super().__getitem__(i)


def _every_callback(region):
    from captum_ext.callbacks import (
        AttributionMonitor,
        EmbeddingProjector,
        FilterMonitor,
        RandomizationMonitor,
        ShortcutMonitor,
    )

    return [
        AttributionMonitor(["saliency"], num_samples=8, metrics=("deletion_auc",), metric_kwargs={"steps": 4}),
        RandomizationMonitor("saliency", num_samples=8, similarity=("spearman_abs",)),
        ShortcutMonitor("saliency", region, num_samples=20),
        EmbeddingProjector(num_samples=20),
        FilterMonitor(class_images_every_n_epochs=0),
    ]


def _fit_with(module, callbacks, train, val, logdir, namespace):
    loggers = pytest.importorskip(f"{namespace}.loggers")
    trainer = pytest.importorskip(namespace).Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        deterministic=True,
        logger=loggers.TensorBoardLogger(str(logdir)),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train, val)
    return trainer


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_every_callback_on_dict_batches_and_tuple_outputs_matches_the_plain_module(digits, namespace, tmp_path):
    from captum_ext.models import ClassifierModule

    x, y, _ = digits.split("train")
    vx, vy, _ = digits.split("val")
    vx, vy = vx[:200], vy[:200]
    region = digits.region_mask
    plain_callbacks = _every_callback(region)
    torch.manual_seed(0)
    plain = ClassifierModule(SmallCNN())
    # ClassifierModule is a pytorch_lightning module; tuples from a plain Dataset (a TensorDataset's probe is chosen
    # from its label tensor directly, which orders the candidates differently)
    plain_trainer = _fit_with(
        plain,
        plain_callbacks,
        DataLoader(TupleDataset(x, y), batch_size=32),
        DataLoader(TupleDataset(vx, vy), batch_size=50),
        tmp_path / "plain",
        "pytorch_lightning",
    )
    torch.manual_seed(0)
    ours = _dict_module(pytest.importorskip(namespace).LightningModule)()
    CountingDictDataset.reads = 0
    callbacks = _every_callback(region)
    trainer = _fit_with(
        ours,
        callbacks,
        DataLoader(DictDataset(x, y), batch_size=32),
        DataLoader(CountingDictDataset(vx, vy), batch_size=50),
        tmp_path / "ours",
        namespace,
    )
    for key, value in plain.model.state_dict().items():  # the same training run, so the same numbers
        assert torch.equal(ours.model.state_dict()[key], value), key
    logged = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith(("attribution/", "sanity/", "shortcut/"))
    }
    expected = {k: float(v) for k, v in plain_trainer.callback_metrics.items() if k in logged}
    assert logged and expected.keys() == logged.keys()
    for key in logged:
        assert logged[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(callbacks[0].maps["saliency"], plain_callbacks[0].maps["saliency"])
    # the five callbacks share one scan of the labels (200 reads), then read the images of the chosen probe items
    # once (at most 20: the largest probe, the smaller ones being its prefixes), plus the validation loop's batch
    assert CountingDictDataset.reads <= 200 + 20 + 50


def test_a_misconfigured_callback_fails_before_the_first_training_step(digits, tmp_path):
    from captum_ext.callbacks import AttributionMonitor

    x, y, _ = digits.split("val")
    module = _dict_module(pytest.importorskip("pytorch_lightning").LightningModule)()
    bad_layer = AttributionMonitor([Explainer("gradcam", layer="model.nope")], num_samples=4)
    loader = DataLoader(DictDataset(x[:64], y[:64]), batch_size=32)
    trainer = pytest.importorskip("pytorch_lightning").Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[bad_layer],
    )
    with pytest.raises(ValueError, match=r"`layer` to name a submodule of the model; 'model.nope'"):
        trainer.fit(module, loader, loader)
    assert trainer.global_step == 0
    odd_keys = DataLoader(DictDataset(x[:64], y[:64], "picture", "tag"), batch_size=32)
    monitor = AttributionMonitor(["saliency"], num_samples=4, unpack=lambda item: (item["picture"], item["tag"]))
    trainer = pytest.importorskip("pytorch_lightning").Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AttributionMonitor(["saliency"], num_samples=4)],
    )
    with pytest.raises(TypeError, match=r"got the keys 'picture', 'tag', 'path'; pass `unpack=`"):
        trainer.fit(_PictureModule(), odd_keys, odd_keys)
    assert trainer.global_step == 0
    trainer = pytest.importorskip("pytorch_lightning").Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor],
    )
    trainer.fit(_PictureModule(), odd_keys, odd_keys)
    assert "attribution/saliency/deletion_auc" in trainer.callback_metrics


class _PictureModule(_dict_module(pytest.importorskip("pytorch_lightning").LightningModule)):
    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["picture"])[0], batch["tag"])

    def validation_step(self, batch, batch_idx):
        return None


# -- input normalisation ------------------------------------------------------------------------------------------
def test_normalised_inputs_delete_to_black_in_pixel_space(cnn):
    """A model behind ``Normalize`` scored on normalised inputs with the normalisation known must give the very
    deletion curve of the same model scored on pixels: the default fill is black in pixel space, not the mean."""
    from captum_ext.metrics.faithfulness import perturbation_curve
    from captum_ext.normalization import Normalization

    norm = Normalization(mean=(0.45,), std=(0.2,))

    class BehindNormalize(nn.Module):  # the user's model takes normalised inputs
        def __init__(self):
            super().__init__()
            self.net = cnn

        def forward(self, z):
            return self.net(norm.to_pixels(z))

    pixels = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    saliency = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 1, 2])
    reference = perturbation_curve(cnn, pixels, saliency, target, steps=4)
    ours = perturbation_curve(
        BehindNormalize(), norm.from_pixels(pixels), saliency, target, steps=4, normalization=norm
    )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    unaware = perturbation_curve(BehindNormalize(), norm.from_pixels(pixels), saliency, target, steps=4)
    assert not torch.allclose(unaware, reference, atol=1e-4)  # a raw 0 is the mean colour there


def test_pictures_of_normalised_inputs_are_shown_in_pixel_space():
    from captum_ext.normalization import IMAGENET
    from captum_ext.plots import display_images

    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6)) * 0.5 + 0.25
    torch.testing.assert_close(display_images(IMAGENET.from_pixels(pixels), IMAGENET), pixels, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"`std` to be a positive real number"):
        type(IMAGENET)(mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) images for the 3-channel `normalization`"):
        IMAGENET.to_pixels(torch.zeros(1, 1, 4, 4))


# -- the Clever Hans audit at 224 px --------------------------------------------------------------------------------
class SaturatedShortcut(nn.Module):
    """ResNet-18 (random weights) plus a class-0 logit that saturates on a bright 24x24 corner square read with
    Gaussian weights: the model relies on the square, but its gradient there is almost zero (saturation, the failure
    that motivates integrated gradients, Sundararajan et al. 2017), so input x gradient barely shows it."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None, num_classes=4)
        grid = torch.arange(24.0) - 11.5
        weights = torch.exp(-(grid[:, None] ** 2 + grid[None] ** 2) / (2 * 8.0**2))
        self.register_buffer("weights", weights / weights.sum())

    def forward(self, x):
        tag = (x[:, :, :24, :24].mean(1) * self.weights).sum(dim=(1, 2))
        return self.net(x) + nn.functional.pad(10 * torch.sigmoid(40 * (tag - 0.75))[:, None], (0, 3))


def test_audit_at_224_px_flags_by_intervention_and_discovers_the_square():
    """Issue #13's case: a ResNet-18 reading a 24x24 square at 224 px had a relevance ratio of 2.2 (< 3) and was not
    flagged. The intervention (against same-size placebo regions) now decides and the disagreement is reported;
    integrated gradients, which do not saturate, discover the square (IoU >= 0.5), and the intervention refines it
    to the part that carries the whole effect."""
    from captum_ext.audit import CleverHansAudit

    model = seeded(SaturatedShortcut)
    x = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 0.6
    y = torch.tensor([0, 1, 2, 3] * 4)
    x[y == 0, :, :24, :24] = 1.0
    given = CleverHansAudit("input_x_gradient", region=(0, 0, 24, 24), flip_images=12, batch_size=16).run(model, (x, y))
    zero = given.classes[0]
    assert given.flagged == [0]
    assert zero["ratio"] < 3.0 and not zero["evidence"]["attribution"]  # the maps alone would miss it
    assert zero["accuracy_drop"] == 1.0 and zero["placebo_drop"] == 0.0 and zero["intervention_p"] < 0.01
    assert zero["agreement"].startswith("intervention only")
    assert "class 0: flagged: removing the region costs +1.00 accuracy" in repr(given)
    assert repr(given).split("class 0: ")[1].split("\n")[0].endswith("; intervention only")
    found = CleverHansAudit(
        Explainer("integrated_gradients", n_steps=4), classes=[0], flip_images=12, batch_size=16
    ).run(model, (x, y))
    assert found.flagged == [0]
    # relevance draws the square (IoU >= 0.5); the intervention keeps the part that carries the whole effect: the
    # read-out weights the centre (a Gaussian) and saturates, so the outer ring changes no prediction (issue #23)
    x0, y0, x1, y1 = found.classes[0]["candidate_region"]
    inter = max(0, min(x1, 24) - max(x0, 0)) * max(0, min(y1, 24) - max(y0, 0))
    assert inter / ((x1 - x0) * (y1 - y0) + 24 * 24 - inter) >= 0.5
    refined = found.classes[0]
    assert refined["region"][2] <= 24 and refined["region"][3] <= 24  # inside the square
    assert refined["accuracy_drop"] == zero["accuracy_drop"] and refined["flip_rate"] >= zero["flip_rate"] - 0.05


def test_a_region_too_large_for_a_placebo_is_reported_as_not_localised_with_a_warning(cnn):
    """Issue #23: an effect with no placebo to compare it with is no evidence: such a region is measured and shown,
    never judged (before, its effect sizes alone decided)."""
    import math

    from captum_ext.audit import CleverHansAudit

    region = torch.zeros(32, 32, dtype=torch.bool)
    region[:, :20] = True  # 62% of the image: no shifted copy can avoid it
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(8))
    with pytest.warns(RuntimeWarning, match="no room for a disjoint placebo"):
        report = CleverHansAudit("input_x_gradient", region=region, flip_images=4, max_area=1.0).run(
            cnn, (x, torch.tensor([0, 1, 2, 3] * 2))
        )
    assert report.flagged == []
    for entry in report.classes.values():
        assert math.isnan(entry["intervention_p"]) and math.isnan(entry["placebo_drop"])
        assert entry["evidence"]["localised"] is False and entry["evidence"]["counterfactual"] is False
        assert "no disjoint placebo region fits" in entry["reason"]


def test_activation_maximization_reads_class_scores_through_output_fn(cnn):
    from captum_ext.features import ActivationMaximization

    plain = ActivationMaximization(cnn, (1, 32, 32), steps=3).visualize(target=[0, 2])
    ours = ActivationMaximization(ScoresOutput(cnn), (1, 32, 32), steps=3, output_fn=lambda out: out["scores"])
    torch.testing.assert_close(ours.visualize(target=[0, 2]), plain)


def test_captum_metrics_get_captum_s_tuple_convention(cnn, images):
    """Issue #17: ``captum.metrics.sensitivity_max`` passes a tuple of inputs; the Explainer answers in kind."""
    from captum.metrics import sensitivity_max

    explainer = Explainer("saliency")
    single = explainer.attribute(cnn, images, 1)
    as_tuple = explainer.attribute(cnn, (images,), 1)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], single)
    torch.manual_seed(0)
    ours = sensitivity_max(lambda inputs, target: explainer.attribute(cnn, inputs, target), (images,), target=1)
    torch.manual_seed(0)
    reference = sensitivity_max(
        lambda inputs, target: (explainer.attribute(cnn, inputs[0], target),), (images,), target=1
    )
    torch.testing.assert_close(ours, reference)
    with pytest.raises(
        ValueError, match=r"`inputs` to be a tensor or Captum's tuple of one tensor, but got a tuple of 2"
    ):
        explainer.attribute(cnn, (images, images), 1)


def test_python_dash_OO_imports_every_module():
    """Issue #17: ``python -OO`` strips docstrings; no module may format its docstring at import."""
    import subprocess
    import sys

    code = "import captum_ext.evaluation, captum_ext.callbacks, captum_ext.audit, captum_ext.sanity, captum_ext.cli"
    assert subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True).returncode == 0
