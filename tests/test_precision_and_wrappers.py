"""Mixed precision, compiled and wrapped models, channels_last inputs (issue #22): every entry point sees through
``torch.compile``, ``DataParallel`` and DDP to the user's module and its layer names, computes maps and scores in
float32 inside autocast, and the callbacks neither disturb nor mis-measure a ``precision="bf16-mixed"`` fit."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from test_callbacks import _all_callbacks, _events, _probe
from torch import nn

from captum_ext import Explainer
from captum_ext.audit import CleverHansAudit
from captum_ext.evaluation import road
from captum_ext.metrics import DeletionAUC
from captum_ext.models import ClassifierModule, SmallCNN
from captum_ext.sanity import model_randomization_test


@pytest.fixture(scope="module")
def single_process_group(tmp_path_factory):
    """A one-process gloo group (rendezvous through a file: no port, no environment variable left behind), so that
    a model can be wrapped in DistributedDataParallel on the CPU."""
    store = tmp_path_factory.mktemp("process_group") / "store"
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def _wrappers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        "compiled": torch.compile(model, backend="eager"),
        "DataParallel": nn.DataParallel(model),
        "DDP": nn.parallel.DistributedDataParallel(model),
        "compiled DDP": torch.compile(nn.parallel.DistributedDataParallel(model), backend="eager"),
    }


def test_wrapped_models_give_the_modules_results_by_its_own_layer_names(single_process_group):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x, y = torch.rand(8, 1, 32, 32), torch.arange(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradcam = Explainer("gradcam", layer="features.conv3")  # the user's name, not "_orig_mod.features.conv3"
    reference = {
        "gradcam": gradcam.attribute(model, x, y),
        "ig": Explainer("integrated_gradients", n_steps=8).attribute(model, x, y),
        "sanity": model_randomization_test(model, "saliency", x, y),
        "audit": CleverHansAudit("input_x_gradient", region=(0, 0, 8, 8)).run(model, (x, y)).classes,
        "road": road(model, [(x, y)], "saliency", fractions=(0.5,)).to_dict(),
    }
    for name, wrapped in _wrappers(model).items():
        assert torch.equal(gradcam.attribute(wrapped, x, y), reference["gradcam"]), name
        ig = Explainer("integrated_gradients", n_steps=8).attribute(wrapped, x, y)
        assert torch.equal(ig, reference["ig"]), name
        sanity = model_randomization_test(wrapped, "saliency", x, y)
        assert sanity.layers == ["classifier", "features.conv3", "features.conv2", "features.conv1"], name
        assert sanity.similarity == reference["sanity"].similarity, name
        audit = CleverHansAudit("input_x_gradient", region=(0, 0, 8, 8)).run(wrapped, (x, y))
        assert audit.classes == reference["audit"], name
        assert road(wrapped, [(x, y)], "saliency", fractions=(0.5,)).to_dict() == reference["road"], name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_maps_and_scores_are_float32_inside_autocast_and_channels_last_changes_nothing():
    """Inside a bf16 autocast region (a user's validation_step under precision="bf16-mixed") the maps and the
    metric scores equal those computed outside it, in float32."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x, y = torch.rand(8, 1, 32, 32), torch.arange(8)
    explainers = [Explainer("saliency"), Explainer("gradcam"), Explainer("integrated_gradients", n_steps=8)]
    outside = [e.attribute(model, x, y) for e in explainers]
    metric = DeletionAUC(steps=8)
    metric.update(model, x, outside[0], y)
    deletion = metric.compute()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # autocast is really on for the model's own forward
        inside = [e.attribute(model, x, y) for e in explainers]
        metric = DeletionAUC(steps=8)
        metric.update(model, x, inside[0], y)
        assert metric.compute() == deletion
    for a, b in zip(inside, outside):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    last = x.contiguous(memory_format=torch.channels_last)
    for explainer, reference in zip(explainers, outside):
        torch.testing.assert_close(explainer.attribute(model, last, y), reference, rtol=1e-5, atol=1e-7)


def test_bf16_mixed_fit_with_every_callback(digits, tmp_path):
    """Under precision="bf16-mixed" every callback runs, the fit's weights are bitwise those of the same fit
    without callbacks, and the logged values are the float32 values of the final weights."""
    settings = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "precision": "bf16-mixed",
        "deterministic": True,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_train_batches": 4,
        "limit_val_batches": 1,
    }
    modules = {}
    for name, callbacks in (("bare", []), ("monitored", _all_callbacks(digits))):
        torch.manual_seed(0)
        modules[name] = ClassifierModule(SmallCNN())
        trainer = pl.Trainer(**settings, callbacks=callbacks, logger=TensorBoardLogger(str(tmp_path), name=name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(modules[name], datamodule=digits)
    for key, value in modules["bare"].state_dict().items():
        assert torch.equal(modules["monitored"].state_dict()[key], value), key
    scalars = _events(tmp_path / "monitored" / "version_0")
    values = {tag: scalars.Scalars(tag)[-1].value for tag in scalars.Tags()["scalars"]}
    assert any(t.startswith("attribution/") for t in values) and any(t.startswith("shortcut/") for t in values)
    assert all(math.isfinite(v) for v in values.values())
    x, y, _ = _probe(digits, 16)
    module = modules["monitored"]
    metric = DeletionAUC(steps=8)
    metric.update(module, x, Explainer("integrated_gradients").attribute(module, x, y), y)
    assert values["attribution/integrated_gradients/deletion_auc"] == pytest.approx(float(metric.compute()), abs=1e-6)
