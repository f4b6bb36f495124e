"""ROAR and KAR (Hooker et al., NeurIPS 2019): remove (or keep) each method's top-ranked pixels, retrain from
scratch with Lightning, and compare the test accuracy with a random ranking's.

The runner is resumable and parallelisable: rankings are cached on disk (keyed by fingerprints of the model
weights, the explainer recipe and the data), every finished (method, fraction, repeat) run is appended to
``cache_dir/results.jsonl`` at once, and each run's seed is derived from (seed, method, fraction, repeat), so
runs are independent of their order and of the process that executes them.
"""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import importlib
import json
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captum_ext import maps
from captum_ext._checks import check_int
from captum_ext.batches import unpack_batch, with_images
from captum_ext.evaluation import cache
from captum_ext.evaluation._common import accuracy, check_fractions
from captum_ext.evaluation.results import ROARResult
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.imputation import MeanImputer
from captum_ext.models import QUIET_TRAINER_KWARGS

__all__ = ["roar", "kar", "RankedMaskDataset", "DEFAULT_TRAINER_KWARGS"]

#: What ``trainer_kwargs=None`` means; a given ``trainer_kwargs`` is applied on top of these.
DEFAULT_TRAINER_KWARGS: dict[str, Any] = {**QUIET_TRAINER_KWARGS, "max_epochs": 5, "num_sanity_val_steps": 0}

_SPLITS = ("train", "val", "test")
#: Part of every run's cache key; bumped when the same settings would give a different run (2: the imputer fills a
#: batch per call, which changes where ``NoisyLinearImputer``'s noise lands; 3: rankings break ties alike for every
#: image).
_RESULTS_FORMAT = 3
#: Part of every ranking file's key: 2 since ties are broken by one permutation for every image (batch-independent).
_RANKING_FORMAT = 2


class RankedMaskDataset(Dataset):
    """A view of ``dataset`` whose images have their top ``fraction`` of ranked pixels imputed (ROAR), or all
    but the top ``fraction`` (KAR, ``keep=True``), applied on the fly when an item is read.

    A ``DataLoader`` reads a whole batch through :meth:`__getitems__`, so the imputer fills the batch in one call
    (what makes a solver such as :class:`~captum_ext.imputation.NoisyLinearImputer` affordable inside ROAR). An
    imputer that looks only at each image itself (``MeanImputer``, ``ConstantImputer``, ``BlurImputer``) gives
    the same image either way; ``NoisyLinearImputer`` adds noise by position in the batch (the same noise tensor
    for every batch of one shape), so with a shuffled loader an image's noise changes from epoch to epoch.

    Args:
        dataset: yields ``(image (C, H, W), label, ...)`` items, or dicts with the usual keys (see
            :func:`captum_ext.batches.unpack_batch`), in the order the rankings were computed; each masked item keeps
            its structure (a dict stays a dict), so the module trains on the batches it expects.
        rankings: path of an (N, H*W) rank-position ``.npy`` file (:func:`captum_ext.evaluation.cache.compute_rankings`).
        fraction: Share of pixels removed (ROAR) or kept (KAR), in [0, 1].
        keep: Keep the top pixels and impute the rest. Default False.
        imputer: Fills the removed pixels, e.g. ``MeanImputer(train_mean)``.
    """

    def __init__(self, dataset: Dataset, rankings: str | os.PathLike, fraction: float, keep: bool, imputer: Callable):
        self.dataset, self.rankings, self.fraction, self.keep, self.imputer = dataset, str(rankings), fraction, keep, imputer
        self._positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_positions": None}  # the memory map is reopened in each process

    def __getitem__(self, index: int) -> tuple:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        if self._positions is None:
            self._positions = cache.load_rankings(self.rankings)
        items = [self.dataset[index] for index in indices]
        images = torch.stack([unpack_batch(item)[0] for item in items])
        h, w = images.shape[-2:]
        positions = torch.from_numpy(np.asarray(self._positions[list(indices)], dtype=np.int64))
        count = maps.pixel_count(self.fraction, h * w)
        removed = positions >= count if self.keep else positions < count
        images = self.imputer(images, removed.reshape(-1, h, w))
        return [with_images(item, image) for image, item in zip(images, items)]


@dataclass(frozen=True)
class _Job:
    """What every retraining run shares (picklable, so an Executor can ship it to another process)."""

    module_factory: Callable[[], Any]
    namespace: str
    datasets: dict[str, Dataset]
    batch_sizes: dict[str, int]
    imputer: Callable
    keep: bool
    trainer_kwargs: dict[str, Any]
    results_path: str


@dataclass(frozen=True)
class _Run:
    key: str
    method: str
    fraction: float
    repeat: int
    seed: int
    rankings: dict[str, str]


