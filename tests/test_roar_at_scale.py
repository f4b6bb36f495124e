"""ROAR at ImageNet scale (issue #22) on the oracle data of ``test_roar``: a task reads the plan, not the dataset;
rankings in uint16 shards equal to the unsharded pass; requeued and duplicate tasks never end without a record;
the datamodule's worker settings reach the retraining loaders; rankings and accuracies on the trainer's device."""

# ruff: noqa: F811  (the fixtures data and sweep are imported from test_roar)

from __future__ import annotations

import importlib
import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from test_roar import (  # noqa: F401
    ORACLE,
    REGION,
    TRAINER,
    OracleData,
    data,
    make_pl,
    one_thread,
    reuse_cache,
    sweep,
)
from torch.utils.data import DataLoader, Dataset

from captum_ext.evaluation import cache, claims, roar_plan
from captum_ext.evaluation.ranking import resolve_device
from captum_ext.evaluation.retraining import RankedMaskDataset, loaders

SETTINGS = {"fractions": (0.3, 0.6), "repeats": 1, "trainer_kwargs": TRAINER, "progress": False}


class Counted(Dataset):
    """A dataset that counts the items read from it (what a task would decode from disk)."""

    reads = 0

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        Counted.reads += 1
        return self.base[index]


class CountedData(OracleData):
    """The oracle data behind counting datasets, with the given DataLoader worker settings."""

    def __init__(self, loader_kwargs: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.splits = {split: Counted(dataset) for split, dataset in self.splits.items()}
        self.loader_kwargs = loader_kwargs or {}

    def train_dataloader(self):
        return DataLoader(self.splits["train"], batch_size=64, shuffle=True, **self.loader_kwargs)

    def val_dataloader(self):
        return DataLoader(self.splits["val"], batch_size=64, **self.loader_kwargs)

    def test_dataloader(self):
        return DataLoader(self.splits["test"], batch_size=64, **self.loader_kwargs)


def test_a_task_reads_the_plan_not_the_dataset(sweep, tmp_path):
    """A compute=False plan reads 16 items per split whatever the size, a finished run none at all; changed data
    or another data_version are refused by name instead of silently mixing plans."""
    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path)
    data = CountedData()
    Counted.reads = 0
    plan = roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, compute=False, **SETTINGS)
    assert Counted.reads == 3 * cache.SIGNATURE_SAMPLES  # 896 images, 48 read
    assert plan.baseline_accuracy == reference.baseline_accuracy and plan.missing_rankings() == []
    record = plan.run(2)
    Counted.reads = 0
    assert plan.run(2) == record and Counted.reads == 0  # done: returns its record without touching the data
    assert roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, **SETTINGS).runs == plan.runs  # the driver agrees

    changed = CountedData()
    changed.splits["test"].base.tensors[0][-1] += 1.0  # the last item is always in the sample
    with pytest.raises(ValueError, match="'test' split differs from the plan's in its sampled items"):
        roar_plan(make_pl, changed, [ORACLE], cache_dir=tmp_path, compute=False, **SETTINGS)
    shorter = CountedData(sizes=(512, 128, 200))
    with pytest.raises(ValueError, match="'test' split has 200 items, the plan's 256"):
        roar_plan(make_pl, shorter, [ORACLE], cache_dir=tmp_path, compute=False, **SETTINGS)
    with pytest.raises(FileNotFoundError, match="prepare the plan first"):
        roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, compute=False, data_version="v2", **SETTINGS)

    (manifest,) = tmp_path.glob("plan_*.json")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "baseline_accuracy": 7.5}))
    with pytest.warns(RuntimeWarning, match="malformed baseline_accuracy"), pytest.raises(FileNotFoundError):
        roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, compute=False, **SETTINGS)
    with pytest.warns(RuntimeWarning, match="malformed"):  # the plan step writes it again
        again = roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, **SETTINGS)
    assert again.baseline_accuracy == reference.baseline_accuracy
    assert json.loads(manifest.read_text())["baseline_accuracy"] == reference.baseline_accuracy


