"""Bad input across the public API (issue #14): each case names the exception type and the argument the message must
name. Nothing runs long: the models are a random SmallCNN / TinyViT and the data a handful of 32 px images.

Each row is ``(entry point, call, exception type, regex)``; the regex holds the argument's name in backticks (or the
phrase that names the offending value), so a message that does not name it fails.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ext import Explainer, maps
from captum_ext.attr import AttentionRollout, GradientRollout, RandomAttribution, RawAttention
from captum_ext.audit import CleverHansAudit, spray
from captum_ext.batches import unpack_batch
from captum_ext.callbacks import (
    AttributionMonitor,
    EmbeddingProjector,
    FilterMonitor,
    RandomizationMonitor,
    ShortcutMonitor,
)
from captum_ext.data import CleverHansDigits, shortcut_images
from captum_ext.evaluation import road
from captum_ext.features import feature_maps
from captum_ext.imputation import BlurImputer, ConstantImputer, MeanImputer, NoiseImputer, NoisyLinearImputer
from captum_ext.metrics import (
    AOPC,
    DeletionAUC,
    InsertionAUC,
    MapSimilarity,
    MaxSensitivity,
    PointingGame,
    RelevanceMass,
)
from captum_ext.metrics.faithfulness import perturbation_scores
from captum_ext.metrics.faithfulness_correlation import irof
from captum_ext.metrics.robustness import local_lipschitz_estimate, max_sensitivity
from captum_ext.models import SmallCNN, TinyViT
from captum_ext.normalization import Normalization
from captum_ext.passes import count_passes
from captum_ext.sanity import data_randomization_test, model_randomization_test

NAN, INF = math.nan, math.inf
torch.manual_seed(0)
CNN = SmallCNN(num_classes=4).eval()
VIT = TinyViT(num_classes=4).eval()
X = torch.rand(4, 1, 32, 32)
Y = torch.tensor([0, 1, 2, 3])
REGION = torch.zeros(32, 32, dtype=torch.bool)
REGION[24:, 24:] = True
LOADER = DataLoader(TensorDataset(X, Y), batch_size=2)


class _NanOutput(nn.Module):
    """A classifier whose scores are NaN for any input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 4), NAN)


NAN_OUT = _NanOutput()
ONE_CLASS = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 1))


def SHORT(inputs, mask):  # noqa: N802 (an imputer named like the constants it sits with)
    return inputs[:1]


def NAN_FILL(inputs, mask):  # noqa: N802
    return torch.where(mask if mask.dim() == 4 else mask[:, None] if mask.dim() == 3 else mask, NAN, inputs)


def INT_FILL(inputs, mask):  # noqa: N802
    return inputs.long()


def nan_vit() -> nn.Module:
    model = TinyViT(num_classes=4).eval()
    with torch.no_grad():
        model.conv_proj.bias[0] = NAN
    return model


def with_nan(x: torch.Tensor, value: float = NAN) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[5] = value
    return x


def attribute(method="saliency", model=CNN, inputs=X, target=Y, **kwargs):
    return lambda: Explainer(method).attribute(model, inputs, target, **kwargs)


def mask(shape=(32, 32), dtype=torch.bool):
    return torch.ones(shape, dtype=dtype)


SHORT_NAMES = [
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "guided_backprop",
    "gradcam",
    "guided_gradcam",
    "smoothgrad",
    "smoothgrad_sq",
    "vargrad",
    "occlusion",
    "rollout",
    "gradient_rollout",
]

