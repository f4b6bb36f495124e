"""ROAR / KAR on an oracle dataset (the class signal sits in a known region), resumption, executors, namespaces."""

from __future__ import annotations

import concurrent.futures
import copy
import json
import multiprocessing
import shutil

import lightning.pytorch as L
import pytest
import pytorch_lightning as pl
import torch
from captum.attr import Attribution
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ext import Explainer
from captum_ext.evaluation import ROARResult, kar, roar
from captum_ext.evaluation.roar import RankedMaskDataset
from captum_ext.imputation import MeanImputer

SIDE = 8
REGION = torch.zeros(SIDE, SIDE, dtype=torch.bool)
REGION[1:5, 2:6] = True  # 16 of 64 pixels: a quarter of the image carries all of the class signal
TRAINER = {"max_epochs": 3, "accelerator": "cpu"}


class OracleData(pl.LightningDataModule):
    """Two classes: N(0.2, 1) noise everywhere, plus +0.8 (class 0) or -0.8 (class 1) inside REGION."""

    def __init__(self, seed: int = 0, sizes: tuple[int, int, int] = (512, 128, 256)):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.splits = {}
        for split, n in zip(("train", "val", "test"), sizes):
            y = torch.arange(n) % 2
            x = 0.2 + torch.randn(n, 1, SIDE, SIDE, generator=gen)
            self.splits[split] = TensorDataset(x + torch.where(y == 0, 0.8, -0.8).reshape(-1, 1, 1, 1) * REGION, y)

    def train_dataloader(self):
        return DataLoader(self.splits["train"], batch_size=64, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.splits["val"], batch_size=64)

    def test_dataloader(self):
        return DataLoader(self.splits["test"], batch_size=64)


class _Linear:
    """A linear classifier; records which Trainer class fitted it and what it was fed (for the tests)."""

    seen: list = []

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 2))

    def forward(self, x):
        if not self.training:
            _Linear.seen.append(("eval", x.detach().clone()))
        return self.net(x)

    def on_fit_start(self):
        _Linear.seen.append(("trainer", type(self.trainer).__module__))

    def training_step(self, batch, batch_idx):
        _Linear.seen.append(("train", batch[0].detach().clone()))
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class PLLinear(_Linear, pl.LightningModule):
    pass


class LLinear(_Linear, L.LightningModule):
    pass


def make_pl() -> pl.LightningModule:
    return PLLinear()


