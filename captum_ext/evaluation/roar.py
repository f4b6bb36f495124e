"""ROAR and KAR (Hooker et al., NeurIPS 2019): remove (or keep) each method's top-ranked pixels, retrain from
scratch with Lightning, and compare the test accuracy with a random ranking's.

The benchmark is a plan (:func:`roar_plan`: base model and rankings on disk, one run per (method, fraction,
repeat)) whose runs any process that sees the cache folder can execute: here, on an executor (processes, Ray,
Dask, Slurm through submitit, see :mod:`captum_ext.evaluation.executors`), in a Slurm job array, or from several
drivers at once. Each run's seed is derived from (seed, method, fraction, repeat), each finished run has its own
record file, and a run is trained by whoever claims it first (:mod:`captum_ext.evaluation.claims`), so results
depend neither on order nor on where runs execute, and a rerun resumes.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import time
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captum_ext._checks import check_bool, check_int, check_seed
from captum_ext._model import accuracy, unwrap_model
from captum_ext._seeds import derived_seed
from captum_ext.evaluation import cache, claims, ranking, retraining
from captum_ext.evaluation._common import check_fractions
from captum_ext.evaluation.results import ROARResult
from captum_ext.evaluation.retraining import Job, PlannedRun, RankedMaskDataset
from captum_ext.explainer import Explainer, as_explainer, canonical
from captum_ext.imputation import MeanImputer
from captum_ext.models import QUIET_TRAINER_KWARGS

__all__ = ["roar", "kar", "roar_plan", "ROARPlan", "RankedMaskDataset", "DEFAULT_TRAINER_KWARGS"]

#: What ``trainer_kwargs=None`` means; a given ``trainer_kwargs`` is applied on top of these.
DEFAULT_TRAINER_KWARGS: dict[str, Any] = {**QUIET_TRAINER_KWARGS, "max_epochs": 5, "num_sanity_val_steps": 0}

_SPLITS = ("train", "val", "test")
#: Part of every run's cache key; bumped when the same settings would give a different run (2: the imputer fills a
#: batch per call, which changes where ``NoisyLinearImputer``'s noise lands; 3: rankings break ties alike for every
#: image; 4: one record file per run, the training order from ``RunSampler``).
_RESULTS_FORMAT = 4
#: Part of every ranking's key: 2 since ties are broken by one permutation for every image (batch-independent); 3: a
#: folder of uint16 shards.
_RANKING_FORMAT = 3
#: Seconds between two looks at the cache while every missing run is trained by workers elsewhere.
_POLL_S = 2.0
#: Seconds between two looks at a run's record and claim while a job-array task waits for a run held elsewhere.
_WAIT_S = 15.0


class ROARPlan:
    """A prepared ROAR / KAR benchmark: the base model and every ranking are on disk, the runs are listed, and each
    run can be executed by any process that sees ``cache_dir`` (a Slurm array task, a Ray or Dask worker, a second
    driver), in any order, any number of times: the first to claim a run trains it, a finished run is skipped.

    Made by :func:`roar_plan`; :func:`roar` and :func:`kar` are ``roar_plan(...).execute(executor)``.

    Attributes:
        runs: the :class:`~captum_ext.evaluation.retraining.PlannedRun` of every (method, fraction, repeat), in a
            fixed order (methods as given, then ``"random"``; fractions; repeats): ``run(i)`` executes ``runs[i]``.
        baseline_accuracy: test accuracy of the base model on unmodified data.
        keep: False for ROAR, True for KAR.
        cache_dir: the absolute cache folder.

    Example::

        >>> import tempfile
        >>> from captum_ext.data import CleverHansDigits
        >>> from captum_ext.models import small_cnn_module
        >>> quick = {"max_epochs": 1, "limit_train_batches": 2}
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     plan = roar_plan(small_cnn_module, CleverHansDigits(), ["saliency"], fractions=(0.5,), repeats=2,
        ...                      trainer_kwargs=quick, cache_dir=cache, progress=False)
        ...     first = plan.run(0)                  # e.g. one Slurm array task
        ...     missing = plan.missing()
        ...     result = plan.execute(progress=False)  # the rest
        >>> len(plan), missing, sorted(result.accuracy)
        (4, [1, 2, 3], ['random', 'saliency'])
    """

    def __init__(
        self, job: Job, runs: list[PlannedRun], baseline_accuracy: float, shards: list[ranking.RankShard], base: str
    ):
        self._job, self.runs, self.baseline_accuracy, self.shards = job, runs, baseline_accuracy, shards
        self.keep, self.cache_dir = job.keep, Path(job.cache_dir)
        self._base = base  # the base model's weights file (unused when the plan ranks with the user's model)

    def __len__(self) -> int:
        return len(self.runs)

    def __repr__(self) -> str:
        return (
            f"ROARPlan({'KAR' if self.keep else 'ROAR'}, {len(self)} runs, {len(self.missing())} missing, "
            f"{len(self.shards)} ranking shards, {len(self.missing_rankings())} missing, "
            f"cache_dir={str(self.cache_dir)!r})"
        )

    def describe(self) -> list[dict[str, Any]]:
        """One plain dict per run (index, method, fraction, repeat, seed, key, done), e.g. for ``plan.json``."""
        recorded = cache.recorded_keys(self.cache_dir)
        return [
            {
                "index": i,
                "method": r.method,
                "fraction": r.fraction,
                "repeat": r.repeat,
                "seed": r.seed,
                "key": r.key,
                "done": r.key in recorded,
            }
            for i, r in enumerate(self.runs)
        ]

    def missing(self) -> list[int]:
        """Indices of the runs without a record yet (one directory listing, not one look per run)."""
        recorded = cache.recorded_keys(self.cache_dir)
        return [i for i, run in enumerate(self.runs) if run.key not in recorded]

    def missing_rankings(self) -> list[int]:
        """Indices into :attr:`shards` of the ranking shards not on disk yet, or damaged (quarantined with a warning:
        :meth:`captum_ext.evaluation.cache.Rankings.checked_shards`); one listing per ranking folder."""
        folders = {s.folder for s in self.shards}
        present = {folder: set(cache.Rankings(folder).checked_shards()) for folder in folders}
        return [j for j, s in enumerate(self.shards) if (s.start, s.stop) not in present[s.folder]]

    def rank(self, index: int, progress: bool = False) -> str:
        """Compute ranking shard ``index`` here (unless it is on disk), on the plan's device; returns its path. What
        a ``--rank-index`` array task or an executor's worker does; shards are disjoint, so any number can run at
        once."""
        check_int("index", index, 0)
        if index >= len(self.shards):
            raise ValueError(
                f"Expected argument `index` to be below the plan's {len(self.shards)} ranking shards, but got {index}."
            )
        return ranking.compute_shard(self._job, self.shards[index], self._base, progress)

    def run(self, index: int, wait: bool = False) -> dict[str, Any] | None:
        """Execute run ``index`` here, unless it is recorded (returns its record). A run claimed by a live worker
        elsewhere returns None, or with ``wait`` is waited for (a look every 15 s at its record and claim): its record
        when that worker writes one, or trained here once the claim expires (a dead worker's; a requeued Slurm task's
        predecessor's at once). What a job-array task must do: never end without a record while the run is
        unrecorded."""
        check_int("index", index, 0)
        if index >= len(self.runs):
            raise ValueError(
                f"Expected argument `index` to be below the plan's {len(self.runs)} runs, but got {index}."
            )
        run, folder = self.runs[index], self.cache_dir / "runs"
        while True:
            record = retraining.execute(self._job, run)
            if record is not None or not wait:
                return record
            while cache.read_record(self.cache_dir, run.key) is None and claims.held_elsewhere(folder, run.key):
                time.sleep(_WAIT_S)

    def collect(self) -> ROARResult:
        """The result from the records; a RuntimeError naming the missing run indices when some have not finished."""
        records = [cache.read_record(self.cache_dir, run.key) for run in self.runs]
        missing = [i for i, record in enumerate(records) if record is None]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
            raise RuntimeError(
                f"{len(missing)} of {len(self.runs)} runs have no record yet in {self.cache_dir}: "
                f"indices {shown}. Execute them (run(i), execute(), or --run-index), then collect."
            )
        table: dict[str, dict[float, list[float]]] = {}
        for run, record in zip(self.runs, records):
            accuracy = cast(dict[str, Any], record)["accuracy"]  # none missing: checked above
            table.setdefault(run.method, {}).setdefault(run.fraction, []).append(float(accuracy))
        return ROARResult(table, self.baseline_accuracy, keep=self.keep)

    def execute(self, executor: concurrent.futures.Executor | None = None, progress: bool = True) -> ROARResult:
        """Compute the missing ranking shards, execute every missing run (here, one after another, or on
        ``executor``), wait for those that other workers hold, and :meth:`collect`. An executor with ``share``
        (:mod:`captum_ext.evaluation.executors`) receives the datasets once; the job is checked to be picklable by the
        executor's serializer before anything is submitted.
        """
        _check_executor(executor, self._job)
        for run in self.runs:  # a damaged record is quarantined here and its run trained below
            cache.read_record(self.cache_dir, run.key)
        missing, unranked = self.missing(), self.missing_rankings()
        shared: Any = self._job
        if executor is not None and (missing or unranked):
            _check_sendable(self._job, executor, list({s.method: s.explainer for s in self.shards}.values()))
            if hasattr(executor, "share"):
                shared = executor.share(self._job)
        if executor is None:
            _rank_here(self, progress)  # under DDP every rank takes part, whatever it sees on disk
        elif unranked:  # each shard a task on a worker
            ranked = [executor.submit(ranking.compute_shard, shared, self.shards[j], self._base) for j in unranked]
            for done in tqdm(ranked, desc="ranking shards", disable=not progress):
                done.result()
        title = "KAR" if self.keep else "ROAR"
        with tqdm(
            total=len(self.runs),
            initial=len(self.runs) - len(missing),
            desc=f"{title} retraining",
            disable=not progress,
        ) as bar:
            while missing:
                held = claims.live_keys(self.cache_dir / "runs")
                free = [self.runs[i] for i in missing if self.runs[i].key not in held]
                if free:
                    if executor is None:
                        records = (retraining.execute(shared, run) for run in free)
                    else:
                        futures = [executor.submit(retraining.execute, shared, run) for run in free]
                        records = (future.result() for future in concurrent.futures.as_completed(futures))
                    for record in records:
                        bar.update(record is not None)
                else:  # every missing run is held by a live worker elsewhere: wait for its record
                    bar.set_postfix_str(f"waiting for {len(missing)} runs trained elsewhere")
                    time.sleep(_POLL_S)
                missing = self.missing()
                bar.n = len(self.runs) - len(missing)
                bar.refresh()
        return self.collect()


def _namespace(module: Any) -> str:
    try:
        import lightning.pytorch as lightning_pytorch

        if isinstance(module, lightning_pytorch.LightningModule):
            return "lightning.pytorch"
    except ImportError:  # pragma: no cover - lightning is optional
        pass
    import pytorch_lightning

    if isinstance(module, pytorch_lightning.LightningModule):
        return "pytorch_lightning"
    raise TypeError(
        "Expected argument `module_factory` to return a LightningModule (pytorch_lightning or lightning.pytorch), "
        f"but got {type(module).__name__}."
    )


def _loader_options(loader: DataLoader) -> dict[str, Any]:
    """The worker settings of a user's loader that ROAR's own loaders keep (nothing that changes the batches)."""
    if not loader.num_workers:
        return {"pin_memory": loader.pin_memory}
    return {
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "persistent_workers": loader.persistent_workers,
        "prefetch_factor": loader.prefetch_factor,
    }


def _split_datasets(datamodule: Any) -> tuple[dict[str, Dataset], dict[str, int], dict[str, dict[str, Any]]]:
    """The datasets, batch sizes and worker settings behind the datamodule's train / val / test loaders (val
    optional)."""
    for stage in ("fit", "test"):
        if hasattr(datamodule, "setup"):
            datamodule.setup(stage)
    datasets, batch_sizes, options = {}, {}, {}
    for split in _SPLITS:
        hook = getattr(datamodule, f"{split}_dataloader", None)
        if split == "val":
            try:  # optional: Lightning's default hook raises MisconfigurationException when it is not implemented
                loader = hook() if hook is not None else None
            except NotImplementedError:
                loader = None
            except Exception as err:
                if type(err).__name__ != "MisconfigurationException":
                    raise
                loader = None
        else:
            loader = hook() if hook is not None else None
        if isinstance(loader, DataLoader):
            datasets[split], batch_sizes[split] = loader.dataset, loader.batch_size or 1
            options[split] = _loader_options(loader)
        elif split != "val":
            raise ValueError(
                f"Expected argument `datamodule` to provide `{split}_dataloader()` returning a torch DataLoader, "
                f"but got {type(loader).__name__}."
            )
    return datasets, batch_sizes, options


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _check_arguments(module_factory, explainers, repeats, trainer_kwargs, model, seed) -> list[Explainer]:
    if not callable(module_factory):
        raise TypeError(
            f"Expected argument `module_factory` to be a callable returning a LightningModule, but got {module_factory!r}."
        )
    if isinstance(explainers, (str, Explainer)) or not isinstance(explainers, Sequence) or not explainers:
        raise ValueError(
            f"Expected argument `explainers` to be a non-empty list of Explainers or short names, but got {explainers!r}."
        )
    recipes = [as_explainer(e, "explainers") for e in explainers]
    names = [e.name for e in recipes]
    if "random" in names:
        raise ValueError(
            "Expected argument `explainers` without the name 'random': the random ranking is always included."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"Expected argument `explainers` to have unique names, but got {names}.")
    check_int("repeats", repeats, 1)
    if trainer_kwargs is not None and not isinstance(trainer_kwargs, dict):
        raise TypeError(
            f"Expected argument `trainer_kwargs` to be a dict or None, but got {type(trainer_kwargs).__name__}."
        )
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module or None, but got {type(model).__name__}.")
    check_seed(seed)
    return recipes


def _module_settings(module: Any) -> dict[str, Any]:
    """What configures a module beyond its weights: Lightning's ``hparams`` and its plain public attributes (such as
    an ``lr`` stored in ``__init__``), so a factory with another learning rate misses the cache."""
    attributes = {k: v for k, v in vars(module).items() if not k.startswith("_") and _plain(v)}
    return {"hparams": canonical(dict(getattr(module, "hparams", None) or {})), "attributes": attributes}


def _pickler(executor: Any) -> str:
    """The serializer an executor sends work with: its ``pickler`` attribute, cloudpickle for Dask's and Ray's own
    executors, pickle otherwise (``ProcessPoolExecutor``)."""
    named = getattr(executor, "pickler", None)
    if named is not None:
        return named
    return "cloudpickle" if type(executor).__module__.split(".")[0] in ("distributed", "ray") else "pickle"


def _check_sendable(job: Job, executor: Any, explainers: Sequence[Explainer]) -> None:
    """A TypeError naming the argument that ``executor`` cannot send to its workers, before anything is submitted."""
    pickler = _pickler(executor)
    dumps = importlib.import_module(pickler).dumps
    parts = {
        "module_factory": job.module_factory,
        "datamodule": job.datasets,
        "imputer": job.imputer,
        "augment": job.augment,
        "model": job.model,
        "explainers": list(explainers),
        "trainer_kwargs": job.trainer_kwargs,
    }
    for name, value in parts.items():
        try:
            dumps(value)
        except Exception as err:  # noqa: BLE001 - any pickling failure is reported the same way
            hint = (
                " (a module-level function or class, not a lambda or a local function)" if pickler == "pickle" else ""
            )
            raise TypeError(
                f"Expected argument `{name}` to be picklable{hint}, as {type(executor).__name__} sends it to its "
                f"workers with {pickler}, but pickling failed: {type(err).__name__}: {err}"
            ) from err


def _check_executor(executor: Any, job: Job) -> None:
    if executor is not None and not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(
            "Expected argument `executor` to be a concurrent.futures.Executor or None (wrap Ray, Dask or submitit "
            f"with captum_ext.evaluation.executors), but got {type(executor).__name__}."
        )
    if executor is not None and job.trainer_kwargs.get("strategy") == "ddp":
        raise ValueError(
            "Expected `trainer_kwargs` without strategy='ddp' when an `executor` runs the retrainings: Lightning's ddp "
            "re-runs the worker's own command for each rank. Use strategy='ddp_spawn' on an executor, or ddp without one."
        )


def _base_model(job: Job, path: Path, seed: int, compute: bool) -> nn.Module:
    """The base module trained on unmodified data (cached at ``path``). Under DDP rank 0 saves it and every rank
    loads that file: ranks may differ in what DDP does not synchronise (BatchNorm's running statistics), and all must
    derive the same fingerprints and run keys from it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = job.module_factory()
        if path.exists():
            return cache.load_weights(module, path)
        _require(compute, path)
        views = dict(job.datasets)
        if job.augment is not None:
            views["train"] = retraining.AugmentedDataset(views["train"], job.augment)
        fitter = retraining.fit(job, module, retraining.loaders(job, views, seed))
    retraining.after_rank_zero(
        fitter, lambda: cache.save_weights(module, path), lambda: cache.load_weights(module, path)
    )
    return module


def _require(compute: bool, path: Path) -> None:
    if not compute:
        raise FileNotFoundError(
            f"Expected {path} in the cache (compute=False): prepare the plan first, with roar_plan(...) or "
            "`captum-ext roar --config FILE --plan`, on the same settings and cache_dir."
        )


def _check_signature(signature: dict[str, Any], manifest: dict[str, Any], path: Path) -> None:
    """A ValueError naming the split whose length or sampled items differ from what the plan recorded."""
    for split in sorted(set(signature) | set(manifest["signature"])):
        now, then = signature.get(split), manifest["signature"].get(split)
        if now == then:
            continue
        if now is None or then is None:
            what = "is missing" if now is None else "is new"
        elif now["length"] != then["length"]:
            what = f"has {now['length']} items, the plan's {then['length']}"
        else:
            what = "differs from the plan's in its sampled items"
        raise ValueError(
            f"Expected the data of the plan in {path}, but the {split!r} split {what}: prepare the plan again "
            "(roar_plan(...) or `captum-ext roar --plan`) after changing the data, or set `data_version`."
        )


def _check_deterministic(datasets: dict[str, Dataset], signature: dict[str, Any]) -> None:
    """A ValueError naming the split whose sampled items change from one read to the next (random augmentation):
    rankings, masks and fingerprints need the deterministic view, with the random part passed as ``augment``."""
    again = cache.data_signature(datasets)
    for split in sorted(signature):
        if again[split] != signature[split]:
            raise ValueError(
                f"Expected the datamodule's {split!r} dataset to return the same item for the same index, but two "
                "reads differ (random augmentation?): give ROAR the deterministic dataset (decode, resize, centre "
                "crop, normalise) and pass the random transforms as `augment=`, which are applied to the training "
                "images after masking."
            )


def _rank_here(plan: ROARPlan, progress: bool) -> None:
    """Compute the plan's missing ranking shards in this process, or under DDP this rank's share of them (shard ``j``
    on rank ``j % world``) followed by a barrier; a RuntimeError when shards are still missing afterwards."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    missing = set(plan.missing_rankings())
    mine = [j for j in range(rank, len(plan.shards), world) if j in missing]
    for j in tqdm(mine, desc="ranking shards", disable=not progress or len(mine) < 2):
        plan.rank(j, progress=progress)
    if distributed and world > 1:
        torch.distributed.barrier()
    left = plan.missing_rankings()
    if left:
        raise RuntimeError(f"{len(left)} ranking shards are still missing after the ranking pass: indices {left[:20]}.")


def roar_plan(
    module_factory: Callable[[], Any],
    datamodule: Any,
    explainers: Sequence[Explainer | str],
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    repeats: int = 3,
    imputer: Callable | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    cache_dir: str | os.PathLike = "roar_cache",
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    keep: bool = False,
    compute: bool = True,
    rank: bool = True,
    device: str | torch.device | None = None,
    data_version: str | None = None,
    shard_size: int = 8192,
    augment: Callable | None = None,
) -> ROARPlan:
    """Prepare a ROAR (or KAR, ``keep=True``) benchmark without retraining anything: train or load the base model,
    record the plan's manifest, compute or find every ranking, list the runs. The arguments are :func:`roar`'s; in
    addition:

    Args:
        keep: KAR instead of ROAR. Default False.
        compute: Read the whole dataset (fingerprint, training mean), train the base model and test it, and record
            all of it in the plan's manifest ``plan_<key>.json``. With False (a job-array task, a collecting step)
            nothing is computed: the manifest is read and the data checked only by its signature (split lengths and
            a fixed sample of items), so the cost does not grow with the dataset; a missing manifest is a
            FileNotFoundError, data that no longer match it a ValueError. Default True.
        rank: With ``compute``, also compute the missing ranking shards here (each DDP rank its share). With False
            they are left to :meth:`ROARPlan.rank` (``--rank-index``) or :meth:`ROARPlan.execute`. Default True.
        device: Where the rankings and the test accuracies run. Default None: the device of the trainer's
            ``accelerator`` (:func:`captum_ext.evaluation.ranking.resolve_device`), not the CPU Lightning leaves
            a fitted module on.
        data_version: Your label for the data (e.g. ``"imagenet-2012-v2"``); part of the plan's key, so changing it
            makes tasks refuse an old plan even where the sampled items are unchanged. Default None.
        shard_size: Images per ranking shard, the unit of distributed ranking work. Default 8192.

    Returns:
        a :class:`ROARPlan`; ``len(plan)`` runs, each executed by ``plan.run(i)`` wherever ``cache_dir`` is visible.
    """
    recipes = _check_arguments(module_factory, explainers, repeats, trainer_kwargs, model, seed)
    check_bool("keep", keep)
    fractions = check_fractions(fractions)
    chosen_device = ranking.check_device(device)
    if data_version is not None and not isinstance(data_version, str):
        raise TypeError(f"Expected argument `data_version` to be a string or None, but got {data_version!r}.")
    check_int("shard_size", shard_size, 1)
    if augment is not None and not callable(augment):
        raise TypeError(f"Expected argument `augment` to be a callable (image -> image) or None, but got {augment!r}.")
    model = unwrap_model(model) if model is not None else None  # compile / DDP wrappers: the weights' own names
    recipes.append(Explainer("random", seed=seed))
    folder = Path(cache_dir).resolve()  # workers may start elsewhere: every path they get is absolute
    folder.mkdir(parents=True, exist_ok=True)
    cache.remove_stale_temporaries(folder)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = module_factory()
    namespace = _namespace(probe)
    factory_fp = cache.digest(
        type(probe).__module__, type(probe).__qualname__, cache.weights_fingerprint(probe), _module_settings(probe)
    )
    datasets, batch_sizes, loader_options = _split_datasets(datamodule)
    settings = {**DEFAULT_TRAINER_KWARGS, **(trainer_kwargs or {})}
    trainer_key = {k: v for k, v in settings.items() if _plain(v)}  # callbacks, loggers: not part of the key
    given_fp = cache.weights_fingerprint(model) if model is not None else None
    plan_key = cache.digest(
        "plan", _RESULTS_FORMAT, namespace, factory_fp, batch_sizes, trainer_key, seed, given_fp, data_version, augment
    )
    manifest_path = folder / f"plan_{plan_key[:24]}.json"
    signature = cache.data_signature(datasets)
    manifest = cache.read_manifest(manifest_path)
    if compute:  # 1. the data read once, the base model, its accuracy: recorded in the manifest
        _check_deterministic(datasets, signature)
        data_fp, train_mean = cache.data_fingerprint(datasets, batch_size, loader_options)
    elif manifest is None:
        _require(False, manifest_path)
    else:
        _check_signature(signature, manifest, manifest_path)
        data_fp, train_mean = manifest["data_fingerprint"], torch.tensor(manifest["train_mean"], dtype=torch.float32)
    imputer = imputer if imputer is not None else MeanImputer(train_mean)
    job = Job(
        module_factory,
        namespace,
        datasets,
        batch_sizes,
        imputer,
        keep,
        settings,
        str(folder),
        loader_options,
        None if chosen_device is None else str(chosen_device),
        batch_size,
        seed,
        augment,
        model,
    )
    base_key = cache.digest(
        "base", _RESULTS_FORMAT, namespace, factory_fp, data_fp, batch_sizes, trainer_key, seed, augment
    )
    base_path = folder / f"base_{base_key[:24]}.pt"
    if compute:
        on = ranking.resolve_device(job.device, settings)
        ranker = ranking.on_device(model, on) if model is not None else _base_model(job, base_path, seed, True).to(on)
        base_fp = given_fp or cache.weights_fingerprint(ranker)
        recorded = (manifest["data_fingerprint"], manifest["base_fingerprint"]) if manifest is not None else None
        if manifest is not None and recorded == (data_fp, base_fp):  # tested already: the same data and weights
            baseline = float(manifest["baseline_accuracy"])
        else:
            baseline = accuracy(ranker, DataLoader(datasets["test"], batch_size=batch_size, **loader_options["test"]))
        cache.write_manifest(
            manifest_path,
            {
                "signature": signature,
                "data_fingerprint": data_fp,
                "train_mean": [float(v) for v in train_mean],
                "base_fingerprint": base_fp,
                "baseline_accuracy": baseline,
            },
        )
    else:
        manifest = cast(dict, manifest)
        base_fp, baseline = manifest["base_fingerprint"], float(manifest["baseline_accuracy"])

    # 2. every ranking's folder and shards (the images of one split, cut every shard_size images)
    shards: list[ranking.RankShard] = []
    rankings: dict[str, dict[str, str]] = {}
    ranking_keys: dict[str, dict[str, str]] = {}  # part of the run keys: a run is trained on these rankings
    for recipe in recipes:
        rankings[recipe.name], ranking_keys[recipe.name] = {}, {}
        for split, dataset in datasets.items():
            key = cache.digest(
                "ranking", _RANKING_FORMAT, base_fp, recipe.fingerprint(), data_fp, split, seed, shard_size
            )
            place = str(folder / f"rank_{key[:24]}")
            rankings[recipe.name][split], ranking_keys[recipe.name][split] = place, key
            for start, stop in cache.shard_ranges(len(cast(Sized, dataset)), shard_size):
                shards.append(ranking.RankShard(recipe.name, recipe, split, start, stop, place))

    setup = cache.digest(
        _RESULTS_FORMAT,
        "keep" if keep else "roar",
        namespace,
        factory_fp,
        data_fp,
        batch_sizes,
        base_fp,
        imputer,
        augment,
        trainer_key,
        seed,
    )
    runs = [  # 3. one run per (method, fraction, repeat)
        PlannedRun(
            cache.digest(setup, recipe.name, recipe.fingerprint(), ranking_keys[recipe.name], repr(f), r),
            recipe.name,
            f,
            r,
            derived_seed(seed, recipe.name, repr(float(f)), r),
            rankings[recipe.name],
        )
        for recipe in recipes
        for f in fractions
        for r in range(repeats)
    ]
    plan = ROARPlan(job, runs, baseline, shards, str(base_path))
    if compute and rank:
        _rank_here(plan, progress)
    return plan


_ARGS_DOC = """
    Args:
        module_factory: returns a fresh, untrained ``LightningModule`` (of ``pytorch_lightning`` or
            ``lightning.pytorch``; that namespace's ``Trainer`` is used). Its weights, ``hparams`` and plain public
            attributes (an ``lr`` set in ``__init__``) enter the cache key. Must be picklable for an ``executor``.
        datamodule: provides ``train_dataloader()``, ``test_dataloader()`` and optionally ``val_dataloader()``;
            their datasets (items ``(image, label, ...)``) and batch sizes are used, all three splits masked.
        explainers: :class:`~captum_ext.Explainer` objects or short names with unique names; ``"random"`` is
            reserved (a seeded random ranking is always added under that name).
        fractions: Fractions of pixels removed (ROAR) or kept (KAR). Default (0.1, 0.3, 0.5, 0.7, 0.9).
        repeats: Retrainings per (method, fraction). Default 3.
        imputer: Fills removed pixels. Default ``MeanImputer`` with the per-channel training mean.
        trainer_kwargs: Keyword arguments for each ``Trainer`` (GPU, DDP, epochs...), applied over
            :data:`DEFAULT_TRAINER_KWARGS` (5 epochs, no logger, no checkpoints, no progress bar); deep-copied
            for each run. Only plain values (numbers, strings, lists) enter the cache key, not callbacks or
            loggers. With ``strategy="ddp"`` or ``"ddp_spawn"`` and ``devices=N`` each run trains on N processes,
            only global rank 0 tests and records it, and the run's seed still decides the shuffle (each rank reads
            its share of :class:`~captum_ext.evaluation.retraining.RunSampler`'s order; ``use_distributed_sampler``
            is always False). The effective batch is N times the loader's, so results differ from ``devices=1``.
        model: A trained model to rank pixels with and report as the baseline, left unchanged. Default None:
            train ``module_factory()`` on the unmodified data (cached in ``cache_dir``).
        cache_dir: Rankings, the base model and one record per run (``runs/<key>.json``) live here; made absolute, so
            workers that start in another directory find it. Share it (a network filesystem) with every worker.
            Default ``"roar_cache"``.
        seed: Seeds the base model, the tie-breaking jitter, the random ranking and (with method, fraction and
            repeat) every run. Default 0.
        executor: A ``concurrent.futures.Executor`` to run the retrainings concurrently, or None to run them one after
            another here. The adapters of :mod:`captum_ext.evaluation.executors` (``ProcessPool``, ``RayExecutor``,
            ``DaskExecutor``, ``SubmititExecutor`` for Slurm) send the datasets once per worker. Default None.
        batch_size: Images per batch when computing the rankings. Default 256.
        progress: Show tqdm progress bars. Default True.
        device: Where the rankings and test accuracies run. Default None: the trainer's accelerator
            (``trainer_kwargs["accelerator"]``, ``"auto"`` meaning CUDA when available), never silently the CPU that
            Lightning leaves a fitted module on.
        augment: Random transforms (image -> image, e.g. a torchvision ``RandomResizedCrop`` + flip) applied to the
            training images after masking. The datamodule's datasets must then be deterministic (decode, resize,
            centre crop, normalise): rankings, masks and the data's fingerprint are computed on that view, and a
            dataset whose items change between reads is refused. Part of the run keys. Default None.

    Returns:
        :class:`ROARResult` with ``accuracy[method][fraction]`` (one entry per repeat) and ``baseline_accuracy``.

    Raises:
        ValueError: empty or duplicate ``explainers``, the name ``"random"``, bad ``fractions`` or ``repeats``, a
            datamodule without train or test loaders.
        TypeError: a factory that does not return a LightningModule, a non-Executor ``executor``, a job the
            executor cannot pickle (named before anything is submitted).
