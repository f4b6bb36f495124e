"""Scale-out (issue #15): a ROAR plan executed anywhere, claims shared by several drivers, the executors for local
processes, Ray, Dask and submitit, and Lightning DDP inside each retraining. Every parallel or distributed result
is compared with the sequential sweep of ``test_roar`` (the same oracle data, seeds and settings)."""

# ruff: noqa: F811  (the fixtures data and sweep are imported from test_roar)

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import pytorch_lightning as pl
import torch
from test_roar import (  # noqa: F401
    ORACLE,
    SIDE,
    TRAINER,
    OracleData,
    _Linear,
    data,
    make_pl,
    one_thread,
    reuse_cache,
    sweep,
)

from captum_ext.evaluation import claims, roar, roar_plan
from captum_ext.evaluation.executors import DaskExecutor, ProcessPool, RayExecutor, SubmititExecutor
from captum_ext.evaluation.retraining import Job, RunSampler

TESTS = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {"fractions": (0.3, 0.6), "repeats": 1, "trainer_kwargs": TRAINER, "progress": False}
ONE_FRACTION = {**SETTINGS, "fractions": (0.3,)}  # 2 runs: enough to run on two workers at once


def _at_03(result) -> dict:
    return {method: per[0.3] for method, per in result.accuracy.items()}


def test_plan_runs_in_any_order_then_collects_the_sequential_table(data, sweep, tmp_path):
    reference, folder, _ = sweep
    with pytest.raises(FileNotFoundError, match="--plan"):  # a job-array task never trains the base model itself
        roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path / "empty", compute=False, **SETTINGS)
    reuse_cache(folder, tmp_path)
    plan = roar_plan(make_pl, data, [ORACLE], cache_dir=tmp_path, compute=False, **SETTINGS)
    assert [(r.method, r.fraction) for r in plan.runs] == [
        ("oracle", 0.3),
        ("oracle", 0.6),
        ("random", 0.3),
        ("random", 0.6),
    ]
    with pytest.raises(RuntimeError, match="4 of 4 runs .* indices 0, 1, 2, 3"):
        plan.collect()
    _Linear.seen.clear()
    records = {i: plan.run(i) for i in (3, 1, 0, 2)}  # as four array tasks would, in any order
    assert plan.missing() == [] and plan.run(1) == records[1]  # a finished run is not trained again
    assert sum(kind == "trainer" for kind, _ in _Linear.seen) == 4
    result = plan.collect()
    assert result.accuracy == reference.accuracy and result.baseline_accuracy == reference.baseline_accuracy
    assert {r["worker"] for r in records.values()} == {claims.owner()}
    with pytest.raises(ValueError, match="`index` to be below the plan's 4 runs"):
        plan.run(4)


def test_a_relative_cache_dir_becomes_absolute(data, sweep, tmp_path, monkeypatch):
    reuse_cache(sweep[1], tmp_path / "relative")
    monkeypatch.chdir(tmp_path)
    plan = roar_plan(make_pl, data, [ORACLE], cache_dir="relative", **SETTINGS)
    assert plan.cache_dir == tmp_path / "relative"
    assert all(os.path.isabs(path) for run in plan.runs for path in run.rankings.values())


class Configured(_Linear, pl.LightningModule):
    """The oracle's linear model with a learning rate, as an attribute or among Lightning's hparams."""

    def __init__(self, lr: float, as_hparam: bool = False):
        super().__init__()
        if as_hparam:
            self.save_hyperparameters()
        else:
            self.lr = lr
        self.rate = lr

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.rate)


def slow() -> Configured:
    return Configured(0.05)


def fast() -> Configured:
    return Configured(0.5)


def slow_hparam() -> Configured:
    return Configured(0.05, as_hparam=True)


def fast_hparam() -> Configured:
    return Configured(0.5, as_hparam=True)


