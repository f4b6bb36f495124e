"""Shared machinery of the ``captum_ext`` Lightning callbacks.

:class:`ExplanationCallback` is the base class of every callback in :mod:`captum_ext.callbacks`. It is a
subclass of ``pytorch_lightning.Callback`` and, when the ``lightning`` package is importable, of
``lightning.pytorch.Callback`` too, so one instance works with either namespace's ``Trainer``. It provides:

- scheduling: :meth:`~ExplanationCallback.run` is called at the end of every ``every_n_epochs``-th validation
  epoch, never while the trainer is sanity checking;
- isolation: the run happens with gradients enabled (also under ``Trainer(inference_mode=True)``) and with the
  torch, numpy and ``random`` RNG states saved and restored, so a callback never changes the training run;
- a probe set (:class:`~captum_ext.callbacks.probes.ProbeSet`, sampled and sharded by :mod:`captum_ext.callbacks.probes`): ``num_samples`` validation images balanced over classes, chosen once with a
  seeded generator, the same global indices on every rank; each rank works on its own disjoint shard
  (positions ``rank, rank + world_size, ...``) and :meth:`~ExplanationCallback.gather` reassembles per-sample
  results in probe order with one collective call that every rank makes;
- logging at step ``trainer.global_step`` (optimizer steps so far): scalars to every logger and to
  ``trainer.callback_metrics``, images and matplotlib figures to the ``TensorBoardLogger``, all written by rank 0
  only, and a single warning when there is no logger;
- ``state_dict`` / ``load_state_dict`` keyed by a per-instance ``state_key`` (the probe indices and each
  subclass's own counters) for resumed fits.

Subclasses implement :meth:`~ExplanationCallback.run` and, if they keep state across epochs,
:meth:`~ExplanationCallback._extra_state` / :meth:`~ExplanationCallback._load_extra_state` and
:meth:`~ExplanationCallback._state_key_fields`.

Example::

    >>> import pytorch_lightning as pl
    >>> from captum_ext.callbacks.base import ExplanationCallback
    >>> class MeanInput(ExplanationCallback):
    ...     def run(self, trainer, pl_module):
    ...         probe = self.probe(trainer, pl_module)
    ...         self.log_scalars(trainer, pl_module, {"probe/mean": probe.inputs.mean()})
    >>> isinstance(MeanInput(num_samples=4), pl.Callback)
    True
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torchmetrics import Metric
from typing_extensions import override

from captum_ext._checks import check_classes, check_int, check_seed
from captum_ext._context import eval_mode, full_precision, gradients_enabled
from captum_ext.batches import Unpack, check_unpack
from captum_ext.callbacks.probes import ProbeSet, select_probe, shard_positions, shared_cache
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.model_output import OutputFn, check_output_fn, logits

#: The Callback classes :class:`ExplanationCallback` derives from (one per importable Lightning namespace).
CALLBACK_BASES: tuple[type, ...] = (pl.Callback,)
_TENSORBOARD_LOGGERS: tuple[type, ...] = (TensorBoardLogger,)
try:  # the `lightning` package has its own, distinct Callback and logger classes
    import lightning.pytorch as _lightning_pytorch
    from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger

    CALLBACK_BASES += (_lightning_pytorch.Callback,)
    _TENSORBOARD_LOGGERS += (_LightningTensorBoardLogger,)
except ImportError:  # pragma: no cover - lightning is an optional dependency
    pass

__all__ = [
    "ExplanationCallback",
    "preserved_rng",
    "forward_in_eval",
    "synced_compute",
    "CALLBACK_BASES",
]


@contextlib.contextmanager
def preserved_rng(devices: Sequence[torch.device] = ()) -> Iterator[None]:
    """Save the torch (CPU and the given CUDA devices), numpy and ``random`` RNG states; restore them on exit.

    Whatever the block draws, the global random streams continue afterwards exactly as if it had not run.
    """
    cuda = [d for d in devices if torch.device(d).type == "cuda"]
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def synced_compute(metric: Metric) -> Any:
    """``metric.compute()`` (synced across ranks), quiet when this rank had nothing to update it with.

    Every rank must call it, also one whose shard held no sample for this metric: the sync is a collective.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method")
        return metric.compute()