def _run_seed(seed: int, method: str, fraction: float, repeat: int) -> int:
    """A seed that depends only on (seed, method, fraction, repeat), never on order or process."""
    text = json.dumps([seed, method, repr(float(fraction)), repeat])
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _loaders(job: _Job, views: dict[str, Dataset], seed: int) -> dict[str, DataLoader]:
    out = {}
    for split, dataset in views.items():
        shuffle = split == "train"
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        out[split] = DataLoader(dataset, batch_size=job.batch_sizes[split], shuffle=shuffle, generator=gen)
    return out


def _fit(job: _Job, module: Any, loaders: dict[str, DataLoader]) -> None:
    trainer = importlib.import_module(job.namespace).Trainer(**copy.deepcopy(job.trainer_kwargs))
    trainer.fit(module, train_dataloaders=loaders["train"], val_dataloaders=loaders.get("val"))


def _execute(job: _Job, run: _Run) -> dict[str, Any]:
    """Retrain one (method, fraction, repeat) from scratch on the masked data, test it, append the record."""
    with torch.random.fork_rng():
        torch.manual_seed(run.seed)
        module = job.module_factory()
        views = {
            split: RankedMaskDataset(dataset, run.rankings[split], run.fraction, job.keep, job.imputer)
            for split, dataset in job.datasets.items()
        }
        loaders = _loaders(job, views, run.seed)
        _fit(job, module, loaders)
        score = accuracy(module, loaders["test"])
    record = {"key": run.key, "method": run.method, "fraction": run.fraction, "repeat": run.repeat,
              "seed": run.seed, "keep": job.keep, "accuracy": score}
    cache.append_record(job.results_path, record)
    return record


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


def _split_datasets(datamodule: Any) -> tuple[dict[str, Dataset], dict[str, int]]:
    """The datasets and batch sizes behind the datamodule's train / val / test loaders (val optional)."""
    for stage in ("fit", "test"):
        if hasattr(datamodule, "setup"):
            datamodule.setup(stage)
    datasets, batch_sizes = {}, {}
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
        elif split != "val":
            raise ValueError(
                f"Expected argument `datamodule` to provide `{split}_dataloader()` returning a torch DataLoader, "
                f"but got {type(loader).__name__}."
            )
    return datasets, batch_sizes


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _check_arguments(module_factory, explainers, repeats, trainer_kwargs, model, seed, executor) -> list[Explainer]:
    if not callable(module_factory):
        raise TypeError(f"Expected argument `module_factory` to be a callable returning a LightningModule, but got {module_factory!r}.")
    if isinstance(explainers, (str, Explainer)) or not isinstance(explainers, Sequence) or not explainers:
        raise ValueError(f"Expected argument `explainers` to be a non-empty list of Explainers or short names, but got {explainers!r}.")
    recipes = [as_explainer(e, "explainers") for e in explainers]
    names = [e.name for e in recipes]
    if "random" in names:
        raise ValueError("Expected argument `explainers` without the name 'random': the random ranking is always included.")
    if len(set(names)) != len(names):
        raise ValueError(f"Expected argument `explainers` to have unique names, but got {names}.")
    check_int("repeats", repeats, 1)
    if trainer_kwargs is not None and not isinstance(trainer_kwargs, dict):
        raise TypeError(f"Expected argument `trainer_kwargs` to be a dict or None, but got {type(trainer_kwargs).__name__}.")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module or None, but got {type(model).__name__}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"Expected argument `seed` to be an int, but got {seed!r}.")
    if executor is not None and not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(f"Expected argument `executor` to be a concurrent.futures.Executor or None, but got {executor!r}.")
    return recipes