CASES = [
    # -- Explainer(...) -------------------------------------------------------------------------------------------
    ("explainer", lambda: Explainer("nope"), ValueError, r"`method`"),
    ("explainer", lambda: Explainer(3), TypeError, r"`method`"),
    ("explainer", lambda: Explainer(nn.Linear), TypeError, r"`method`"),
    ("explainer", lambda: Explainer("gradcam", layer=3), TypeError, r"`layer`"),
    ("explainer", lambda: Explainer("gradcam", layer=["features"]), TypeError, r"`layer`"),
    ("explainer", lambda: Explainer("saliency", init_kwargs=[1]), TypeError, r"`init_kwargs`"),
    (
        "explainer",
        lambda: Explainer("saliency", init_kwargs={"foo": 1}),
        TypeError,
        r"`init_kwargs` for 'saliency'.*'foo'",
    ),
    (
        "explainer",
        lambda: Explainer("rollout", init_kwargs={"fusion": "mean"}),
        TypeError,
        r"`init_kwargs` for 'rollout'",
    ),
    ("explainer", lambda: Explainer("saliency", seed="a"), TypeError, r"`seed`"),
    ("explainer", lambda: Explainer("saliency", seed=1.5), TypeError, r"`seed`"),
    ("explainer", lambda: Explainer("random", abs=True), ValueError, r"'random' explainer takes no attribute keyword"),
    *[
        ("explainer", functools.partial(Explainer, m, bogus=1), TypeError, rf"`attribute` for '{m}'.*'bogus'")
        for m in SHORT_NAMES
    ],
    ("explainer", lambda: Explainer("integrated_gradients", n_steps=0), ValueError, r"`n_steps`"),
    ("explainer", lambda: Explainer("integrated_gradients", n_steps=2.5), ValueError, r"`n_steps`"),
    (
        "explainer",
        lambda: Explainer("integrated_gradients", internal_batch_size=0),
        ValueError,
        r"`internal_batch_size`",
    ),
    (
        "explainer",
        lambda: Explainer("integrated_gradients", return_convergence_delta=True),
        TypeError,
        r"'return_convergence_delta'",
    ),
    ("explainer", lambda: Explainer("smoothgrad", nt_samples=0), ValueError, r"`nt_samples`"),
    ("explainer", lambda: Explainer("smoothgrad", nt_samples_batch_size=0), ValueError, r"`nt_samples_batch_size`"),
    ("explainer", lambda: Explainer("smoothgrad", stdevs=NAN), ValueError, r"`stdevs`"),
    ("explainer", lambda: Explainer("vargrad", stdevs=-1.0), ValueError, r"`stdevs`"),
    ("explainer", lambda: Explainer("smoothgrad_sq", stdevs=INF), ValueError, r"`stdevs`"),
    ("explainer", lambda: Explainer("occlusion", perturbations_per_eval=0), ValueError, r"`perturbations_per_eval`"),
    # -- Explainer.attribute / saliency ---------------------------------------------------------------------------
    ("attribute", attribute(model="cnn"), TypeError, r"`model`"),
    ("attribute", attribute(model=None), TypeError, r"`model`"),
    ("attribute", attribute(inputs=X.tolist()), ValueError, r"`inputs`"),
    ("attribute", attribute(inputs=X[0]), ValueError, r"`inputs`"),
    ("attribute", attribute(inputs=X.long()), ValueError, r"`inputs`"),
    ("attribute", attribute(inputs=X[:0], target=0), ValueError, r"`inputs`.*N >= 1"),
    ("attribute", attribute(inputs=with_nan(X)), ValueError, r"`inputs` to be finite, but it holds NaN"),
    ("attribute", attribute(inputs=with_nan(X, INF)), ValueError, r"`inputs` to be finite, but it holds Inf"),
    ("attribute", attribute(inputs=X.double()), ValueError, r"`inputs` to have the model's dtype"),
    ("attribute", attribute(inputs=X.half()), ValueError, r"`inputs` to have the model's dtype"),
    (
        "attribute",
        attribute(inputs=torch.rand(4, 3, 32, 32)),
        RuntimeError,
        r"forward failed on `inputs` of shape \(4, 3, 32, 32\).*channel count",
    ),
    ("attribute", attribute(target=-1), ValueError, r"`target`.*\[0, 4\)"),
    ("attribute", attribute(target=4), ValueError, r"`target`.*\[0, 4\)"),
    ("attribute", attribute(target=[0, 1, 2, 7]), ValueError, r"`target`.*got 7 at position 3"),
    ("attribute", attribute(target=1.0), TypeError, r"`target`"),
    ("attribute", attribute(target="cat"), TypeError, r"`target`"),
    ("attribute", attribute(target=[0, 1]), ValueError, r"`target`.*\(4,\)"),
    ("attribute", attribute(target=Y.float()), TypeError, r"`target`.*torch.float32"),
    ("attribute", attribute(target=Y.bool()), TypeError, r"`target`.*torch.bool"),
    ("attribute", attribute(target=Y[:, None].expand(4, 2)), ValueError, r"`target`"),
    ("attribute", attribute(target=[0, 1, 2, 3.0]), TypeError, r"`target`"),
    ("attribute", attribute(output_fn="logits"), TypeError, r"`output_fn`"),
    ("attribute", attribute(output_fn=lambda out: out.tolist()), TypeError, r"`output_fn` to return a tensor"),
    ("attribute", attribute(output_fn=lambda out: out[:, 0]), TypeError, r"\(N, classes\).*`output_fn=`"),
    ("attribute", lambda: Explainer("gradcam", layer="features.nope").attribute(CNN, X, Y), ValueError, r"`layer`"),
    ("attribute", lambda: Explainer("gradcam").attribute(VIT, X, Y), ValueError, r"patch embedding.*gradient_rollout"),
    (
        "attribute",
        lambda: Explainer("occlusion", sliding_window_shapes=(1, 40, 4)).attribute(CNN, X, Y),
        ValueError,
        r"`sliding_window_shapes`",
    ),
    (
        "attribute",
        lambda: Explainer("occlusion", sliding_window_shapes=(4, 4)).attribute(CNN, X, Y),
        ValueError,
        r"`sliding_window_shapes`",
    ),
    (
        "attribute",
        lambda: Explainer("occlusion", baselines=torch.zeros(3)).attribute(CNN, X, Y),
        ValueError,
        r"`baselines`",
    ),
    ("attribute", lambda: Explainer("saliency").saliency(CNN, X, Y, reduce="abs"), ValueError, r"`reduce`"),
    ("attribute", lambda: Explainer("rollout").attribute(CNN, X, Y), ValueError, r"recognisable attention"),
    # -- maps -----------------------------------------------------------------------------------------------------
    ("maps", lambda: maps.reduce_channels(X[0]), ValueError, r"`attributions`"),
    ("maps", lambda: maps.reduce_channels(X, "abs"), ValueError, r"`reduce`"),
    ("maps", lambda: maps.top_k_mask(X[:, 0], -0.1), ValueError, r"`fraction`"),
    ("maps", lambda: maps.top_k_mask(X[:, 0], 1.5), ValueError, r"`fraction`"),
    ("maps", lambda: maps.top_k_mask(X[:, 0], NAN), ValueError, r"`fraction`"),
    ("maps", lambda: maps.top_k_mask(X[:, 0], "half"), ValueError, r"`fraction`"),
    ("maps", lambda: maps.rank_pixels(X[0, 0]), ValueError, r"`maps`"),
    ("maps", lambda: maps.normalize_percentile(X, 0), ValueError, r"`q`"),
    ("maps", lambda: maps.normalize_percentile(X, NAN), ValueError, r"`q`"),
    ("maps", lambda: maps.upsample(X[0, 0], (8, 8)), ValueError, r"`maps`"),
    # -- imputers -------------------------------------------------------------------------------------------------
    ("imputer", lambda: MeanImputer([]), ValueError, r"`mean`"),
    ("imputer", lambda: MeanImputer([NAN]), ValueError, r"`mean`"),
    ("imputer", lambda: MeanImputer([0.1, 0.2])(X, mask()), ValueError, r"2 channel means but `inputs` has 1"),
    ("imputer", lambda: ConstantImputer(NAN), ValueError, r"`value`"),
    ("imputer", lambda: ConstantImputer(INF), ValueError, r"`value`"),
    ("imputer", lambda: ConstantImputer("black"), ValueError, r"`value`"),
    ("imputer", lambda: BlurImputer(0), ValueError, r"`sigma`"),
    ("imputer", lambda: BlurImputer(-1.0), ValueError, r"`sigma`"),
    ("imputer", lambda: BlurImputer(NAN), ValueError, r"`sigma`"),
    ("imputer", lambda: BlurImputer(1e4)(X, mask()), ValueError, r"`sigma` to give a kernel radius"),
    ("imputer", lambda: NoiseImputer(std=-1.0), ValueError, r"`std`"),
    ("imputer", lambda: NoiseImputer(std=NAN), ValueError, r"`std`"),
    ("imputer", lambda: NoiseImputer(mean=INF), ValueError, r"`mean`"),
    ("imputer", lambda: NoiseImputer(seed=-1), ValueError, r"`seed`"),
    ("imputer", lambda: NoisyLinearImputer(noise=-0.1), ValueError, r"`noise`"),
    ("imputer", lambda: NoisyLinearImputer(noise=NAN), ValueError, r"`noise`"),
    ("imputer", lambda: NoisyLinearImputer(tol=0), ValueError, r"`tol`"),
    ("imputer", lambda: NoisyLinearImputer(tol=NAN), ValueError, r"`tol`"),
    ("imputer", lambda: NoisyLinearImputer(max_iter=0), ValueError, r"`max_iter`"),
    ("imputer", lambda: NoisyLinearImputer(mean=[NAN]), ValueError, r"`mean`"),
    ("imputer", lambda: NoisyLinearImputer()(with_nan(X), mask()), ValueError, r"`inputs` to be finite.*spread"),
    ("imputer", lambda: ConstantImputer()(X, mask(dtype=torch.float32)), ValueError, r"`mask`"),
    ("imputer", lambda: ConstantImputer()(X, mask((31, 32))), ValueError, r"`mask`"),
    ("imputer", lambda: ConstantImputer()(X[0], mask()), ValueError, r"`inputs`"),
    ("imputer", lambda: ConstantImputer(0.0, normalization=(0.5, 0.2)), TypeError, r"`normalization`"),
    ("imputer", lambda: Normalization(mean=(), std=()), ValueError, r"`mean`"),
    ("imputer", lambda: Normalization(mean=(0.5, 0.5), std=(0.2,)), ValueError, r"`std`"),
    ("imputer", lambda: Normalization(mean=(NAN,), std=(0.2,)), ValueError, r"`mean`"),
    ("imputer", lambda: Normalization(mean="0.5", std=(0.2,)), ValueError, r"`mean`"),
    # -- metrics --------------------------------------------------------------------------------------------------
    ("metrics", lambda: DeletionAUC(steps=0), ValueError, r"`steps`"),
    ("metrics", lambda: DeletionAUC(batch_size=0), ValueError, r"`batch_size`"),
    ("metrics", lambda: DeletionAUC(imputer="black"), TypeError, r"`imputer`"),
    ("metrics", lambda: DeletionAUC(apply_softmax=1), TypeError, r"`apply_softmax`"),
    ("metrics", lambda: InsertionAUC(reduce="abs"), ValueError, r"`reduce`"),
    ("metrics", lambda: AOPC(seed=1.5), TypeError, r"`seed`"),
    ("metrics", lambda: AOPC(output_fn=3), TypeError, r"`output_fn`"),
    ("metrics", lambda: DeletionAUC(normalization={"mean": 0.5}), TypeError, r"`normalization`"),
    ("callbacks", lambda: AttributionMonitor(normalization="imagenet"), TypeError, r"`normalization`"),
    ("metrics", lambda: DeletionAUC().update(CNN, X, X[:, 0, :8], Y), ValueError, r"`attributions`"),
    ("metrics", lambda: DeletionAUC().update(CNN, X, X, Y.float()), TypeError, r"`target`"),
    ("metrics", lambda: DeletionAUC().update(CNN, X, X, Y + 4), ValueError, r"`target`.*\[0, 4\)"),
    ("metrics", lambda: DeletionAUC().update(CNN, X, X, -1), ValueError, r"`target`"),
    ("metrics", lambda: InsertionAUC().update(CNN, with_nan(X), X, Y), ValueError, r"`inputs` to be finite"),
    ("metrics", lambda: AOPC().update(CNN, X, with_nan(X), Y), ValueError, r"`attributions` to be finite"),
    ("metrics", lambda: DeletionAUC().update(CNN, X[0], X, Y), ValueError, r"`inputs`"),
    ("metrics", lambda: DeletionAUC().update(CNN, X, X.tolist(), Y), TypeError, r"`attributions`"),
    ("metrics", lambda: RelevanceMass(REGION[:8]).update(X[:, 0]), ValueError, r"`region`"),
    ("metrics", lambda: RelevanceMass(torch.zeros(32, 32, dtype=torch.bool)), ValueError, r"`region`"),
    (
        "metrics",
        lambda: RelevanceMass(REGION).update(torch.full((2, 32, 32), NAN)),
        ValueError,
        r"`attributions` to be finite",
    ),
    ("metrics", lambda: PointingGame(REGION).update(X[0, 0]), ValueError, r"`maps`|`saliency`|`attributions`"),
    ("metrics", lambda: MapSimilarity(metrics=("cosine",)), ValueError, r"`metrics`|`similarity`"),
    # -- road -----------------------------------------------------------------------------------------------------
    ("road", lambda: road("model", LOADER, "saliency"), TypeError, r"`model`"),
    ("road", lambda: road(CNN, LOADER, 3), TypeError, r"`explainer`"),
    ("road", lambda: road(CNN, LOADER, "saliency", fractions=[]), ValueError, r"`fractions`"),
    ("road", lambda: road(CNN, LOADER, "saliency", fractions=[1.5]), ValueError, r"`fractions`"),
    ("road", lambda: road(CNN, LOADER, "saliency", fractions=[0.5, 0.5]), ValueError, r"`fractions`"),
    ("road", lambda: road(CNN, LOADER, "saliency", fractions=[NAN]), ValueError, r"`fractions`"),
    ("road", lambda: road(CNN, LOADER, "saliency", fractions="0.5"), ValueError, r"`fractions`"),
    ("road", lambda: road(CNN, LOADER, "saliency", order="most"), ValueError, r"`order`"),
    ("road", lambda: road(CNN, LOADER, "saliency", batch_size=0), ValueError, r"`batch_size`"),
    ("road", lambda: road(CNN, LOADER, "saliency", output_fn=3), TypeError, r"`output_fn`"),
    ("road", lambda: road(CNN, LOADER, "saliency", unpack="image"), TypeError, r"`unpack`"),
    ("road", lambda: road(CNN, [], "saliency"), ValueError, r"`dataloader`"),
    (
        "road",
        lambda: road(CNN, [{"photo": X, "tag": Y}], "saliency"),
        TypeError,
        r"keys 'photo', 'tag'; pass `unpack=`",
    ),
    ("road", lambda: road(CNN, [(with_nan(X), Y)], "saliency"), ValueError, r"`inputs` to be finite"),
    ("road", lambda: road(CNN, [(X, Y + 4)], "saliency"), ValueError, r"`target`"),
    # -- sanity ---------------------------------------------------------------------------------------------------
    ("sanity", lambda: model_randomization_test("cnn", "saliency", X), TypeError, r"`model`"),
    ("sanity", lambda: model_randomization_test(CNN, 3, X), TypeError, r"`explainer`"),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", X[0]), ValueError, r"`inputs`"),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", with_nan(X)), ValueError, r"`inputs` to be finite"),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", X, threshold=2), ValueError, r"`threshold`"),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", X, threshold=NAN), ValueError, r"`threshold`"),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", X, seed="a"), TypeError, r"`seed`"),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", X, keep_maps=-1), ValueError, r"`keep_maps`"),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", X, mode="all"), ValueError, r"`mode`"),
    (
        "sanity",
        lambda: model_randomization_test(CNN, "saliency", X, similarity=["cosine"]),
        ValueError,
        r"`similarity`",
    ),
    (
        "sanity",
        lambda: model_randomization_test(CNN, "saliency", X, layers=["features.nope"]),
        ValueError,
        r"`layers`|`layer`",
    ),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", X, output_fn=3), TypeError, r"`output_fn`"),
    ("sanity", lambda: model_randomization_test(CNN, "saliency", X, target=-1), ValueError, r"`target`"),
    ("sanity", lambda: data_randomization_test(CNN, "saliency", X), ValueError, r"`train_data`.*`random_model`"),
    ("sanity", lambda: data_randomization_test(CNN, "saliency", X, random_model="m"), TypeError, r"`random_model`"),
    # -- audit ----------------------------------------------------------------------------------------------------
    ("audit", lambda: CleverHansAudit(3), TypeError, r"`explainer`"),
    ("audit", lambda: CleverHansAudit("saliency", region="corner"), TypeError, r"`region`"),
    (
        "audit",
        lambda: CleverHansAudit("saliency", region=torch.zeros(2, 32, 32, dtype=torch.bool)),
        ValueError,
        r"`region`",
    ),
    ("audit", lambda: CleverHansAudit("saliency", region=(1, 2, 3)), ValueError, r"`region`|box"),
    ("audit", lambda: CleverHansAudit("saliency", region=(5, 5, 2, 2)), ValueError, r"`region`|box"),
    ("audit", lambda: CleverHansAudit("saliency", imputer=3), TypeError, r"`imputer`"),
    ("audit", lambda: CleverHansAudit("saliency", classes=[]), ValueError, r"`classes`"),
    ("audit", lambda: CleverHansAudit("saliency", classes="0"), ValueError, r"`classes`"),
    ("audit", lambda: CleverHansAudit("saliency", target="truth"), ValueError, r"`target`"),
    ("audit", lambda: CleverHansAudit("saliency", ratio_threshold=-1), ValueError, r"`ratio_threshold`"),
    ("audit", lambda: CleverHansAudit("saliency", ratio_threshold=NAN), ValueError, r"`ratio_threshold`"),
    ("audit", lambda: CleverHansAudit("saliency", drop_threshold=2), ValueError, r"`drop_threshold`"),
    ("audit", lambda: CleverHansAudit("saliency", flip_threshold=NAN), ValueError, r"`flip_threshold`"),
    ("audit", lambda: CleverHansAudit("saliency", max_area=0), ValueError, r"`max_area`"),
    ("audit", lambda: CleverHansAudit("saliency", flip_images=0), ValueError, r"`flip_images`"),
    ("audit", lambda: CleverHansAudit("saliency", batch_size=0), ValueError, r"`batch_size`"),
    ("audit", lambda: CleverHansAudit("saliency", output_fn=3), TypeError, r"`output_fn`"),
    ("audit", lambda: CleverHansAudit("saliency", unpack=3), TypeError, r"`unpack`"),
    ("audit", lambda: CleverHansAudit("saliency", refine="yes"), TypeError, r"`refine`"),
    ("audit", lambda: CleverHansAudit("saliency", refine=1), TypeError, r"`refine`"),
    ("zoo", lambda: shortcut_images("sticker"), ValueError, r"`kind`"),
    ("zoo", lambda: shortcut_images("patch", n=0), ValueError, r"`n`"),
    ("zoo", lambda: shortcut_images("patch", n=True), (TypeError, ValueError), r"`n`"),
    ("zoo", lambda: shortcut_images("patch", size=16), ValueError, r"`size`"),
    ("zoo", lambda: shortcut_images("patch", size=64.0), (TypeError, ValueError), r"`size`"),
    ("zoo", lambda: shortcut_images("patch", num_classes=5), ValueError, r"`num_classes`"),
    ("zoo", lambda: shortcut_images("patch", shortcut_class=3), ValueError, r"`shortcut_class`"),
    ("zoo", lambda: shortcut_images("patch", p_class=1.5), ValueError, r"`p_class`"),
    ("zoo", lambda: shortcut_images("patch", p_other=NAN), ValueError, r"`p_other`"),
    ("zoo", lambda: shortcut_images("patch", shortcut_size=2), ValueError, r"`shortcut_size`"),
    ("zoo", lambda: shortcut_images("patch", size=32, shortcut_size=17), ValueError, r"`shortcut_size`"),
    ("zoo", lambda: shortcut_images("patch", seed=-1), ValueError, r"`seed`"),
    ("audit", lambda: CleverHansAudit("saliency", region=REGION).run("cnn", (X, Y)), TypeError, r"`model`"),
    ("audit", lambda: CleverHansAudit("saliency", region=REGION).run(CNN, 3), TypeError, r"`data`"),
    ("audit", lambda: CleverHansAudit("saliency", region=REGION[:16, :16]).run(CNN, (X, Y)), ValueError, r"`region`"),
    (
        "audit",
        lambda: CleverHansAudit("saliency", region=REGION).run(CNN, (with_nan(X), Y)),
        ValueError,
        r"images in `data`",
    ),
    (
        "audit",
        lambda: CleverHansAudit("saliency", region=REGION, classes=[7]).run(CNN, (X, Y)),
        ValueError,
        r"class|`classes`",
    ),
    # -- callbacks ------------------------------------------------------------------------------------------------
    ("callbacks", lambda: AttributionMonitor([]), ValueError, r"`explainers`"),
    ("callbacks", lambda: AttributionMonitor(["saliency", "saliency"]), ValueError, r"`explainers`"),
    ("callbacks", lambda: AttributionMonitor([3]), TypeError, r"`explainers`"),
    ("callbacks", lambda: AttributionMonitor(metrics=["auc"]), ValueError, r"`metrics`"),
    ("callbacks", lambda: AttributionMonitor(reduce="abs"), ValueError, r"`reduce`"),
    ("callbacks", lambda: AttributionMonitor(target="truth"), ValueError, r"`target`"),
    ("callbacks", lambda: AttributionMonitor(metric_kwargs=3), TypeError, r"`metric_kwargs`"),
    ("callbacks", lambda: AttributionMonitor(num_samples=0), ValueError, r"`num_samples`"),
    ("callbacks", lambda: AttributionMonitor(every_n_epochs=0), ValueError, r"`every_n_epochs`"),
    ("callbacks", lambda: AttributionMonitor(seed=-1), ValueError, r"`seed`"),
    ("callbacks", lambda: AttributionMonitor(probe_scan=0), ValueError, r"`probe_scan`"),
    ("callbacks", lambda: AttributionMonitor(probe=(X,)), ValueError, r"`probe`"),
    ("callbacks", lambda: AttributionMonitor(probe=(X, Y[:2])), ValueError, r"`probe`"),
    ("callbacks", lambda: AttributionMonitor(probe=3), ValueError, r"`probe`"),
    ("callbacks", lambda: AttributionMonitor(classes=["a"]), ValueError, r"`classes`"),
    ("callbacks", lambda: AttributionMonitor(output_fn=3), TypeError, r"`output_fn`"),
    ("callbacks", lambda: AttributionMonitor(unpack="image"), TypeError, r"`unpack`"),
    ("callbacks", lambda: ShortcutMonitor("saliency", REGION, threshold=NAN), ValueError, r"`threshold`"),
    ("callbacks", lambda: ShortcutMonitor("saliency", REGION, threshold=-1), ValueError, r"`threshold`"),
    ("callbacks", lambda: ShortcutMonitor("saliency", REGION[None]), ValueError, r"`region`"),
    ("callbacks", lambda: ShortcutMonitor("saliency", REGION, patience=0), ValueError, r"`patience`"),
    ("callbacks", lambda: ShortcutMonitor("saliency", REGION, on_detect="halt"), ValueError, r"`on_detect`"),
    ("callbacks", lambda: RandomizationMonitor("saliency", threshold=2), ValueError, r"`threshold`"),
    ("callbacks", lambda: RandomizationMonitor("saliency", threshold=NAN), ValueError, r"`threshold`"),
    ("callbacks", lambda: RandomizationMonitor("saliency", similarity=["cosine"]), ValueError, r"`similarity`"),
    ("callbacks", lambda: EmbeddingProjector(max_samples=0), ValueError, r"`max_samples`"),
    ("callbacks", lambda: FilterMonitor(every_n_epochs=0), ValueError, r"`every_n_epochs`"),
    # -- rollout --------------------------------------------------------------------------------------------------
    ("rollout", lambda: AttentionRollout(VIT, head_fusion="avg"), ValueError, r"`head_fusion`"),
    ("rollout", lambda: AttentionRollout(VIT, discard_ratio=1.0), ValueError, r"`discard_ratio`"),
    ("rollout", lambda: AttentionRollout(VIT, discard_ratio=NAN), ValueError, r"`discard_ratio`"),
    ("rollout", lambda: AttentionRollout(VIT, discard_ratio=-0.1), ValueError, r"`discard_ratio`"),
    ("rollout", lambda: GradientRollout(VIT, start_layer=-1), ValueError, r"`start_layer`"),
    ("rollout", lambda: GradientRollout(VIT, start_layer=9).attribute(X), ValueError, r"`start_layer`"),
    ("rollout", lambda: RawAttention(VIT, layer="last"), TypeError, r"`layer`"),
    ("rollout", lambda: RawAttention(VIT, head=1.5), TypeError, r"`head`"),
    ("rollout", lambda: RawAttention(VIT, token="first"), TypeError, r"`token`"),
    ("rollout", lambda: RawAttention(VIT, layer=7).attribute(X), ValueError, r"`layer`"),
    ("rollout", lambda: AttentionRollout(VIT).attribute(X[0]), ValueError, r"`inputs`"),
    ("rollout", lambda: GradientRollout(VIT).attribute(X, target=-1), ValueError, r"`target`"),
    ("rollout", lambda: GradientRollout(VIT).attribute(X, target=1.0), TypeError, r"`target`"),
    ("rollout", lambda: AttentionRollout(CNN).attribute(X), ValueError, r"recognisable attention"),
    # -- data and batches -----------------------------------------------------------------------------------------
    ("data", lambda: CleverHansDigits(noise=NAN), ValueError, r"`noise`"),
    ("data", lambda: CleverHansDigits(amplitude=-1), ValueError, r"`amplitude`"),
    ("data", lambda: CleverHansDigits(tag_value=INF), ValueError, r"`tag_value`"),
    ("data", lambda: CleverHansDigits(p_class=1.5), ValueError, r"`p_class`"),
    ("data", lambda: CleverHansDigits(p_other=NAN), ValueError, r"`p_other`"),
    ("data", lambda: CleverHansDigits(tag_size=0), ValueError, r"`tag_size`"),
    ("batches", lambda: unpack_batch({"picture": X}), TypeError, r"pass `unpack=`"),
    ("batches", lambda: unpack_batch(X), TypeError, r"pass `unpack=`"),
    ("batches", lambda: unpack_batch((X, Y), unpack=lambda b: b[0]), TypeError, r"`unpack` to return"),
    # -- one seed check everywhere (issue #17): not an int -> TypeError, negative -> ValueError -------------------
    ("seed", lambda: road(CNN, LOADER, "saliency", seed="a"), TypeError, r"`seed` to be an int >= 0"),
    ("seed", lambda: road(CNN, LOADER, "saliency", seed=-1), ValueError, r"`seed` to be an int >= 0"),
    ("seed", lambda: Explainer("smoothgrad", seed=-3), ValueError, r"`seed` to be an int >= 0"),
    ("seed", lambda: NoisyLinearImputer(seed=1.5), TypeError, r"`seed` to be an int >= 0"),
    ("seed", lambda: max_sensitivity(CNN, "saliency", X, Y, seed=True), TypeError, r"`seed` to be an int >= 0"),
    ("seed", lambda: spray(torch.rand(6, 8, 8), seed=-1), ValueError, r"`seed` to be an int >= 0"),
    ("seed", lambda: RandomAttribution(CNN, seed="0"), TypeError, r"`seed` to be an int >= 0"),
    ("seed", lambda: CleverHansDigits(seed=-1), ValueError, r"`seed` to be an int >= 0"),
    ("seed", lambda: data_randomization_test(CNN, "saliency", X, seed=2.0), TypeError, r"`seed` to be an int >= 0"),
    # -- issue #24, NaN everywhere: never ranked, scaled or scored ------------------------------------------------
    ("nan", lambda: maps.reduce_channels(with_nan(X)), ValueError, r"`attributions` to be finite, but it holds NaN"),
    ("nan", lambda: maps.rank_pixels(with_nan(X[:, 0])), ValueError, r"`maps` to be finite.*NaN pixel has no rank"),
    ("nan", lambda: maps.top_k_mask(with_nan(X[:, 0], INF), 0.5), ValueError, r"`maps` to be finite.*holds Inf"),
    ("nan", lambda: maps.normalize_minmax(with_nan(X)), ValueError, r"`maps` to be finite, but it holds NaN"),
    ("nan", lambda: maps.normalize_sum(with_nan(X, INF)), ValueError, r"`maps` to be finite, but it holds Inf"),
    ("nan", lambda: maps.normalize_percentile(with_nan(X)), ValueError, r"`maps` to be finite"),
    (
        "nan",
        lambda: maps.normalize_minmax([1.0, 2.0]),
        ValueError,
        r"`maps` to be a \(N, \.\.\.\) tensor, but got list",
    ),
    ("nan", lambda: DeletionAUC(steps=2).update(NAN_OUT, X, X, Y), ValueError, r"`model outputs` to be finite"),
    ("nan", lambda: InsertionAUC(steps=2).update(NAN_OUT, X, X, Y), ValueError, r"`model outputs` to be finite"),
    ("nan", lambda: irof(NAN_OUT, X, X, Y, n_segments=4), ValueError, r"`model outputs` to be finite"),
    ("nan", lambda: feature_maps(CNN, "features.conv1", with_nan(X)), ValueError, r"`inputs` to be finite"),
    ("nan", lambda: AttentionRollout(nan_vit()).attribute(X), ValueError, r"`rollout maps` to be finite"),
    # -- issue #24, undefined values are not reported as numbers ------------------------------------------------------
    ("undefined", lambda: AOPC(steps=2).update(ONE_CLASS, X, X, 0), ValueError, r"at least 2 classes.*apply_softmax"),
    ("undefined", lambda: irof(ONE_CLASS, X, X, 0, n_segments=4), ValueError, r"at least 2 classes"),
    ("undefined", lambda: local_lipschitz_estimate(CNN, "saliency", X, Y, std=0.0), ValueError, r"`std`"),
    ("undefined", lambda: max_sensitivity(CNN, "saliency", X, Y, radius=0), ValueError, r"`radius`"),
    ("undefined", lambda: MaxSensitivity("saliency", scale=0.0), ValueError, r"`scale`"),
    # -- issue #24, no argument silently ignored ----------------------------------------------------------------------
    ("ignored", lambda: Explainer("saliency", layer="features.conv1"), ValueError, r"`layer` only for a layer method"),
    ("ignored", lambda: Explainer("rollout", layer="encoder"), ValueError, r"'rollout' takes none.*layer='encoder'"),
    ("flag", lambda: AttributionMonitor(["saliency"], log_images="no"), TypeError, r"`log_images` to be True or False"),
    (
        "flag",
        lambda: model_randomization_test(CNN, "saliency", X, recompute_target=1),
        TypeError,
        r"`recompute_target`",
    ),
    (
        "flag",
        lambda: model_randomization_test(CNN, "saliency", X, reset_running_stats="y"),
        TypeError,
        r"`reset_running",
    ),
    ("classes", lambda: AttributionMonitor(classes=[0, 0]), ValueError, r"distinct class indices.*got \[0, 0\]"),
    ("classes", lambda: AttributionMonitor(classes=[True]), ValueError, r"`classes` to be a non-empty sequence"),
    ("classes", lambda: AttributionMonitor(classes=[-1]), ValueError, r"ints >= 0"),
    ("classes", lambda: CleverHansAudit("saliency", classes=[1, 1]), ValueError, r"distinct class indices"),
    # -- issue #24, what a user's imputer returns is checked before it is scored -----------------------------------
    ("imputer", lambda: DeletionAUC(steps=2, imputer=SHORT).update(CNN, X, X, Y), ValueError, r"imputer to return"),
    ("imputer", lambda: AOPC(steps=2, imputer=NAN_FILL).update(CNN, X, X, Y), ValueError, r"`imputed images`"),
    ("imputer", lambda: road(CNN, LOADER, "saliency", imputer=SHORT), ValueError, r"inputs' shape \(10, 1, 32, 32\)"),
    ("imputer", lambda: road(CNN, LOADER, "saliency", imputer=INT_FILL), ValueError, r"returned shape.*int64"),
    (
        "imputer",
        lambda: CleverHansAudit("saliency", region=REGION, imputer=NAN_FILL).run(CNN, (X, Y)),
        ValueError,
        r"`imputed images` to be finite",
    ),
    # -- issue #26's new arguments -----------------------------------------------------------------------------------
    ("passes", lambda: count_passes("model").__enter__(), TypeError, r"`model` to be an nn.Module"),
    ("passes", lambda: NoisyLinearImputer(backend="lu"), ValueError, r"`backend` to be one of"),
    ("passes", lambda: perturbation_scores(CNN, X, X, Y, ("deletion", "auc")), ValueError, r"`metrics` to hold"),
    ("passes", lambda: perturbation_scores(CNN, X, X, Y, "deletion"), ValueError, r"`metrics` to hold"),
    ("passes", lambda: perturbation_scores(CNN, X, X, Y, steps=0), ValueError, r"`steps`"),
    ("passes", lambda: perturbation_scores(CNN, X, X, Y, batch_size=0), ValueError, r"`batch_size`"),
    ("passes", lambda: perturbation_scores(CNN, X, X, Y, insertion_imputer=3), TypeError, r"`insertion_imputer`"),
    ("passes", lambda: DeletionAUC(batch_size=True), ValueError, r"`batch_size`"),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 150


@pytest.mark.parametrize(("entry", "call", "error", "match"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_raises_a_clear_error(entry, call, error, match):
    with pytest.raises(error, match=match):
        call()