class BNLinear(PLLinear):
    """The oracle's linear model behind a BatchNorm, whose running statistics DDP does not synchronise."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(SIDE * SIDE), nn.Linear(SIDE * SIDE, 2))


def make_bn() -> pl.LightningModule:
    return BNLinear()


def make_lightning() -> L.LightningModule:
    return LLinear()


class RegionAttribution(Attribution):
    """The oracle explainer: the true region, constant inside (ties broken by ROAR's seeded jitter)."""

    def __init__(self, forward_func, region: torch.Tensor):
        super().__init__(forward_func)
        self.region = region

    def attribute(self, inputs, target=None):
        return self.region.to(inputs.dtype).expand_as(inputs).clone()


ORACLE = Explainer(RegionAttribution, init_kwargs={"region": REGION}, name="oracle")


class Crash(pl.Callback):
    """Injected failure: raises once ``limit`` fits have started (counted across instances)."""

    starts = 0

    def __init__(self, limit: int | None):
        self.limit = limit

    def on_train_start(self, trainer, pl_module):
        Crash.starts += 1
        if self.limit is not None and Crash.starts > self.limit:
            raise RuntimeError("injected crash")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one intra-op thread avoids OpenMP spin-waiting on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return OracleData()


@pytest.fixture(scope="module")
def sweep(data, tmp_path_factory):
    """The uninterrupted, sequential reference sweep: oracle + random, 2 fractions, 1 repeat."""
    folder = tmp_path_factory.mktemp("sequential")
    _Linear.seen.clear()
    result = roar(
        make_pl,
        data,
        [ORACLE],
        fractions=(0.3, 0.6),
        repeats=1,
        trainer_kwargs=TRAINER,
        cache_dir=folder,
        progress=False,
    )
    trainers = [value for kind, value in _Linear.seen if kind == "trainer"]
    return result, folder, trainers


def test_roar_oracle_drops_to_chance_random_does_not(data, tmp_path):
    result = roar(make_pl, data, [ORACLE], fractions=(0.5,), repeats=2, trainer_kwargs=TRAINER, cache_dir=tmp_path)
    assert result.baseline_accuracy > 0.9
    assert max(result.accuracy["oracle"][0.5]) < 0.62  # every informative pixel removed: chance is 0.5
    assert min(result.accuracy["random"][0.5]) > 0.85  # half of the region survives
    assert result.better_than_random == {"oracle": True} and result.keep is False
    assert len(result.accuracy["oracle"][0.5]) == 2


def test_kar_oracle_keeps_accuracy_above_random(data, tmp_path):
    result = kar(
        make_pl, data, [ORACLE], fractions=(0.1,), repeats=1, trainer_kwargs=TRAINER, cache_dir=tmp_path, progress=False
    )
    assert result.keep is True
    assert result.accuracy["oracle"][0.1][0] > result.accuracy["random"][0.1][0] + 0.1
    assert result.better_than_random == {"oracle": True}


def test_resumes_after_a_crash_without_repeating_runs(data, sweep, tmp_path):
    reference, _, _ = sweep
    Crash.starts = 0
    with pytest.raises(RuntimeError, match="injected crash"):  # base model + 2 runs finish, the 3rd run crashes
        roar(
            make_pl,
            data,
            [ORACLE],
            fractions=(0.3, 0.6),
            repeats=1,
            trainer_kwargs={**TRAINER, "callbacks": [Crash(limit=3)]},
            cache_dir=tmp_path,
            progress=False,
        )
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2
    from captum_ext.evaluation import claims

    (lock,) = (tmp_path / "runs").glob("*.lock")  # the crashed run's claim was given up: marked expired, not deleted
    assert not claims.held_elsewhere(tmp_path / "runs", lock.name.split(".")[0])
    Crash.starts = 0
    resumed = roar(
        make_pl,
        data,
        [ORACLE],
        fractions=(0.3, 0.6),
        repeats=1,
        trainer_kwargs={**TRAINER, "callbacks": [Crash(limit=None)]},
        cache_dir=tmp_path,
        progress=False,
    )
    assert Crash.starts == 2  # only the two unfinished runs were trained; the base model came from the cache
    assert resumed.accuracy == reference.accuracy
    assert resumed.baseline_accuracy == reference.baseline_accuracy
    assert len(list((tmp_path / "runs").glob("*.json"))) == 4
    Crash.starts = 0
    again = roar(
        make_pl,
        data,
        [ORACLE],
        fractions=(0.3, 0.6),
        repeats=1,
        trainer_kwargs={**TRAINER, "callbacks": [Crash(limit=None)]},
        cache_dir=tmp_path,
        progress=False,
    )
    assert Crash.starts == 0 and again.accuracy == reference.accuracy


def reuse_cache(folder, target, rankings: bool = True) -> None:
    """Copy a sweep's base model, plan manifests and (with ``rankings``) rankings: a plan on ``target`` then trains
    only its runs."""
    target.mkdir(parents=True, exist_ok=True)
    for cached in [*folder.glob("base_*.pt"), *folder.glob("plan_*.json")]:
        shutil.copy(cached, target / cached.name)
    for ranking in folder.glob("rank_*") if rankings else ():
        shutil.copytree(ranking, target / ranking.name)


def test_process_pool_executor_matches_sequential(data, sweep, tmp_path):
    """Issue #22: the ranking shards are tasks on the executor too; the table is the sequential one."""
    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path, rankings=False)  # the base model and manifest: the workers rank
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=2, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
    ) as executor:
        parallel = roar(
            make_pl,
            data,
            [ORACLE],
            fractions=(0.3, 0.6),
            repeats=1,
            trainer_kwargs=TRAINER,
            cache_dir=tmp_path,
            executor=executor,
            progress=False,
        )
    assert parallel.accuracy == reference.accuracy
    assert sorted(p.name for p in tmp_path.glob("rank_*")) == sorted(p.name for p in folder.glob("rank_*"))
    records = [json.loads(path.read_text()) for path in (tmp_path / "runs").glob("*.json")]
    assert sorted((r["method"], r["fraction"]) for r in records) == [
        ("oracle", 0.3),
        ("oracle", 0.6),
        ("random", 0.3),
        ("random", 0.6),
    ]