def test_module_hyperparameters_enter_the_cache_key(data, tmp_path):
    """Issue #15: a factory with lr=0.5 silently reused the lr=0.05 results; now the base model and every run miss."""
    keys = {}
    for factory in (slow, fast, slow_hparam, fast_hparam, slow):
        plan = roar_plan(
            factory,
            data,
            [ORACLE],
            cache_dir=tmp_path,
            fractions=(0.3,),
            repeats=1,
            trainer_kwargs={**TRAINER, "max_epochs": 1},
            progress=False,
        )
        keys.setdefault(factory.__name__, set()).update(run.key for run in plan.runs)
    assert len(keys["slow"]) == 2  # the same factory twice: the same two runs
    assert len(set.union(*keys.values())) == 8 and len(list(tmp_path.glob("base_*.pt"))) == 4


def test_claims_back_off_expire_and_never_take_a_fresh_claim(tmp_path):
    first = claims.claim(tmp_path, "k")
    assert first is not None and claims.claim(tmp_path, "k") is None and claims.live_keys(tmp_path) == {"k"}
    old = time.time() - 3600
    os.utime(first.path, (old, old))  # no heartbeat for an hour: expired
    assert not claims.held_elsewhere(tmp_path, "k") and claims.live_keys(tmp_path) == set()
    second = claims.claim(tmp_path, "k")
    assert second is not None and second.path.name == "k.1.lock"
    assert claims.claim(tmp_path, "k") is None  # the new generation is live; the expired one is not broken again
    first.release(recorded=True)  # the stale worker finishes after all: it deletes its own generation, not the newer
    assert second.path.exists() and claims.claim(tmp_path, "k") is None
    second.release(recorded=False)  # failed without a record: marked expired, kept, so generations keep growing
    third = claims.claim(tmp_path, "k")
    assert third is not None and third.path.name == "k.2.lock"
    third.release(recorded=True)
    assert list(tmp_path.iterdir()) == []  # recorded: every generation up to its own is gone

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "d.0.lock").write_text(
        json.dumps({"owner": f"{claims.owner().rpartition('-')[0]}-{dead.stdout.strip()}"})
    )
    assert claims.claim(tmp_path, "d") is not None  # its owner on this host died: taken at once

    (tmp_path / "t.0.lock").write_text('{"owner": "elsewhere-12')  # cut short by a crash
    assert claims.claim(tmp_path, "t") is None  # recent: could be a writer still writing
    os.utime(tmp_path / "t.0.lock", (old, old))
    assert claims.claim(tmp_path, "t") is not None  # old: its age decides, it never blocks the run for good

    beating = claims.claim(tmp_path, "b", expiry_s=0.5)
    os.utime(beating.path, (old, old))
    with beating.beating():
        time.sleep(0.3)  # a heartbeat every 0.05 s
    assert time.time() - beating.path.stat().st_mtime < 1


DRIVER = textwrap.dedent(
    """
    import json, os, sys, time, warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, sys.argv[1])
    import pytorch_lightning as pl
    import torch
    torch.set_num_threads(1)
    from captum_ext.evaluation import roar
    from test_roar import ORACLE, TRAINER, OracleData, make_pl

    class Count(pl.Callback):
        def on_train_start(self, trainer, module):
            with open(os.path.join(sys.argv[2], "fits.txt"), "a") as handle:
                handle.write(f"{os.getpid()}\\n")
            time.sleep(0.4)

    result = roar(make_pl, OracleData(), [ORACLE], fractions=(0.3, 0.6), repeats=2,
                  trainer_kwargs={**TRAINER, "callbacks": [Count()]}, cache_dir=sys.argv[2], progress=False)
    print(json.dumps({str(k): v for k, v in result.accuracy.items()}, sort_keys=True, default=str))
    """
)