"""


def roar(
    module_factory: Callable[[], Any],
    datamodule: Any,
    explainers: Sequence[Explainer | str],
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    repeats: int = 3,
    imputer: Callable | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    cache_dir: str | os.PathLike = "roar_cache",
    seed: int = 0,
    executor: concurrent.futures.Executor | None = None,
    batch_size: int = 256,
    progress: bool = True,
    device: str | torch.device | None = None,
    augment: Callable | None = None,
) -> ROARResult:
    """Does removing a method's top-ranked pixels hurt a retrained model more than removing random pixels?

    Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks", NeurIPS 2019 (ROAR).
    The base model is trained on unmodified data (or ``model`` is used); each method ranks the pixels of every
    train, validation and test image by its ``"sum_abs"`` map for the true label; for each (method, fraction,
    repeat) a fresh module is trained on the data with the top pixels imputed and its test accuracy recorded.
    A rerun with the same ``cache_dir`` skips every finished run.
    {args}
    Example::

        >>> import tempfile
        >>> from captum_ext.data import CleverHansDigits
        >>> from captum_ext.models import ClassifierModule, SmallCNN
        >>> quick = {{"max_epochs": 1, "limit_train_batches": 2}}  # a smoke run; see docs/roar.md for real settings
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     result = roar(lambda: ClassifierModule(SmallCNN()), CleverHansDigits(), ["saliency"], fractions=(0.5,),
        ...                   repeats=1, trainer_kwargs=quick, cache_dir=cache, progress=False)
        >>> sorted(result.accuracy)
        ['random', 'saliency']
    """
    plan = roar_plan(
        module_factory,
        datamodule,
        explainers,
        fractions,
        repeats,
        imputer,
        trainer_kwargs,
        model,
        cache_dir,
        seed,
        batch_size,
        progress,
        keep=False,
        rank=executor is None,  # on an executor, each ranking shard is a task too
        device=device,
        augment=augment,
    )
    return plan.execute(executor, progress)


def kar(
    module_factory: Callable[[], Any],
    datamodule: Any,
    explainers: Sequence[Explainer | str],
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    repeats: int = 3,
    imputer: Callable | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    cache_dir: str | os.PathLike = "roar_cache",
    seed: int = 0,
    executor: concurrent.futures.Executor | None = None,
    batch_size: int = 256,
    progress: bool = True,
    device: str | torch.device | None = None,
    augment: Callable | None = None,
) -> ROARResult:
    """Does keeping only a method's top-ranked pixels preserve a retrained model's accuracy better than random?

    Hooker et al., NeurIPS 2019 (KAR, "keep and retrain"): as :func:`roar`, but the top ``fraction`` of pixels is
    kept and the rest imputed; higher accuracy is better. Results share ``cache_dir`` with ROAR under their own keys.
    {args}
    Example::

        >>> import tempfile
        >>> from captum_ext.data import CleverHansDigits
        >>> from captum_ext.models import ClassifierModule, SmallCNN
        >>> quick = {{"max_epochs": 1, "limit_train_batches": 2}}
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     result = kar(lambda: ClassifierModule(SmallCNN()), CleverHansDigits(), ["saliency"], fractions=(0.1,),
        ...                  repeats=1, trainer_kwargs=quick, cache_dir=cache, progress=False)
        >>> result.keep, sorted(result.accuracy["saliency"])
        (True, [0.1])
    """
    plan = roar_plan(
        module_factory,
        datamodule,
        explainers,
        fractions,
        repeats,
        imputer,
        trainer_kwargs,
        model,
        cache_dir,
        seed,
        batch_size,
        progress,
        keep=True,
        rank=executor is None,  # on an executor, each ranking shard is a task too
        device=device,
        augment=augment,
    )
    return plan.execute(executor, progress)


if roar.__doc__ is not None and kar.__doc__ is not None:  # None under ``python -OO``, which strips docstrings
    roar.__doc__ = roar.__doc__.format(args=_ARGS_DOC)
    kar.__doc__ = kar.__doc__.format(args=_ARGS_DOC)