def test_lightning_namespace_and_every_split_masked_with_the_train_mean(data, tmp_path, model_guard):
    """A lightning.pytorch module is fitted by lightning.pytorch's Trainer; train and test images both have the
    oracle region (exactly a quarter of the pixels) replaced by the training set's mean."""
    base = model_guard(make_lightning())
    _Linear.seen.clear()
    result = roar(
        make_lightning,
        data,
        [ORACLE],
        fractions=(0.25,),
        repeats=1,
        trainer_kwargs={**TRAINER, "max_epochs": 1},
        model=base,
        cache_dir=tmp_path,
        progress=False,
    )
    assert set(result.accuracy) == {"oracle", "random"}
    trainers = {value for kind, value in _Linear.seen if kind == "trainer"}
    assert trainers == {"lightning.pytorch.trainer.trainer"}
    train_mean = data.splits["train"].tensors[0].double().mean().float()
    # the first run is the oracle's: every train batch and every test batch has REGION filled with the mean
    first_fit = [i for i, (kind, _) in enumerate(_Linear.seen) if kind == "trainer"][0]
    second_fit = [i for i, (kind, _) in enumerate(_Linear.seen) if kind == "trainer"][1]
    oracle_seen = _Linear.seen[first_fit:second_fit]
    train_batches = [x for kind, x in oracle_seen if kind == "train"]
    test_batches = [x for kind, x in oracle_seen if kind == "eval"][-4:]  # the 256 test images, 4 batches
    assert sum(x.shape[0] for x in train_batches) == 512 and sum(x.shape[0] for x in test_batches) == 256
    for x in train_batches + test_batches:
        assert torch.all(x[:, 0, REGION] == train_mean)
        assert not torch.any(x[:, 0, ~REGION] == train_mean)


def test_pytorch_lightning_modules_are_fitted_by_its_trainer(sweep):
    _, folder, trainers = sweep
    assert trainers == ["pytorch_lightning.trainer.trainer"] * 5  # the base model and the four runs
    assert len(list(folder.glob("rank_*/*.npy"))) == 6 and len(list(folder.glob("base_*.pt"))) == 1


def test_ranking_cache_misses_on_one_weight_or_one_kwarg(tmp_path):
    data = OracleData(sizes=(96, 32, 32))
    model = make_pl()
    settings = {
        "fractions": (0.5,),
        "repeats": 1,
        "trainer_kwargs": {**TRAINER, "max_epochs": 1},
        "cache_dir": tmp_path,
        "progress": False,
    }
    roar(make_pl, data, ["saliency"], model=model, **settings)
    first = set(tmp_path.glob("rank_*/*.npy"))
    assert len(first) == 6  # saliency and random, three splits each
    roar(make_pl, data, ["saliency"], model=model, **settings)
    assert set(tmp_path.glob("rank_*/*.npy")) == first  # same weights, same recipe: cache hit
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.net[1].weight[0, 0] += 1e-3
    roar(make_pl, data, ["saliency"], model=changed, **settings)
    second = set(tmp_path.glob("rank_*/*.npy"))
    assert len(second) == 12  # one weight changed: every ranking (random too: its key has the weights) recomputed
    roar(make_pl, data, [Explainer("saliency", abs=True)], model=changed, **settings)
    assert len(set(tmp_path.glob("rank_*/*.npy"))) == 15  # one kwarg changed: that method's three splits recomputed


