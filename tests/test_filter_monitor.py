"""FilterMonitor: the images it writes equal the features functions' output, and the run is bitwise unchanged."""

from __future__ import annotations

import io
import warnings

import lightning.pytorch as L
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import snapshot
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.utils import make_grid

from captum_ext.callbacks.filters import FilterMonitor
from captum_ext.callbacks.probes import balanced_indices
from captum_ext.features import ActivationMaximization, feature_maps, first_layer_filters
from captum_ext.models import ClassifierModule, SmallCNN

TRAIN_BATCHES = 3
LAYERS = ["model.features.relu1", "model.features.relu3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(datamodule, callbacks=(), logger=None, max_epochs=2):
    torch.manual_seed(0)
    module = ClassifierModule(SmallCNN())
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=TRAIN_BATCHES,
        limit_val_batches=1,
        accelerator="cpu",
        deterministic=True,
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=datamodule)
    return trainer, module


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("filters")
    monitor = FilterMonitor(
        feature_layers=LAYERS,
        num_samples=3,
        class_images_every_n_epochs=2,
        activation_maximization={"steps": 8, "value_range": (0.0, 1.0)},
    )
    trainer, module = _fit(digits, [monitor], TensorBoardLogger(str(root), name="run"))
    rng = torch.random.get_rng_state()
    acc = EventAccumulator(str(root / "run" / "version_0"), size_guidance={"images": 0})
    acc.Reload()
    return {"module": module, "monitor": monitor, "acc": acc, "rng": rng, "root": root}


def _decoded(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string))).astype(np.int16)


def _as_uint8(image: torch.Tensor) -> np.ndarray:
    """What TensorBoard stores for a float (3, H, W) image in [0, 1]: HWC, x 255, truncated to uint8."""
    return (image.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8).astype(np.int16)


def test_the_training_run_is_bitwise_unchanged(run, digits):
    trainer, bare = _fit(digits, logger=TensorBoardLogger(str(run["root"]), name="bare"))
    assert torch.equal(torch.random.get_rng_state(), run["rng"])
    ours = run["module"].state_dict()
    for key, value in bare.state_dict().items():
        assert torch.equal(ours[key], value), f"{key} differs from the fit without the callback"
    assert snapshot(run["module"])["hooks"] == snapshot(bare)["hooks"]
    assert [m.training for m in run["module"].modules()] == [m.training for m in bare.modules()]


def test_tags_and_steps(run):
    acc = run["acc"]
    steps = [TRAIN_BATCHES, 2 * TRAIN_BATCHES]
    assert [e.step for e in acc.Images("filters/model.features.conv1")] == steps
    for layer in LAYERS:
        assert [e.step for e in acc.Images(f"feature_maps/{layer}")] == steps
    assert [e.step for e in acc.Images("activation_maximization/classes")] == [2 * TRAIN_BATCHES]  # every 2nd epoch


def test_logged_images_equal_the_features_functions(run, digits):
    acc, module = run["acc"], run["module"]  # the weights at the last validation are the final weights
    filters = first_layer_filters(module, "model.features.conv1")
    assert np.abs(_decoded(acc.Images("filters/model.features.conv1")[-1]) - _as_uint8(filters)).max() <= 1
    x, y, _ = digits.split("val")
    probe = x[balanced_indices(y, 3, seed=0)]
    for layer in LAYERS:
        expected = make_grid(feature_maps(module, layer, probe), nrow=1, padding=2, pad_value=1.0)
        assert np.abs(_decoded(acc.Images(f"feature_maps/{layer}")[-1]) - _as_uint8(expected)).max() <= 1
    images = ActivationMaximization(module, (1, 32, 32), steps=8, value_range=(0.0, 1.0), seed=0).visualize(
        target=list(range(10))
    )
    lo, hi = images.flatten(1).amin(1), images.flatten(1).amax(1)
    images = (images - lo[:, None, None, None]) / (hi - lo)[:, None, None, None]
    expected = make_grid(
        torch.nn.functional.interpolate(images, scale_factor=3, mode="nearest"), nrow=10, padding=2, pad_value=1.0
    )
    assert np.abs(_decoded(acc.Images("activation_maximization/classes")[-1]) - _as_uint8(expected)).max() <= 1


def test_no_tensorboard_warns_once_and_computes_nothing(digits, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("computed a filter grid with no TensorBoard to write it to")

    monkeypatch.setattr("captum_ext.callbacks.filters.first_layer_filters", fail)
    monitor = FilterMonitor()
    with pytest.warns(UserWarning, match="images and figures are written only to a TensorBoardLogger") as record:
        torch.manual_seed(0)
        module = ClassifierModule(SmallCNN())
        pl.Trainer(
            max_epochs=2,
            limit_train_batches=1,
            limit_val_batches=1,
            logger=CSVLogger(str(tmp_path)),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[monitor],
        ).fit(module, datamodule=digits)
    assert sum("TensorBoardLogger" in str(w.message) for w in record) == 1


def test_bad_layer_is_reported(digits, tmp_path):
    monitor = FilterMonitor(feature_layers=["model.features.nope"])
    with pytest.raises(
        ValueError, match="Expected argument `layer` to name a submodule of the model; 'model.features.nope'"
    ):
        _fit(digits, [monitor], TensorBoardLogger(str(tmp_path), name="bad"), max_epochs=1)


def test_state_key_namespaces_and_arguments():
    a, b = FilterMonitor(), FilterMonitor(feature_layers=["model.features.relu2"])
    assert isinstance(a, L.Callback) and isinstance(a, pl.Callback)
    assert a.state_key != b.state_key
    a.load_state_dict({"probe_indices": [4, 2]})
    assert a.state_dict()["probe_indices"] == [4, 2]
    with pytest.raises(
        ValueError, match="Expected argument `class_images_every_n_epochs` to be an int >= 0, but got -1"
    ):
        FilterMonitor(class_images_every_n_epochs=-1)
    with pytest.raises(
        ValueError, match="Expected the keys of argument `activation_maximization` to be among 'steps'.*but got 'seed'"
    ):
        FilterMonitor(activation_maximization={"seed": 3})
    with pytest.raises(ValueError, match="Expected argument `steps` to be an int >= 1, but got 0"):
        FilterMonitor(activation_maximization={"steps": 0})
    with pytest.raises(
        TypeError, match="Expected argument `feature_layers` to be a list of dotted module names or None, but got 'x'"
    ):
        FilterMonitor(feature_layers="x")
    with pytest.raises(
        ValueError,
        match=r"Expected argument `class_targets` to be a non-empty list of class indices or None, but got \[\]",
    ):
        FilterMonitor(class_targets=[])
    with pytest.raises(ValueError, match="Expected argument `every_n_epochs` to be an int >= 1, but got 0"):
        FilterMonitor(every_n_epochs=0)
