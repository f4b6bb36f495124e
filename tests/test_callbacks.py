"""Tests of the Lightning callbacks: probe set, isolation, TensorBoard output, references for every logged value."""

from __future__ import annotations

import copy
import csv
import io
import json
import random
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings

import lightning.pytorch as L
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import assert_unchanged, free_port, snapshot
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from scipy.stats import spearmanr
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F

import captum_ext.callbacks as callbacks_module
from captum_ext import Explainer
from captum_ext.callbacks import (
    AttributionMonitor,
    EmbeddingProjector,
    FilterMonitor,
    RandomizationMonitor,
    ShortcutMonitor,
)
from captum_ext.callbacks.base import ExplanationCallback, preserved_rng
from captum_ext.callbacks.probes import balanced_indices, shard_positions
from captum_ext.callbacks.randomization import randomized_copy
from captum_ext.metrics import DeletionAUC, InsertionAUC
from captum_ext.models import ClassifierModule, SmallCNN, TinyViT

EPOCHS, BATCHES = 2, 8  # the tensorboard fits train 8 of the 17 batches of 64 per epoch


def _trainer(trainer_cls=pl.Trainer, **kwargs):
    settings = {
        "max_epochs": EPOCHS,
        "accelerator": "cpu",
        "deterministic": True,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 1,
        "limit_val_batches": 1,
    }
    settings.update(kwargs)
    return trainer_cls(**settings)


def _fit(datamodule, callbacks=(), seed=0, **kwargs):
    torch.manual_seed(seed)
    module = ClassifierModule(SmallCNN())
    trainer = _trainer(callbacks=list(callbacks), **kwargs)
    trainer.fit(module, datamodule=datamodule)
    return trainer, module