def test_masked_view_removes_or_keeps_by_rank(tmp_path):
    import numpy as np

    positions = np.array([[3, 0, 2, 1], [0, 1, 2, 3]], dtype=np.int16)  # rank position of each of 4 pixels
    np.save(tmp_path / "rank.npy", positions, allow_pickle=False)
    images = torch.arange(8.0).reshape(2, 1, 2, 2)
    dataset = TensorDataset(images, torch.tensor([0, 1]))
    removed = RankedMaskDataset(dataset, tmp_path / "rank.npy", 0.5, False, MeanImputer([-1.0]))
    kept = RankedMaskDataset(dataset, tmp_path / "rank.npy", 0.25, True, MeanImputer([-1.0]))
    assert removed[0][0].flatten().tolist() == [0.0, -1.0, 2.0, -1.0]  # ranks 0 and 1 removed
    assert kept[1][0].flatten().tolist() == [4.0, -1.0, -1.0, -1.0]  # only rank 0 kept
    assert removed[1][1] == 1

    class CountingImputer(MeanImputer):
        per_image = False  # the batch path (MeanImputer itself fills image by image: the same values, no batch copy)
        calls: list[int] = []

        def fill(self, inputs, mask):
            self.calls.append(len(inputs))
            return super().fill(inputs, mask)

    batched = RankedMaskDataset(dataset, tmp_path / "rank.npy", 0.5, False, CountingImputer([-1.0]))
    ((x, y),) = DataLoader(batched, batch_size=2)
    assert CountingImputer.calls == [2]  # one imputer call for the whole batch
    assert torch.equal(x, torch.stack([removed[0][0], removed[1][0]])) and y.tolist() == [0, 1]  # = image by image


def test_result_json_roundtrip_plot_and_repr(tmp_path):
    accuracy = {"saliency": {0.1: [0.8, 0.82], 0.3: [0.7, 0.71]}, "random": {0.1: [0.85, 0.86], 0.3: [0.8, 0.79]}}
    result = ROARResult(accuracy, 0.9, keep=False)
    result.to_json(tmp_path / "roar.json")
    again = ROARResult.from_json(tmp_path / "roar.json")
    assert again == result and all(type(f) is float for f in again.accuracy["saliency"])
    assert 0.1 in again.accuracy["saliency"] and again.better_than_random == {"saliency": True}
    assert len(result.plot().axes[0].containers) == 2  # one errorbar container per method
    assert "saliency" in repr(result) and "0.810±0.014" in repr(result)


def test_errors_name_the_argument(tmp_path):
    data = OracleData(sizes=(8, 8, 8))
    with pytest.raises(ValueError, match="without the name 'random'"):
        roar(make_pl, data, ["random"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="Expected argument `explainers` to have unique names"):
        roar(make_pl, data, ["saliency", Explainer("saliency")], cache_dir=tmp_path)
    with pytest.raises(TypeError, match="Expected argument `module_factory` to return a LightningModule"):
        roar(lambda: nn.Linear(2, 2), data, ["saliency"], cache_dir=tmp_path)
    with pytest.raises(TypeError, match="Expected argument `executor` to be a concurrent.futures.Executor"):
        roar(make_pl, data, ["saliency"], executor="pool", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="Expected argument `repeats` to be an int >= 1, but got 0"):
        kar(make_pl, data, ["saliency"], repeats=0, cache_dir=tmp_path)


def test_rankings_stream_to_npy_loaded_without_pickle(tmp_path):
    """Rank positions equal a numpy reference: for a linear model the saliency of class y is |W[y]|."""
    import numpy as np

    from captum_ext.evaluation.cache import compute_rankings, load_rankings, ranking_dtype

    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 2))
    images, labels = torch.rand(10, 1, 3, 3), torch.arange(10) % 2
    path = compute_rankings(
        model, Explainer("saliency"), TensorDataset(images, labels), tmp_path / "r.npy", batch_size=4, progress=False
    )
    positions = np.load(path, allow_pickle=False)
    assert positions.dtype == np.uint16 and np.array_equal(load_rankings(path), positions)  # 2 bytes a position
    assert ranking_dtype(256 * 256) == np.uint16 and ranking_dtype(256 * 256 + 1) == np.uint32
    weight = model[1].weight.detach().abs().numpy()
    for i in range(10):
        order = np.argsort(-weight[int(labels[i])], kind="stable")
        assert np.array_equal(np.argsort(positions[i]), order)

    class Short(TensorDataset):
        def __len__(self):
            return 12  # claims more images than it has: reading image 10 fails mid-pass

    with pytest.raises(IndexError):
        compute_rankings(model, Explainer("saliency"), Short(images, labels), tmp_path / "s.npy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npy"]  # nothing half-written remains