def _benchmark(
    keep: bool,
    module_factory: Callable[[], Any],
    datamodule: Any,
    explainers: Sequence[Explainer | str],
    fractions: Sequence[float],
    repeats: int,
    imputer: Callable | None,
    trainer_kwargs: dict[str, Any] | None,
    model: nn.Module | None,
    cache_dir: str | os.PathLike,
    seed: int,
    executor: concurrent.futures.Executor | None,
    batch_size: int,
    progress: bool,
) -> ROARResult:
    recipes = _check_arguments(module_factory, explainers, repeats, trainer_kwargs, model, seed, executor)
    fractions = check_fractions(fractions)
    recipes.append(Explainer("random", seed=seed))
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cache.remove_stale_temporaries(folder)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = module_factory()
    namespace = _namespace(probe)
    factory_fp = cache.digest(type(probe).__module__, type(probe).__qualname__, cache.weights_fingerprint(probe))
    datasets, batch_sizes = _split_datasets(datamodule)
    data_fp, train_mean = cache.data_fingerprint(datasets, batch_size)
    imputer = imputer if imputer is not None else MeanImputer(train_mean)
    settings = {**DEFAULT_TRAINER_KWARGS, **(trainer_kwargs or {})}
    trainer_key = {k: v for k, v in settings.items() if _plain(v)}  # callbacks, loggers: not part of the key
    job = _Job(module_factory, namespace, datasets, batch_sizes, imputer, keep, settings, str(folder / "results.jsonl"))

    if model is None:  # 1. the base model on unmodified data, trained once and cached
        base_path = folder / f"base_{cache.digest('base', namespace, factory_fp, data_fp, trainer_key, seed)[:24]}.pt"
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = module_factory()
            if base_path.exists():
                cache.load_weights(model, base_path)
            else:
                _fit(job, model, _loaders(job, datasets, seed))
                cache.save_weights(model, base_path)
    baseline = accuracy(model, DataLoader(datasets["test"], batch_size=batch_size))
    base_fp = cache.weights_fingerprint(model)

    rankings: dict[str, dict[str, str]] = {}  # 2. rankings per method and split, streamed to disk
    for recipe in recipes:
        rankings[recipe.name] = {}
        for split, dataset in datasets.items():
            key = cache.digest("ranking", _RANKING_FORMAT, base_fp, recipe.fingerprint(), data_fp, split, seed)
            path = folder / f"rank_{key[:24]}.npy"
            if not path.exists():
                cache.compute_rankings(model, as_explainer(recipe), dataset, path, batch_size, seed, progress,
                                       description=f"ranking {recipe.name} ({split})")
            rankings[recipe.name][split] = str(path)

    setup = cache.digest(
        _RESULTS_FORMAT, "keep" if keep else "roar", namespace, factory_fp, data_fp, base_fp, imputer, trainer_key, seed
    )
    runs = [
        _Run(cache.digest(setup, recipe.name, recipe.fingerprint(), repr(f), r), recipe.name, f, r,
             _run_seed(seed, recipe.name, f, r), rankings[recipe.name])
        for recipe in recipes for f in fractions for r in range(repeats)
    ]
    done = {rec["key"]: rec for rec in cache.read_records(job.results_path) if "key" in rec}
    pending = [run for run in runs if run.key not in done]
    title = "KAR" if keep else "ROAR"
    with tqdm(total=len(runs), initial=len(runs) - len(pending), desc=f"{title} retraining", disable=not progress) as bar:
        if executor is None:  # 3. retrain each (method, fraction, repeat)
            for run in pending:
                done[run.key] = _execute(job, run)
                bar.update(1)
        else:
            futures = [executor.submit(_execute, job, run) for run in pending]
            for future in concurrent.futures.as_completed(futures):
                record = future.result()
                done[record["key"]] = record
                bar.update(1)
    accuracy_table: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        accuracy_table.setdefault(run.method, {}).setdefault(run.fraction, []).append(float(done[run.key]["accuracy"]))
    return ROARResult(accuracy_table, baseline, keep=keep)


_ARGS_DOC = """
    Args:
        module_factory: returns a fresh, untrained ``LightningModule`` (of ``pytorch_lightning`` or
            ``lightning.pytorch``; that namespace's ``Trainer`` is used). Must be picklable for an ``executor``.
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
            loggers.
        model: A trained model to rank pixels with and report as the baseline, left unchanged. Default None:
            train ``module_factory()`` on the unmodified data (cached in ``cache_dir``).
        cache_dir: Rankings, the base model and ``results.jsonl`` live here. Default ``"roar_cache"``.
        seed: Seeds the base model, the tie-breaking jitter, the random ranking and (with method, fraction and
            repeat) every run. Default 0.
        executor: A ``concurrent.futures.Executor`` to run the retrainings concurrently (processes, Slurm via
            submitit, Ray...), or None to run them one after another. Default None.
        batch_size: Images per batch when computing the rankings. Default 256.
        progress: Show tqdm progress bars. Default True.

    Returns:
        :class:`ROARResult` with ``accuracy[method][fraction]`` (one entry per repeat) and ``baseline_accuracy``.

    Raises:
        ValueError: empty or duplicate ``explainers``, the name ``"random"``, bad ``fractions`` or ``repeats``, a
            datamodule without train or test loaders.
        TypeError: a factory that does not return a LightningModule, a non-Executor ``executor``.
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
    return _benchmark(False, module_factory, datamodule, explainers, fractions, repeats, imputer, trainer_kwargs,
                      model, cache_dir, seed, executor, batch_size, progress)


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
    return _benchmark(True, module_factory, datamodule, explainers, fractions, repeats, imputer, trainer_kwargs,
                      model, cache_dir, seed, executor, batch_size, progress)


if roar.__doc__ is not None:  # None under ``python -OO``, which strips docstrings
    roar.__doc__ = roar.__doc__.format(args=_ARGS_DOC)
    kar.__doc__ = kar.__doc__.format(args=_ARGS_DOC)