def test_sharded_uint16_rankings_equal_the_single_pass(sweep, tmp_path):
    """Shards of 100 images, computed one by one in any order, hold exactly the rows of the single-shard pass (a
    deterministic method), 2 bytes a position; a stochastic one draws anew in every shard and split."""
    reference, folder, _ = sweep
    data = OracleData()
    plan = roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, shard_size=100, rank=False, **SETTINGS)
    whole = roar_plan(make_pl, data, [ORACLE], cache_dir=folder, compute=False, **SETTINGS)
    assert len(plan.shards) == 2 * (6 + 2 + 3) and plan.missing_rankings() == list(range(len(plan.shards)))
    with pytest.raises(FileNotFoundError, match="shards are missing"):
        plan.run(0)
    for j in reversed(range(len(plan.shards))):
        plan.rank(j)
    assert plan.missing_rankings() == []
    oracle, random = plan.runs[0].rankings, plan.runs[-1].rankings
    for split in ("train", "val", "test"):
        n = len(data.splits[split])
        rows = cache.Rankings(oracle[split]).rows(range(n))
        expected = cache.Rankings(whole.runs[0].rankings[split]).rows(range(n))
        assert rows.dtype == np.uint16 and np.array_equal(rows, expected)
    noise = cache.Rankings(random["train"]).rows(range(300))
    assert not (noise[:100] == noise[100:200]).all(axis=1).any()  # stochastic methods: every shard draws its own
    assert not (noise[:100] == cache.Rankings(random["test"]).rows(range(100))).all(axis=1).any()  # every split too
    view = RankedMaskDataset(
        data.splits["train"], plan.runs[0].rankings["train"], 0.3, False, lambda x, m: x * ~m[:, None]
    )
    x, _ = next(iter(DataLoader(view, batch_size=256)))
    removed = (x == 0).flatten(1).sum(1)
    assert torch.all(removed == round(0.3 * 64))
    assert plan.execute(progress=False).accuracy["oracle"] == reference.accuracy["oracle"]


def test_a_task_never_ends_without_a_record(sweep, tmp_path, monkeypatch):
    """A run claimed by a live worker elsewhere: run(wait=True) returns that worker's record when it is written, or
    trains the run itself once the claim expires; a claim made by this Slurm job before its requeue is taken over at
    once."""
    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path)
    plan = roar_plan(make_pl, OracleData(), [ORACLE], cache_dir=tmp_path, compute=False, **SETTINGS)
    runs = tmp_path / "runs"
    monkeypatch.setattr(importlib.import_module("captum_ext.evaluation.roar"), "_WAIT_S", 0.05)

    def foreign_claim(key, slurm="", restart=0):
        runs.mkdir(exist_ok=True)
        (runs / f"{key}.0.lock").write_text(json.dumps({"owner": "elsewhere-17", "slurm": slurm, "restart": restart}))

    key = plan.runs[0].key  # 1. a duplicate task: the other worker finishes while this one waits
    foreign_claim(key)
    assert plan.run(0) is None  # without wait: "held elsewhere", no record
    written = {"key": key, "accuracy": 0.25}
    threading.Timer(0.3, lambda: cache.write_record(tmp_path, key, written)).start()
    assert plan.run(0, wait=True) == written

    key = plan.runs[1].key  # 2. a dead claim from another host: trained here once it expires
    foreign_claim(key)
    monkeypatch.setattr(claims, "EXPIRY_S", 0.5)
    started = time.time()
    record = plan.run(1, wait=True)
    assert record["worker"] == claims.owner() and time.time() - started >= 0.5
    assert record["accuracy"] == reference.accuracy["oracle"][0.6][0]

    key = plan.runs[2].key  # 3. this Slurm job's own claim from before a requeue: taken at once
    monkeypatch.setattr(claims, "EXPIRY_S", 3600.0)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "812")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    for other in ({"slurm": "812_7"}, {"slurm": "812_2", "restart": 1}):  # another task; a process of this restart
        foreign_claim(key, **other)
        assert plan.run(2) is None  # live: not taken
        os.remove(runs / f"{key}.0.lock")
    foreign_claim(key, slurm="812_2", restart=0)
    assert plan.run(2)["accuracy"] == reference.accuracy["random"][0.3][0]