def test_two_drivers_on_one_cache_train_each_run_once(data, sweep, tmp_path):
    reuse_cache(sweep[1], tmp_path)  # the base model and rankings exist: each driver has only the 8 runs to do
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    drivers = [
        subprocess.Popen(
            [sys.executable, str(script), TESTS, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [driver.communicate(timeout=300) for driver in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert outputs[0][0] == outputs[1][0]  # both drivers report the same table
    fits = (tmp_path / "fits.txt").read_text().split()
    assert len(fits) == 8  # every run trained once, by one of the two
    reference = sweep[0].accuracy
    table = json.loads(outputs[0][0])
    assert {m: {f: v[0] for f, v in per.items()} for m, per in table.items()} == {
        m: {str(f): v[0] for f, v in per.items()} for m, per in reference.items()
    }  # repeat 0 is the sweep's run
    assert list((tmp_path / "runs").glob("*.lock")) == []


def test_a_lambda_factory_is_refused_before_anything_is_submitted(data, sweep, tmp_path):
    reuse_cache(sweep[1], tmp_path)
    with ProcessPool(workers=2, threads=1) as pool, pytest.raises(TypeError, match="`module_factory` to be picklable"):
        roar(lambda: make_pl(), data, [ORACLE], cache_dir=tmp_path, executor=pool, **SETTINGS)
    assert not (tmp_path / "runs").exists()


def _carried(executor, monkeypatch) -> list[bool]:
    """Records, for each submission, whether it carries the whole Job (datasets included) rather than a handle."""
    carried: list[bool] = []
    submit = executor.submit

    def counted(fn, shared, run):
        carried.append(isinstance(shared, Job))
        return submit(fn, shared, run)

    monkeypatch.setattr(executor, "submit", counted)
    return carried


def test_process_pool_sends_the_datasets_once_per_worker(data, sweep, tmp_path, monkeypatch):
    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path)
    with ProcessPool(workers=2, threads=1) as pool:
        carried = _carried(pool, monkeypatch)
        result = roar(make_pl, data, [ORACLE], cache_dir=tmp_path, executor=pool, **SETTINGS)
    assert result.accuracy == reference.accuracy
    assert carried == [False] * 4  # each run travels with a handle; the workers got the datasets when they started


def test_dask_adapter_matches_sequential(data, sweep, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        executor = DaskExecutor(client)
        carried = _carried(executor, monkeypatch)
        result = roar(make_pl, data, [ORACLE], cache_dir=tmp_path, executor=executor, **ONE_FRACTION)
    assert _at_03(result) == _at_03(reference) and carried == [False] * 2  # a scattered future, not the Job


def test_ray_adapter_matches_sequential(data, sweep, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": TESTS, "OMP_NUM_THREADS": "1"}},
    )
    try:
        executor = RayExecutor(num_cpus=1)
        carried = _carried(executor, monkeypatch)
        result = roar(make_pl, data, [ORACLE], cache_dir=tmp_path, executor=executor, **ONE_FRACTION)
    finally:
        ray.shutdown()
    assert _at_03(result) == _at_03(reference) and carried == [False] * 2  # an object-store reference


def test_submitit_adapter_matches_sequential(data, sweep, tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))
    reference, folder, _ = sweep
    reuse_cache(folder, tmp_path / "cache")
    local = submitit.LocalExecutor(folder=tmp_path / "jobs")
    local.update_parameters(timeout_min=10)
    with SubmititExecutor(local, poll_s=0.2) as executor:
        result = roar(make_pl, data, [ORACLE], cache_dir=tmp_path / "cache", executor=executor, **ONE_FRACTION)
        assert len(list((tmp_path / "jobs").glob("captum_ext_shared_*.pkl"))) == 1  # the datasets, written once
    assert _at_03(result) == _at_03(reference)
    assert list((tmp_path / "jobs").glob("captum_ext_shared_*.pkl")) == []  # deleted at shutdown


def test_run_sampler_shards_one_order_across_ranks(monkeypatch):
    """Under DDP each rank reads every world-th index of the run's order (padded like DistributedSampler), so the
    seed decides the shuffle and every image is read in each epoch."""
    whole = RunSampler(7, seed=5)
    whole.set_epoch(2)
    order = list(whole)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(RunSampler, "_shard", staticmethod(lambda rank=rank: (rank, 3)))
        sampler = RunSampler(7, seed=5)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(sampler) == 3
    padded = order + order[:2]
    assert shards == [padded[0::3], padded[1::3], padded[2::3]]


DDP_DRIVER = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(1)
    from captum_ext.evaluation import roar
    from test_roar import ORACLE, TRAINER, OracleData, make_bn

    if __name__ == "__main__":
        strategy, folder = sys.argv[2], sys.argv[3]
        result = roar(make_bn, OracleData(), [ORACLE], fractions=(0.3,), repeats=1, cache_dir=folder,
                      trainer_kwargs={**TRAINER, "devices": 2, "strategy": strategy}, progress=False)
        with open(os.path.join(folder, f"result_{os.environ.get('LOCAL_RANK', '0')}.json"), "w") as handle:
            json.dump({"accuracy": {m: {str(f): v for f, v in per.items()} for m, per in result.accuracy.items()},
                       "pid": os.getpid()}, handle)
    """
)


def test_ddp_and_ddp_spawn_inside_each_retraining_record_once_on_rank_zero(tmp_path):
    """Both strategies train the base model and each run on 2 processes; only rank 0 tests and records (one record
    per run, not one per rank), and both give the same accuracies: the run's seed decides each rank's share of the
    order. The module has a BatchNorm, whose running statistics differ between ranks: every rank loads rank 0's
    base model, so all derive the same rankings and run keys (one ranking file per method and split)."""
    script = tmp_path / "ddp_driver.py"
    script.write_text(DDP_DRIVER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore")
    env.pop("LOCAL_RANK", None)
    tables = {}
    for strategy in ("ddp", "ddp_spawn"):
        folder = tmp_path / strategy
        for attempt in range(2):
            done = subprocess.run(
                [sys.executable, str(script), TESTS, strategy, str(folder)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            # Seen once in five suite runs on 2 cores: a spawned rank that had finished its fit aborted at exit in
            # torch's own teardown ("terminate called without an active exception", SIGABRT). The run is then
            # repeated from an empty folder, so every assertion below still holds for one clean run.
            if done.returncode == 0 or attempt or "terminated with signal SIGABRT" not in done.stderr:
                break
            shutil.rmtree(folder)
        assert done.returncode == 0, done.stderr[-3000:]
        records = [json.loads(p.read_text()) for p in (folder / "runs").glob("*.json")]
        results = [json.loads(p.read_text()) for p in sorted(folder.glob("result_*.json"))]
        assert len(records) == 2 and {r["worker"].rpartition("-")[2] for r in records} == {str(results[0]["pid"])}
        assert len(list(folder.glob("rank_*/*.npy"))) == 6 and len(list(folder.glob("base_*.pt"))) == 1
        assert len(results) == (2 if strategy == "ddp" else 1)  # ddp re-runs the script on rank 1: same table there
        assert all(r["accuracy"] == results[0]["accuracy"] for r in results)
        tables[strategy] = results[0]["accuracy"]
    assert tables["ddp"] == tables["ddp_spawn"]
    assert tables["ddp"]["oracle"]["0.3"][0] < 0.65 < tables["ddp"]["random"]["0.3"][0]  # the oracle still works


def test_imputer_functions_key_the_runs_by_code_arguments_and_captured_values():
    """Review finding: two imputer functions (or one closure over another value) must not share a run key."""
    import functools

    from captum_ext.explainer import canonical

    def fill(images, mask, value=0.0):
        return images.masked_fill(mask[:, None], value)

    def fill_with(value):
        return lambda images, mask: images.masked_fill(mask[:, None], value)

    keys = [
        canonical(f)
        for f in (
            fill,
            functools.partial(fill, value=1.0),
            functools.partial(fill, value=2.0),
            fill_with(1.0),
            fill_with(5.0),
            lambda images, mask: images,
        )
    ]
    assert len({repr(k) for k in keys}) == len(keys)
    assert canonical(fill_with(1.0)) == canonical(fill_with(1.0))  # the same code and value: the same key