def test_stale_temporaries_go_live_writers_stay(tmp_path):
    """Issue #14: interrupted atomic writes left behind are removed (a dead local writer's at once, another host's
    after six idle hours, in the cache and in its runs/ folder), a live writer's never."""
    import os
    import time

    from captum_ext.evaluation import cache

    results = cache.write_record(tmp_path, "a", {"key": "a", "accuracy": 0.5})
    assert (
        cache.read_record(tmp_path, "a") == {"key": "a", "accuracy": 0.5} and cache.read_record(tmp_path, "b") is None
    )
    import socket
    import subprocess
    import sys

    host = socket.gethostname().replace(".", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    foreign_old = tmp_path / ".rank_x.npy.elsewhere-17.abc.tmp"
    foreign_new = tmp_path / ".rank_y.npy.elsewhere-17.def.tmp"
    dead_writer = tmp_path / "runs" / f".b.json.{host}-{dead.stdout.strip()}.ghi.tmp"
    live_writer = tmp_path / f".rank_w.npy.{host}-{os.getpid()}.jkl.tmp"
    for path in (foreign_old, foreign_new, dead_writer, live_writer):
        path.write_bytes(b"half")
    old = time.time() - 7 * 3600
    os.utime(foreign_old, (old, old))
    os.utime(live_writer, (old, old))  # slow, but its writer is alive
    assert sorted(cache.remove_stale_temporaries(tmp_path)) == sorted([foreign_old, dead_writer])
    assert foreign_new.exists() and live_writer.exists() and results.exists()
    from captum_ext._io import atomic_path

    with atomic_path(tmp_path / "rank_v.npy") as tmp:  # the writer's name carries its owner
        assert f".{host}-{os.getpid()}." in tmp.name and cache.remove_stale_temporaries(tmp_path) == []


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, tensors: TensorDataset):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors)

    def __getitem__(self, index):
        x, y = self.tensors[index]
        return {"image": x, "label": y, "index": index}


class DictOracleData(OracleData):
    """The same splits as dicts ``{"image", "label", "index"}``."""

    def __init__(self):
        super().__init__()
        self.splits = {split: _Dicts(dataset) for split, dataset in self.splits.items()}


class DictLinear(PLLinear):
    """The same linear model for dict batches, returning ``(logits, features)``."""

    def forward(self, x):
        return self.net(x), x.flatten(1)

    def training_step(self, batch, batch_idx):
        assert set(batch) == {"image", "label", "index"}  # ROAR's masked views keep the structure
        return nn.functional.cross_entropy(self.net(batch["image"]), batch["label"])


def make_dict_linear() -> pl.LightningModule:
    return DictLinear()


def test_dict_batches_and_tuple_outputs_give_the_tuple_results(sweep, tmp_path):
    reference, _, _ = sweep
    result = roar(
        make_dict_linear,
        DictOracleData(),
        [ORACLE],
        fractions=(0.3, 0.6),
        repeats=1,
        trainer_kwargs=TRAINER,
        cache_dir=tmp_path,
        progress=False,
    )
    assert result.accuracy == reference.accuracy and result.baseline_accuracy == reference.baseline_accuracy