def test_retraining_loaders_keep_the_datamodules_workers(tmp_path):
    """num_workers, pin_memory, persistent_workers and prefetch_factor of the user's loaders reach ROAR's loaders;
    the masked batches read by two workers equal those read in the process."""
    settings = {"num_workers": 2, "persistent_workers": True, "prefetch_factor": 3}
    data = CountedData(loader_kwargs=settings, sizes=(128, 32, 64))
    plan = roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, **{**SETTINGS, "fractions": (0.5,)})
    run = plan.runs[0]
    views = {s: RankedMaskDataset(d, run.rankings[s], 0.5, False, plan._job.imputer) for s, d in data.splits.items()}
    made = loaders(plan._job, views, run.seed)
    assert all((made[s].num_workers, made[s].persistent_workers, made[s].prefetch_factor) == (2, True, 3) for s in made)
    in_process = loaders(plan._job.__class__(**{**vars(plan._job), "loader_options": {}}), views, run.seed)
    for a, b in zip(made["train"], in_process["train"]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_device_follows_the_trainer_not_where_lightning_left_the_module(monkeypatch):
    assert resolve_device(None, {"accelerator": "cpu"}) == torch.device("cpu")
    assert resolve_device("cuda:1", {"accelerator": "cpu"}) == torch.device("cuda:1")  # given: wins
    assert resolve_device(None, {"accelerator": "gpu", "devices": [2, 3]}) == torch.device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device(None, {"accelerator": "cuda", "devices": [2, 3]}) == torch.device("cuda:3")  # DDP rank 1
    assert resolve_device(None, {"accelerator": "gpu", "devices": 2}) == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None, {}) == torch.device("cuda:1")  # "auto" with a GPU: Lightning trains there
    with pytest.raises(ValueError, match="Expected argument `device` to be a torch.device"):
        resolve_device("gpu0", {})
    with pytest.raises(ValueError, match="Expected argument `device`.*accelerator 'tpu'"):
        resolve_device(None, {"accelerator": "tpu"})  # never silently the CPU
    small = OracleData(sizes=(8, 8, 8))
    with pytest.raises(ValueError, match="Expected argument `device`"):
        roar_plan(make_pl, small, [ORACLE], device=3)
    with pytest.raises(TypeError, match="Expected argument `data_version` to be a string or None, but got 2"):
        roar_plan(make_pl, small, [ORACLE], data_version=2)
    with pytest.raises(ValueError, match="Expected argument `shard_size` to be an int >= 1, but got 0"):
        roar_plan(make_pl, small, [ORACLE], shard_size=0)
    with pytest.raises(TypeError, match=r"Expected argument `augment` to be a callable \(image -> image\)"):
        roar_plan(make_pl, small, [ORACLE], augment="flip")
    with pytest.raises(TypeError, match=r"Expected argument `keep` to be True or False, but got 'yes'"):
        roar_plan(make_pl, small, [ORACLE], keep="yes")  # issue #24: a truthy string would have run KAR


class Flip:
    """A random horizontal flip that records what it is given (module level: picklable)."""

    seen: list = []

    def __call__(self, image):
        Flip.seen.append(image.clone())
        return image.flip(-1) if torch.rand(()) < 0.5 else image


class Jittered(OracleData):
    """The oracle data whose training images get fresh noise at every read, as a random augmentation would."""

    def __init__(self):
        super().__init__(sizes=(64, 16, 32))
        base = self.splits["train"]

        class Noisy(Dataset):
            def __len__(self):
                return len(base)

            def __getitem__(self, index):
                x, y = base[index]
                return x + 0.01 * torch.randn_like(x), y

        self.splits["train"] = Noisy()


def test_augmentation_comes_after_the_mask_on_the_deterministic_view(tmp_path):
    """Issue #22: a dataset with random transforms is refused by name; with the random part passed as ``augment``,
    each training image is masked on the deterministic view (the oracle's region holds exactly the training mean when
    the augmentation sees it), then augmented; the test split is not; the base model trains on augmented images too."""
    with pytest.raises(ValueError, match="'train' dataset to return the same item.*`augment=`"):
        roar_plan(make_pl, Jittered(), [ORACLE], cache_dir=tmp_path / "jitter", **SETTINGS)
    data = OracleData(sizes=(128, 32, 64))
    Flip.seen.clear()
    settings = {**SETTINGS, "fractions": (0.25,), "trainer_kwargs": {**TRAINER, "max_epochs": 1}}
    plan = roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, augment=Flip(), **settings)
    mean = plan._job.imputer.mean
    assert len(Flip.seen) == 128 and not any(torch.any(x[0] == mean) for x in Flip.seen)  # the base model's, unmasked
    Flip.seen.clear()
    plan.run(0)
    assert len(Flip.seen) == 128  # every training image of the one epoch, no test image
    assert all(torch.all(x[0, REGION] == mean) and not torch.any(x[0, ~REGION] == mean) for x in Flip.seen)
    plain = roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, **settings)
    assert plain.runs[0].key != plan.runs[0].key  # the augmentation is part of the run's key