def forward_in_eval(model: nn.Module, inputs: torch.Tensor, output_fn: OutputFn | None = None) -> torch.Tensor:
    """Logits of ``model`` (read by the package's output rule) in eval mode without gradients (each module's mode
    restored)."""
    with torch.no_grad(), eval_mode(model), full_precision(inputs.device):
        return logits(model(inputs), output_fn)


class ExplanationCallback(*CALLBACK_BASES):  # type: ignore[misc]  # the bases are known only at import
    """Base class of the ``captum_ext`` callbacks: scheduling, isolation, probe set, logging, state.

    Args:
        every_n_epochs: run at the end of every n-th validation epoch (epochs counted from 1), once per training
            epoch: with ``val_check_interval < 1`` only the epoch's first validation runs it. Default 1.
        num_samples: size of the probe set. Default 16.
        probe: the images to draw the probe set from: a map-style dataset of ``(image, label, ...)`` items or an
            ``(inputs (M, C, H, W), labels (M,))`` pair. Default the first validation dataloader's dataset.
        classes: restrict the probe set to these classes. Default all.
        seed: seeds the probe selection and every random step of the callback. Default 0.
        probe_scan: for datasets other than ``TensorDataset``, how many items (in seeded random order) have their
            labels read to choose the balanced probe set. Default 4096.
        output_fn: maps the module's output to (N, classes) scores. Default the package's output rule
            (:func:`captum_ext.model_output.logits`: a tensor, ``.logits``, a dict's ``"logits"``, a tuple's first).
        unpack: maps a validation item to ``(image, label)``. Default the package's batch rule
            (:func:`captum_ext.batches.unpack_batch`: tuples, dicts with ``image`` / ``pixel_values`` / ... keys).

    Subclasses implement :meth:`run`; to change which epochs run, override :meth:`scheduled` (not :meth:`due`, which
    adds the sanity-check and once-per-epoch rules). A subclass that overrides ``setup`` must call
    ``super().setup(...)``: it resets the once-per-epoch guard for each fit / validate call.

    Raises:
        ValueError: a count below its minimum, or a malformed ``probe``.
    """

    def __init__(
        self,
        *,
        num_samples: int = 16,
        every_n_epochs: int = 1,
        probe: Dataset | tuple[torch.Tensor, torch.Tensor] | None = None,
        classes: Sequence[int] | None = None,
        seed: int = 0,
        probe_scan: int = 4096,
        output_fn: OutputFn | None = None,
        unpack: Unpack | None = None,
    ):
        self.output_fn = check_output_fn(output_fn)
        self.unpack = check_unpack(unpack)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.seed = check_seed(seed)
        self.probe_scan = check_int("probe_scan", probe_scan, 1)
        self.classes = check_classes(classes)
        if isinstance(probe, (tuple, list)):
            if (
                len(probe) != 2
                or not all(isinstance(t, torch.Tensor) for t in probe)
                or probe[0].dim() != 4
                or probe[1].shape != probe[0].shape[:1]
            ):
                raise ValueError(
                    "Expected argument `probe` to be a dataset or an (inputs (M, C, H, W), labels (M,)) pair of tensors, "
                    f"but got {type(probe).__name__} of {[getattr(t, 'shape', type(t).__name__) for t in probe]}."
                )
            probe = TensorDataset(probe[0].detach().clone(), probe[1].detach().long().clone())
        elif probe is not None and not isinstance(probe, Dataset):
            raise ValueError(
                f"Expected argument `probe` to be a dataset, an (inputs, labels) pair or None, but got {type(probe).__name__}."
            )
        self._probe_source = probe
        self._probe: ProbeSet | None = None
        self._probe_indices: list[int] | None = None
        self._warned: set[str] = set()
        self._last_run: tuple[str, int] | None = None  # (trainer function, epoch) of the last run: one per epoch

    # -- scheduling and isolation ------------------------------------------------------------------------------
    def scheduled(self, trainer: pl.Trainer) -> bool:
        """Whether the current epoch is one of the callback's epochs (every ``every_n_epochs``-th by default)."""
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether to run at this validation end: a :meth:`scheduled` epoch, not the sanity check, and not an epoch
        of this fit / validate call that already had its run (several validations per epoch)."""
        if trainer.sanity_checking or not self.scheduled(trainer):
            return False
        return self._last_run != (str(trainer.state.fn), trainer.current_epoch)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._last_run = None  # each fit / validate call starts afresh

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        if not trainer.loggers:
            self.warn_once(
                "logger",
                f"{type(self).__name__}: the trainer has no logger; only trainer.callback_metrics get the scalars.",
            )
        self._last_run = (str(trainer.state.fn), trainer.current_epoch)
        with preserved_rng([pl_module.device]), gradients_enabled():
            self.run(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The callback's work for one epoch (gradients enabled, RNG isolated); subclasses implement it."""
        raise NotImplementedError

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fail before the first training step: choose the probe set and :meth:`dry_run` the callback on one probe
        image, so a misconfiguration (an unreadable batch or output, a wrong layer name, a region of the wrong size)
        costs seconds, not an epoch. RNG isolated and the module's modes restored: the run is unchanged."""
        loaders = trainer.val_dataloaders
        if self._probe_source is None and (loaders is None or loaders == []):
            return  # Lightning loads them later (no sanity check, first validation after epoch 0), or never
        with preserved_rng([pl_module.device]), gradients_enabled():
            probe = self.probe(trainer, pl_module)
            self.dry_run(pl_module, probe.inputs[:1], probe.labels[:1])

    def dry_run(self, pl_module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Run the callback's model-facing steps on one image without logging anything (see :meth:`on_train_start`):
        the output rule, and each of :meth:`explainers` on a private copy (their call counters stay untouched).
        Subclasses with more to check (layers, regions) extend it."""
        self.predict(pl_module, inputs)
        for explainer in self.explainers_used():
            self.attribute(as_explainer(explainer), pl_module, inputs, labels)

    def explainers_used(self) -> list[Explainer]:
        """The explainers this callback calls: dry-run before training, their call counters checkpointed (a resumed
        fit continues their seeded draws). None by default."""
        return []

    # -- probe set --------------------------------------------------------------------------------------------
    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ProbeSet:
        """The probe set on ``pl_module``'s device, selected on first use (same indices on every rank)."""
        if self._probe is None:
            source = self._probe_source
            if source is None:
                loaders = trainer.val_dataloaders
                loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
                if loader is None:
                    raise ValueError(
                        f"{type(self).__name__} needs validation data or `probe=` to choose its probe images."
                    )
                source = loader.dataset
            cache = shared_cache(trainer, source, self.unpack) if self._probe_source is None else None
            inputs, labels, indices = select_probe(
                source,
                self.num_samples,
                self.seed,
                self.classes,
                self.probe_scan,
                self._probe_indices,
                self.unpack,
                cache,
            )
            self._probe_indices = indices.tolist()
            self._probe = ProbeSet(inputs, labels, indices, trainer.global_rank, trainer.world_size)
        return self._probe.to(pl_module.device)

    def predict(self, pl_module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """(N,) predicted classes of ``inputs`` (eval mode, no gradients, ``output_fn`` applied)."""
        return forward_in_eval(pl_module, inputs, self.output_fn).argmax(1)

    def attribute(self, explainer: Explainer, model: nn.Module, inputs: torch.Tensor, target: Any) -> torch.Tensor:
        """``explainer``'s attributions of ``inputs`` on ``model``, with the callback's ``output_fn``."""
        return explainer.attribute(model, inputs, target, output_fn=self.output_fn)

    @property
    def probe_set(self) -> ProbeSet | None:
        """The probe set chosen at the first check (on the CPU), or None before it."""
        return self._probe

    def gather(self, trainer: pl.Trainer, shard: torch.Tensor, probe: ProbeSet) -> torch.Tensor:
        """Reassemble per-sample ``shard`` results (this rank's positions) into probe order on every rank.

        Every rank must call it (one ``all_gather``); shards are padded to equal length for the collective.
        """
        if probe.world_size == 1:
            return shard
        per_rank = math.ceil(len(probe) / probe.world_size)
        padded = shard.new_zeros((per_rank, *shard.shape[1:]))
        padded[: len(shard)] = shard
        gathered = trainer.strategy.all_gather(padded)
        out = shard.new_zeros((len(probe), *shard.shape[1:]))
        for rank in range(probe.world_size):
            pos = shard_positions(len(probe), rank, probe.world_size)
            out[pos.to(out.device)] = gathered[rank, : len(pos)].to(out.dtype)
        return out

    # -- logging ----------------------------------------------------------------------------------------------
    def warn_once(self, key: str, message: str) -> None:
        """``rank_zero_warn`` the message the first time ``key`` is seen by this instance."""
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def log_scalars(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, values: Mapping[str, float | torch.Tensor]
    ) -> None:
        """Log scalars (already synced across ranks) at ``trainer.global_step`` to every logger (rank 0), and to
        ``trainer.callback_metrics`` so that ``EarlyStopping`` or ``ModelCheckpoint`` can monitor them."""
        floats = {tag: float(value) for tag, value in values.items()}
        for tag, value in floats.items():
            tensor = torch.tensor(value, dtype=torch.float32, device=pl_module.device)
            pl_module.log(tag, tensor, on_step=False, on_epoch=True, sync_dist=True, batch_size=1, logger=False)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(floats, step=trainer.global_step)

    def tensorboard(self, trainer: pl.Trainer) -> Any | None:
        """The ``SummaryWriter`` of the first TensorBoardLogger on rank 0, else None (warns once if none)."""
        if not trainer.is_global_zero:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, _TENSORBOARD_LOGGERS):
                return cast(TensorBoardLogger, logger).experiment
        if trainer.loggers:
            self.warn_once(
                "tensorboard",
                f"{type(self).__name__}: images and figures are written only to a TensorBoardLogger; none is attached.",
            )
        return None

    def log_image(self, trainer: pl.Trainer, tag: str, image: torch.Tensor) -> None:
        """Write a (3, H, W) image in [0, 1] to TensorBoard at ``trainer.global_step`` (rank 0 only)."""
        writer = self.tensorboard(trainer)
        if writer is not None:
            writer.add_image(tag, image.detach().float().cpu().clamp(0, 1), global_step=trainer.global_step)

    def log_figure(self, trainer: pl.Trainer, tag: str, figure: Any) -> None:
        """Write a matplotlib figure to TensorBoard at ``trainer.global_step`` (rank 0 only); it is closed."""
        writer = self.tensorboard(trainer)
        if writer is not None:
            writer.add_figure(tag, figure, global_step=trainer.global_step, close=True)

    # -- state ------------------------------------------------------------------------------------------------
    def _state_key_fields(self) -> dict[str, Any]:
        """Settings that tell two instances of the same class apart in a checkpoint."""
        return {"num_samples": self.num_samples, "seed": self.seed}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self._state_key_fields())

    def _extra_state(self) -> dict[str, Any]:
        """Subclasses' own state (JSON-able values)."""
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`_extra_state`; missing keys keep their defaults (older checkpoints)."""

    @override
    def state_dict(self) -> dict[str, Any]:
        # the explainers' call counters seed their next draws: a resumed fit must continue them, not restart them
        calls = [explainer._calls for explainer in self.explainers_used()]
        return {"probe_indices": self._probe_indices, "explainer_calls": calls, **self._extra_state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        indices = state_dict.get("probe_indices")
        self._probe_indices = None if indices is None else [int(i) for i in indices]
        self._probe = None
        calls = state_dict.get("explainer_calls")
        if calls is not None and len(calls) == len(self.explainers_used()):
            for explainer, count in zip(self.explainers_used(), calls):
                explainer._calls = int(count)
        self._load_extra_state(state_dict)