def _saliency_reference(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d logit_target / d x of a float64 copy of the model in eval mode, with plain autograd: (N, C, H, W)."""
    reference = copy.deepcopy(model).double().eval()
    x = x.double().detach().requires_grad_()
    (grad,) = torch.autograd.grad(reference(x)[torch.arange(len(x)), target].sum(), x)
    return grad


def _probe(datamodule, num_samples, seed=0):
    x, y, _ = datamodule.split("val")
    idx = balanced_indices(y, num_samples, seed)
    return x[idx], y[idx], idx


def _events(logdir) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


# -- pure helpers -------------------------------------------------------------------------------------------------
def test_balanced_indices_counts_seeding_and_shards():
    labels = torch.tensor([0] * 5 + [1] * 1 + [2] * 3)
    chosen = balanced_indices(labels, 7, seed=3)
    assert len(set(chosen.tolist())) == 7
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [3, 1, 3]  # class 1 runs out after one turn
    assert torch.equal(chosen, balanced_indices(labels, 7, seed=3))
    assert any(
        not torch.equal(balanced_indices(labels, 4, seed=s), balanced_indices(labels, 4, seed=3)) for s in range(5)
    )
    assert sorted(set(labels[balanced_indices(labels, 9, classes=[0, 2])].tolist())) == [0, 2]
    many = torch.arange(100) % 10
    assert torch.bincount(many[balanced_indices(many, 25)], minlength=10).tolist() == [3] * 5 + [2] * 5
    shards = [shard_positions(11, r, 3).tolist() for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]


def test_preserved_rng_restores_every_stream():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with preserved_rng():
        torch.rand(5), np.random.rand(5), random.random(), torch.manual_seed(99)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


@pytest.mark.parametrize("architecture", [SmallCNN, TinyViT])
def test_randomized_copy_leaves_model_and_rng_alone(architecture, model_guard):
    """Every parameter is re-drawn (a ViT's attention, out_proj included), reproducibly, on a copy."""
    torch.manual_seed(0)
    model = architecture()
    with torch.no_grad():  # as if trained: no parameter equals what its initialiser draws (LayerNorm's ones)
        for p in model.parameters():
            p.add_(0.5)
    model = model_guard(model)
    state = torch.random.get_rng_state()
    a, b = randomized_copy(model, seed=5), randomized_copy(model, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, p), q, r in zip(model.named_parameters(), a.parameters(), b.parameters()):
        assert not torch.equal(p, q), name
        assert torch.equal(q, r), name


def test_argument_errors(digits):
    with pytest.raises(ValueError, match=r"Expected argument `every_n_epochs` to be an int >= 1, but got 0"):
        AttributionMonitor(every_n_epochs=0)
    with pytest.raises(
        ValueError, match=r"Expected argument `metrics` to hold distinct names from 'deletion_auc'.*'roar'"
    ):
        AttributionMonitor(metrics=["roar"])
    with pytest.raises(
        ValueError,
        match=r"`explainers` to be a non-empty sequence with unique names, but got \['saliency', 'saliency'\]",
    ):
        AttributionMonitor(explainers=["saliency", "saliency"])
    with pytest.raises(
        ValueError, match=r"Expected argument `target` to be one of 'label', 'prediction', but got 'truth'"
    ):
        AttributionMonitor(target="truth")
    with pytest.raises(
        TypeError, match=r"Expected argument `explainers` to be an Explainer or a short name, but got 3"
    ):
        AttributionMonitor(explainers=[3])
    with pytest.raises(
        ValueError, match=r"Expected argument `probe` to be a dataset or an \(inputs \(M, C, H, W\), labels"
    ):
        AttributionMonitor(probe=(torch.zeros(3, 1, 8, 8), torch.zeros(2)))
    with pytest.raises(ValueError, match=r"Expected argument `on_detect` to be one of 'warn', 'stop', but got 'halt'"):
        ShortcutMonitor("saliency", digits.region_mask, on_detect="halt")
    with pytest.raises(ValueError, match=r"Expected argument `threshold` to be a positive real number, but got -1"):
        ShortcutMonitor("saliency", digits.region_mask, threshold=-1)
    with pytest.raises(TypeError, match=r"Expected argument `region` to be a bool tensor"):
        ShortcutMonitor("saliency", digits.region_mask.float())
    with pytest.raises(
        ValueError, match=r"Expected argument `monitor` to be one of the similarities 'ssim', but got 'spearman_abs'"
    ):
        RandomizationMonitor("saliency", similarity=("ssim",))
    with pytest.raises(ValueError, match=r"Expected argument `thumbnail_size` to be an int >= 4, but got 2"):
        EmbeddingProjector(thumbnail_size=2)


# -- one seeded TensorBoard fit with every callback, and the same fit without them -----------------------------------
def _all_callbacks(digits):
    known = {
        "AttributionMonitor": lambda: AttributionMonitor(num_samples=16, metric_kwargs={"steps": 8}),
        "RandomizationMonitor": lambda: RandomizationMonitor("saliency", num_samples=8),
        "ShortcutMonitor": lambda: ShortcutMonitor("saliency", digits.region_mask, num_samples=40, on_detect="warn"),
        "EmbeddingProjector": lambda: EmbeddingProjector(num_samples=40),
    }
    classes = [getattr(callbacks_module, n) for n in callbacks_module.__all__]
    classes = [
        c
        for c in classes
        if isinstance(c, type) and issubclass(c, ExplanationCallback) and c is not ExplanationCallback
    ]
    return [known[c.__name__]() if c.__name__ in known else c() for c in classes]


@pytest.fixture(scope="module")
def tb_run(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    cbs = _all_callbacks(digits)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer, module = _fit(
            digits, cbs, logger=TensorBoardLogger(str(root), name="run"), limit_train_batches=BATCHES
        )
    return {
        "trainer": trainer,
        "module": module,
        "callbacks": {type(c).__name__: c for c in cbs},
        "rng": torch.random.get_rng_state(),
        "root": root,
        "logdir": root / "run" / "version_0",
    }


def test_training_invariance_and_every_callback_writes(tb_run, digits):
    torch.manual_seed(0)
    trainer, bare = _fit(
        digits, logger=TensorBoardLogger(str(tb_run["root"]), name="bare"), limit_train_batches=BATCHES
    )
    assert torch.equal(torch.random.get_rng_state(), tb_run["rng"])
    ours = tb_run["module"].state_dict()
    for key, value in bare.state_dict().items():
        assert torch.equal(ours[key], value), f"{key} differs from the fit without callbacks"
    acc = _events(tb_run["logdir"])
    tags = acc.Tags()
    written = set(tags["images"]) | set(tags["scalars"])
    expected = {
        "AttributionMonitor": {
            "attribution/saliency/maps",
            "attribution/integrated_gradients/maps",
            "attribution/saliency/deletion_auc",
            "attribution/integrated_gradients/insertion_auc",
        },
        "RandomizationMonitor": {"sanity/saliency/spearman_abs", "sanity/saliency/ssim"},
        "ShortcutMonitor": {f"shortcut/{c}/ratio" for c in range(10)},
        "EmbeddingProjector": {"embedding/pca"},
    }
    for name in tb_run["callbacks"]:
        if name in expected:
            assert expected[name] <= written, name
    unknown = set(tb_run["callbacks"]) - set(expected)  # callbacks added by other issues: they must write something
    bare_tags = set(_events(tb_run["root"] / "bare" / "version_0").Tags()["scalars"])
    ours_only = written - bare_tags - set().union(*expected.values())
    assert not unknown or ours_only, f"{unknown} wrote no tag"
    assert (tb_run["logdir"] / "projector_config.pbtxt").exists()


def test_event_files_have_tags_at_global_steps(tb_run):
    acc = _events(tb_run["logdir"])
    steps = [BATCHES * (e + 1) for e in range(EPOCHS)]
    for tag in ("attribution/saliency/maps", "attribution/integrated_gradients/maps", "embedding/pca"):
        assert [e.step for e in acc.Images(tag)] == steps, tag
    for tag in ("attribution/saliency/deletion_auc", "shortcut/0/ratio", "sanity/saliency/spearman_abs"):
        assert [e.step for e in acc.Scalars(tag)] == steps, tag
    grid = acc.Images("attribution/saliency/maps")[-1]
    image = np.asarray(Image.open(io.BytesIO(grid.encoded_image_string)))
    # 16 probe images in rows of 8: 2 rows of inputs and 2 rows of overlays, 32 px tiles with 2 px padding
    assert image.shape == (2 + 4 * 34, 2 + 8 * 34, 3)
    trainer = tb_run["trainer"]
    last = acc.Scalars("shortcut/0/ratio")[-1].value
    assert last == pytest.approx(float(trainer.callback_metrics["shortcut/0/ratio"]), rel=1e-6)


def test_attribution_monitor_values_match_references(tb_run, digits):
    module, monitor = tb_run["module"], tb_run["callbacks"]["AttributionMonitor"]
    x, y, idx = _probe(digits, 16)
    assert monitor.state_dict()["probe_indices"] == idx.tolist() == monitor.probe_set.indices.tolist()
    assert torch.bincount(y, minlength=10).tolist() == [2] * 6 + [1] * 4
    reference = _saliency_reference(module, x, y).abs().sum(1).float()
    torch.testing.assert_close(monitor.maps["saliency"], reference, rtol=1e-4, atol=1e-6)
    metrics = tb_run["trainer"].callback_metrics
    for name, cls in (("deletion_auc", DeletionAUC), ("insertion_auc", InsertionAUC)):
        metric = cls(steps=8)
        metric.update(module, x, Explainer("integrated_gradients").attribute(module, x, y), y)
        value = float(metrics[f"attribution/integrated_gradients/{name}"])
        assert value == pytest.approx(float(metric.compute()), abs=1e-6), name


def test_shortcut_ratio_matches_float64_reference(tb_run, digits):
    module, monitor = tb_run["module"], tb_run["callbacks"]["ShortcutMonitor"]
    x, y, _ = _probe(digits, 40)
    positive = _saliency_reference(module, x, y).clamp(min=0).sum(1)
    region = digits.region_mask.double()
    share = (positive * region).flatten(1).sum(1) / positive.flatten(1).sum(1)
    for cls in range(10):
        expected = float(share[y == cls].mean() / region.mean())
        assert monitor.ratios[cls] == pytest.approx(expected, rel=1e-4), cls


def test_randomization_similarity_matches_scipy(tb_run, digits):
    module, monitor = tb_run["module"], tb_run["callbacks"]["RandomizationMonitor"]
    x, y, _ = _probe(digits, 8)
    trained = _saliency_reference(module, x, y).sum(1)
    randomized = _saliency_reference(randomized_copy(module, seed=0), x, y).sum(1)
    rho = [spearmanr(a.abs().flatten(), b.abs().flatten())[0] for a, b in zip(trained, randomized)]
    assert monitor.similarities["spearman_abs"] == pytest.approx(float(np.mean(rho)), abs=1e-5)
    assert monitor.similarities["spearman_abs"] < 0.5 and not monitor.failed  # a trained CNN's gradient passes


def test_embedding_projector_writes_penultimate_activations(tb_run, digits):
    module, logdir = tb_run["module"], tb_run["logdir"]
    x, y, _ = _probe(digits, 40)
    with torch.no_grad():
        expected = module.model.flatten(module.model.pool(module.model.features(x)))
    folder = logdir / f"{BATCHES * EPOCHS:05d}" / "embedding%2fmodel.classifier"
    tensors = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
    np.testing.assert_allclose(tensors, expected.numpy(), rtol=1e-4, atol=1e-5)
    labels = (folder / "metadata.tsv").read_text().split()
    assert labels == [str(v) for v in y.tolist()]
    assert Image.open(folder / "sprite.png").size == (7 * 32, 7 * 32)  # ceil(sqrt(40)) thumbnails a side


# -- the real TensorBoard server --------------------------------------------------------------------------------------
def test_tensorboard_server_serves_scalars_and_images(tb_run):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(tb_run["root"]),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data/plugin"

    def get(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()

    try:
        run = "run/version_0"
        deadline, tags = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            try:
                tags = json.loads(get(f"{base}/scalars/tags"))
                if run in tags and "attribution/saliency/deletion_auc" in tags[run]:
                    break
            except OSError:
                pass
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with code {server.returncode}")
            time.sleep(0.5)
        assert {"attribution/saliency/deletion_auc", "shortcut/0/ratio", "sanity/saliency/ssim"} <= set(
            tags.get(run, {})
        )
        query = urllib.parse.urlencode({"run": run, "tag": "shortcut/0/ratio"})
        served = json.loads(get(f"{base}/scalars/scalars?{query}"))
        stored = _events(tb_run["logdir"]).Scalars("shortcut/0/ratio")
        assert [row[1] for row in served] == [e.step for e in stored]
        assert [row[2] for row in served] == pytest.approx([e.value for e in stored], rel=1e-6)
        query = urllib.parse.urlencode({"run": run, "tag": "attribution/saliency/maps", "sample": 0})
        entries = json.loads(get(f"{base}/images/images?{query}"))
        assert [e["step"] for e in entries] == [BATCHES * (e + 1) for e in range(EPOCHS)]
        png = get(f"{base}/images/individualImage?{entries[-1]['query']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(io.BytesIO(png)).size == (2 + 8 * 34, 2 + 4 * 34)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- behaviour of single callbacks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("inference_mode", [True, False])
def test_maps_under_inference_mode(digits, inference_mode):
    monitor = AttributionMonitor(["saliency"], num_samples=8, metrics=())
    trainer, module = _fit(digits, [monitor], max_epochs=1, limit_train_batches=2, inference_mode=inference_mode)
    x, y, _ = _probe(digits, 8)
    reference = _saliency_reference(module, x, y).abs().sum(1).float()
    assert reference.abs().sum() > 0
    torch.testing.assert_close(monitor.maps["saliency"], reference, rtol=1e-4, atol=1e-6)


def test_callbacks_leave_the_module_unchanged(digits, tmp_path):
    """Mode flags, weights, requires_grad, .grad and hooks are the same before and after every callback's check."""
    seen = []

    class Before(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.train()  # not the loop's eval mode: each module's own flag must come back
            pl_module.model.features.conv1.weight.requires_grad_(False)
            for p in pl_module.parameters():
                p.grad = torch.full_like(p, 0.5)
            seen.append(snapshot(pl_module))

    class After(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            assert_unchanged(pl_module, seen[-1])
            pl_module.model.features.conv1.weight.requires_grad_(True)
            pl_module.eval()

    monitors = [
        AttributionMonitor(num_samples=4, metric_kwargs={"steps": 4}),
        RandomizationMonitor("guided_backprop", num_samples=4),
        ShortcutMonitor("gradcam", digits.region_mask, num_samples=10),
        EmbeddingProjector(num_samples=10),
    ]
    _fit(
        digits,
        [Before(), *monitors, After()],
        max_epochs=1,
        limit_train_batches=1,
        logger=TensorBoardLogger(str(tmp_path), name="guard"),
    )
    assert (
        len(seen) == 2 and monitors[0].maps and monitors[1].similarities and monitors[2].ratios
    )  # sanity check + epoch


class _LitClassifier(L.LightningModule):
    """The same classifier written against the `lightning.pytorch` namespace."""

    def __init__(self):
        super().__init__()
        self.model = SmallCNN()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_lightning_pytorch_namespace(digits, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger

    monitors = [
        AttributionMonitor(["saliency"], num_samples=8, metrics=("deletion_auc",), metric_kwargs={"steps": 4}),
        ShortcutMonitor("saliency", digits.region_mask, num_samples=20),
    ]
    assert all(isinstance(m, L.Callback) and isinstance(m, pl.Callback) for m in monitors)
    torch.manual_seed(0)
    trainer = _trainer(
        L.Trainer,
        max_epochs=1,
        limit_train_batches=2,
        callbacks=monitors,
        logger=LightningTensorBoardLogger(str(tmp_path), name="lit"),
    )
    module = _LitClassifier()
    trainer.fit(module, digits.train_dataloader(), digits.val_dataloader())
    tags = _events(tmp_path / "lit" / "version_0").Tags()
    assert "attribution/saliency/maps" in tags["images"]
    assert {"attribution/saliency/deletion_auc", "shortcut/0/ratio"} <= set(tags["scalars"])
    x, y, _ = _probe(digits, 8)
    torch.testing.assert_close(
        monitors[0].maps["saliency"], _saliency_reference(module, x, y).abs().sum(1).float(), rtol=1e-4, atol=1e-6
    )


def test_csv_logger_gets_scalars_and_no_logger_warns_once(digits, tmp_path):
    monitor = ShortcutMonitor("saliency", digits.region_mask, num_samples=20)
    _fit(digits, [monitor], limit_train_batches=2, logger=CSVLogger(str(tmp_path), name="csv"))
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("shortcut/0/ratio")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert float(rows[-1]["shortcut/0/ratio"]) == pytest.approx(monitor.ratios[0], rel=1e-6)
    quiet = AttributionMonitor(["saliency"], num_samples=4, metrics=())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(digits, [quiet], limit_train_batches=1, logger=False)
    assert sum("has no logger" in str(w.message) for w in caught) == 1


def test_every_n_epochs_and_sanity_check_skipped(digits):
    calls = []

    class Counting(ExplanationCallback):
        def run(self, trainer, pl_module):
            calls.append((trainer.current_epoch, trainer.sanity_checking))

    _fit(digits, [Counting(every_n_epochs=2)], max_epochs=4, limit_train_batches=1, num_sanity_val_steps=2)
    assert calls == [(1, False), (3, False)]


def test_runs_once_per_epoch_with_several_validations_per_epoch(digits):
    """``val_check_interval=0.5`` validates twice per epoch; the callback still runs once per (due) epoch, and a
    later ``trainer.validate`` is a run of its own."""
    calls = []

    class Counting(ExplanationCallback):
        def run(self, trainer, pl_module):
            calls.append((trainer.current_epoch, trainer.global_step, str(trainer.state.fn)))

    counting = Counting()
    trainer, module = _fit(digits, [counting], max_epochs=2, limit_train_batches=4, val_check_interval=0.5)
    assert [(epoch, step) for epoch, step, _ in calls] == [(0, 2), (1, 6)]
    trainer.validate(module, datamodule=digits, verbose=False)
    trainer.validate(module, datamodule=digits, verbose=False)
    assert len(calls) == 4 and calls[-1][2] != calls[0][2]  # each validate call runs once
    for expected in (5, 6):  # the same instance in two new one-epoch fits runs in each
        _fit(digits, [counting], max_epochs=1, limit_train_batches=2)
        assert len(calls) == expected and calls[-1][0] == 0


def test_shortcut_monitor_stops_on_shortcut_and_not_on_control(digits, control_digits, tmp_path):
    stop = ShortcutMonitor("saliency", digits.region_mask, num_samples=40, threshold=5.0, patience=2, on_detect="stop")
    trainer, _ = _fit(digits, [stop], max_epochs=8)
    assert list(stop.detected) == [0]
    assert trainer.current_epoch < 8 and stop.detected[0] == trainer.current_epoch - 1
    assert stop.ratios[0] > 5.0 and max(r for c, r in stop.ratios.items() if c != 0) < 5.0
    control = ShortcutMonitor(
        "saliency", control_digits.region_mask, num_samples=40, threshold=5.0, patience=2, on_detect="stop"
    )
    history = []

    class Record(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                history.append(dict(control.ratios))

    trainer, _ = _fit(control_digits, [control, Record()], max_epochs=3)
    assert control.detected == {} and trainer.current_epoch == 3 and len(history) == 3
    assert max(max(h.values()) for h in history) < 5.0
    # the state goes into Lightning checkpoints under the instance's key, and survives a round trip, with
    # defaults for keys an older checkpoint lacks
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["callbacks"][control.state_key] == control.state_dict()
    assert control.state_key.startswith("ShortcutMonitor{")
    restored = ShortcutMonitor(
        "saliency", digits.region_mask, num_samples=40, threshold=5.0, patience=2, on_detect="stop"
    )
    restored.load_state_dict(json.loads(json.dumps(stop.state_dict())))
    assert restored.detected == stop.detected and restored.state_dict() == stop.state_dict()
    restored.load_state_dict({})
    assert restored.detected == {} and restored.state_dict()["probe_indices"] is None


def test_randomization_monitor_warns_for_a_map_independent_of_the_model(digits):
    monitor = RandomizationMonitor(Explainer("random", seed=3), num_samples=4, patience=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(digits, [monitor], max_epochs=2, limit_train_batches=1)
    assert monitor.similarities["spearman_abs"] == pytest.approx(1.0)
    assert monitor.failed
    assert sum("hardly depend on the learned weights" in str(w.message) for w in caught) == 1


def test_a_resumed_fit_logs_what_an_uninterrupted_fit_logs(digits, tmp_path):
    """Issue #14: the SmoothGrad draws continue from the checkpointed call counter, and the digits' shuffle depends
    on the epoch only, so stopping after epoch 2 and resuming gives epoch 3 bitwise as an uninterrupted fit."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    def fit(name, max_epochs, ckpt_path=None):
        monitor = AttributionMonitor(
            ["smoothgrad"], num_samples=8, metrics=("deletion_auc",), metric_kwargs={"steps": 4}
        )
        saver = ModelCheckpoint(dirpath=tmp_path / name, save_last=True, save_top_k=0)
        torch.manual_seed(0)
        module = ClassifierModule(SmallCNN())
        trainer = _trainer(
            max_epochs=max_epochs, limit_train_batches=3, callbacks=[monitor, saver], enable_checkpointing=True
        )
        trainer.fit(module, datamodule=digits, ckpt_path=ckpt_path)
        return trainer, module, monitor

    whole, whole_module, whole_monitor = fit("whole", 3)
    fit("part", 2)
    resumed, resumed_module, resumed_monitor = fit("resumed", 3, ckpt_path=tmp_path / "part" / "last.ckpt")
    for key, value in whole_module.state_dict().items():
        assert torch.equal(resumed_module.state_dict()[key], value), key
    assert resumed_monitor.explainers[0]._calls == whole_monitor.explainers[0]._calls == 3
    torch.testing.assert_close(resumed_monitor.maps["smoothgrad"], whole_monitor.maps["smoothgrad"], rtol=0, atol=0)
    key = "attribution/smoothgrad/deletion_auc"
    assert float(resumed.callback_metrics[key]) == float(whole.callback_metrics[key])


def test_attribution_monitor_logs_the_metrics_beyond_quantus(digits):
    """Issue #16: the new metrics are loggable by name; each logged value is the functional's on the probe set."""
    from captum_ext.metrics.complexity import sparseness
    from captum_ext.metrics.faithfulness_correlation import faithfulness_correlation
    from captum_ext.metrics.random_logit import random_logit
    from captum_ext.metrics.robustness import max_sensitivity

    names = ("sparseness", "faithfulness_correlation", "max_sensitivity", "random_logit")
    monitor = AttributionMonitor(
        ["saliency"],
        num_samples=8,
        metrics=names,
        log_images=False,
        metric_kwargs={"runs": 10, "subset_size": 64, "samples": 2},
    )
    trainer, module = _fit(digits, [monitor], max_epochs=1, limit_train_batches=2)
    x, y, _ = _probe(digits, 8)
    explainer = Explainer("saliency")
    maps = explainer.attribute(module, x, y)
    expected = {
        "sparseness": sparseness(maps).mean(),
        "faithfulness_correlation": faithfulness_correlation(module, x, maps, y, runs=10, subset_size=64).nanmean(),
        "max_sensitivity": max_sensitivity(module, explainer, x, y, samples=2, attributions=maps).mean(),
        "random_logit": random_logit(module, explainer, x, y, attributions=maps).mean(),
    }
    for name, value in expected.items():
        assert float(trainer.callback_metrics[f"attribution/saliency/{name}"]) == pytest.approx(
            float(value), abs=1e-5
        ), name
    with pytest.raises(
        TypeError, match=r"keys of `metric_kwargs` to be arguments of the metrics \['sparseness'\], but got 'runs'"
    ):
        AttributionMonitor(metrics=("sparseness",), metric_kwargs={"runs": 3})


def test_shared_callback_arguments_are_keyword_only_and_max_samples_is_a_deprecated_num_samples():
    """Issue #17: one name (`num_samples`) and one keyword-only order for the arguments every callback shares."""
    import inspect

    shared = ["num_samples", "every_n_epochs", "probe", "classes", "seed", "probe_scan", "output_fn", "unpack"]
    for cls in (AttributionMonitor, RandomizationMonitor, ShortcutMonitor, EmbeddingProjector, FilterMonitor):
        params = inspect.signature(cls.__init__).parameters
        keyword_only = [name for name, p in params.items() if p.kind is p.KEYWORD_ONLY]
        assert [name for name in keyword_only if name in shared] == shared, cls.__name__
        positional = [name for name, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD and name != "self"]
        assert not set(positional) & set(shared), cls.__name__
    with pytest.warns(FutureWarning, match="num_samples"):
        old = EmbeddingProjector(max_samples=12)
    assert old.num_samples == 12 == EmbeddingProjector(num_samples=12).num_samples