def test_a_wrapped_user_model_ranks_and_keys_like_the_module(tmp_path):
    """roar(model=DataParallel(m)) or a compiled m: the same run keys and rankings as m itself, m unchanged."""
    data = OracleData(sizes=(64, 16, 32))
    model = make_pl()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {**SETTINGS, "fractions": (0.5,), "cache_dir": tmp_path}
    plain = roar_plan(make_pl, data, ["saliency"], model=model, **settings)
    for wrapped in (torch.nn.DataParallel(model), torch.compile(model, backend="eager")):
        again = roar_plan(make_pl, data, ["saliency"], model=wrapped, **settings)
        assert [r.key for r in again.runs] == [r.key for r in plain.runs]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "damage",
    [
        "[]",
        "{}",
        '{"key": "K", "accuracy": NaN}',
        '{"key": "K", "accuracy": 7.5}',
        "other run",
        "folder",
        "\x00garbage",
    ],
)
def test_a_damaged_record_is_quarantined_and_retrained(sweep, tmp_path, damage):
    """Issue #24's cache faults, for records: whatever is written under a run's key, collect() refuses to count it
    (naming the run), the file is moved aside with a warning naming it, and execute() retrains just that run: the
    table equals the clean one."""
    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path)
    plan = roar_plan(make_pl, OracleData(), [ORACLE], cache_dir=tmp_path, compute=False, **SETTINGS)
    records = {i: plan.run(i) for i in range(len(plan))}
    path = cache.record_path(tmp_path, plan.runs[1].key)
    if damage == "folder":
        path.unlink()
        path.mkdir()
    elif damage == "other run":
        path.write_text(json.dumps(records[0]))
    else:
        path.write_text(damage.replace("K", plan.runs[1].key))
    with (
        pytest.warns(RuntimeWarning, match=f"{path.name}.*moved to"),
        pytest.raises(RuntimeError, match=r"1 of 4 runs .*: indices 1\."),
    ):
        plan.collect()
    assert not path.exists() and len(list((tmp_path / "runs" / "quarantine").iterdir())) == 1
    assert plan.execute(progress=False).accuracy == reference.accuracy


@pytest.mark.parametrize("damage", ["truncated", "int64", "rows", "width", "garbage"])
def test_a_damaged_ranking_shard_is_quarantined_and_recomputed(sweep, tmp_path, damage):
    """Issue #24's cache faults, for rankings: a shard file that is not what its name says (cut short, another dtype,
    row count or width, garbage) is moved aside with a warning, counted as missing, refused to a run, and recomputed
    by execute() with exactly its former positions; the oracle's accuracies equal the clean ones."""
    import numpy as np

    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path, rankings=False)
    plan = roar_plan(make_pl, OracleData(), [ORACLE], cache_dir=tmp_path, compute=False, shard_size=100, **SETTINGS)
    for j in range(len(plan.shards)):  # several shards a folder: a wrong width shows against the others
        plan.rank(j)
    path = plan.shards[0].path
    good = np.load(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "garbage":
        path.write_bytes(b"\x93NUMPY garbage")
    else:
        bad = {"int64": good.astype(np.int64), "rows": good[:-1], "width": good[:, :-1]}[damage]
        np.save(path, bad)
    with pytest.warns(RuntimeWarning, match=f"{path.name}.*moved to"):
        assert plan.missing_rankings() == [0]
    with pytest.raises(FileNotFoundError, match="shards are missing"):
        plan.run(0)
    assert plan.execute(progress=False).accuracy["oracle"] == reference.accuracy["oracle"]
    assert np.array_equal(np.load(path), good)  # recomputed: the same positions
