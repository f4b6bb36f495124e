"""ROAR's on-disk cache: fingerprints, the plan's manifest, pixel rankings stored in shards, one record per run and
the base model's weights. Nothing here is loaded with pickle (``allow_pickle=False``, ``weights_only=True``).

* A ranking (one method, one split) is a folder ``rank_<key>/`` of shard files ``<start>-<stop>.npy`` (nine digits
  each), every one an (stop - start, H*W) array of the rank positions of the pixels of images ``start`` to
  ``stop - 1`` of the split in dataset order (0 = most relevant), ``uint16`` whenever H*W <= 65,536 (up to 256 x 256
  px: 2 bytes a position), ``uint32`` beyond. The shards tile ``[0, N)``; each is written to a temporary file and
  renamed into place, so several workers can compute disjoint shards at once and a crash leaves no half-written
  shard. Readers memory-map the shards and read only the rows they need (:class:`Rankings`).
* The plan's manifest ``plan_<key>.json`` records, once, what a job-array task would otherwise recompute from the
  whole dataset: the data's fingerprint and per-channel training mean, the base model's fingerprint and test
  accuracy, and a cheap signature of the data (split lengths and the bytes of a fixed sample of items) that every
  later task checks instead of reading the data again.
* Every finished run has its own record ``runs/<key>.json``, written atomically, so drivers and job-array tasks on
  several hosts can share the folder on a network filesystem (:mod:`captum_ext.evaluation.claims` decides who
  trains a run). Temporary files of interrupted writes are removed when ROAR starts (a dead writer's at once,
  other hosts' after six hours without a change).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captum_ext import maps
from captum_ext._io import atomic_path, owner_alive, write_json_atomic
from captum_ext._model import model_device
from captum_ext.batches import unpack_batch
from captum_ext.explainer import Explainer, canonical

__all__ = [
    "canonical",
    "digest",
    "weights_fingerprint",
    "data_fingerprint",
    "data_signature",
    "read_manifest",
    "write_manifest",
    "Rankings",
    "shard_ranges",
    "shard_path",
    "compute_rankings",
    "load_rankings",
    "record_path",
    "write_record",
    "read_record",
    "quarantine",
    "recorded_keys",
    "save_weights",
    "load_weights",
]


def digest(*parts: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``parts``."""
    return hashlib.sha256(json.dumps(canonical(list(parts)), sort_keys=True).encode()).hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes): one changed weight changes it."""
    sha = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        sha.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        sha.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return sha.hexdigest()


def _loader(dataset: Dataset, batch_size: int, options: dict[str, Any] | None = None) -> DataLoader:
    """The dataset in order, with the user's loader's worker settings (``options``): decoding runs in its workers."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **(options or {}))


def data_fingerprint(
    datasets: dict[str, Dataset], batch_size: int, loader_options: dict[str, dict[str, Any]] | None = None
) -> tuple[str, torch.Tensor]:
    """SHA-256 of every split's images and labels in order (images and labels hashed as two streams, so the value
    does not depend on ``batch_size``), and the per-channel mean of the ``"train"`` split (float64 running sums: one
    streaming pass, nothing kept)."""
    sha = hashlib.sha256()
    total, count = None, 0
    for split in sorted(datasets):
        streams = [hashlib.sha256(), hashlib.sha256()]
        for batch in _loader(datasets[split], batch_size, (loader_options or {}).get(split)):
            images, labels = unpack_batch(batch)
            for stream, tensor in zip(streams, (images, labels)):
                stream.update(torch.as_tensor(tensor).detach().cpu().contiguous().numpy().tobytes())
            if split == "train":
                x = images.detach().double()
                sums = x.sum(dim=(0, 2, 3))
                total = sums if total is None else total + sums
                count += x.shape[0] * x.shape[2] * x.shape[3]
        size = len(cast(Sized, datasets[split]))  # map-style datasets: torch's Dataset declares no __len__
        sha.update(f"split:{split}|{size}|{streams[0].hexdigest()}|{streams[1].hexdigest()}|".encode())
    if total is None:
        raise ValueError("Expected the datamodule to provide a non-empty training set.")
    return sha.hexdigest(), (total / count).float()


#: Items read from each split by :func:`data_signature` (evenly spaced, the first and the last among them).
SIGNATURE_SAMPLES = 16


def data_signature(datasets: dict[str, Dataset], samples: int = SIGNATURE_SAMPLES) -> dict[str, dict[str, Any]]:
    """A cheap check that the data are still the plan's: each split's length and the SHA-256 of the images and labels
    of ``samples`` evenly spaced items (the first and the last among them), read by index, so its cost does not grow
    with the dataset. What a job-array task checks instead of reading every image again.

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> data = {"train": TensorDataset(torch.zeros(100, 1, 2, 2), torch.zeros(100))}
        >>> data_signature(data)["train"]["length"]
        100
    """
    signature = {}
    for split in sorted(datasets):
        size = len(cast(Sized, datasets[split]))
        indices = sorted({math.floor(i * (size - 1) / (samples - 1) + 0.5) for i in range(samples)}) if size else []
        sha = hashlib.sha256()
        for index in indices:
            for tensor in unpack_batch(datasets[split][index]):
                sha.update(torch.as_tensor(tensor).detach().cpu().contiguous().numpy().tobytes())
        signature[split] = {"length": size, "sample": sha.hexdigest()}
    return signature


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: What a manifest holds, each with the check its value must pass.
_MANIFEST_FIELDS: dict[str, Any] = {
    "signature": lambda v: (
        isinstance(v, dict)
        and all(
            isinstance(x, dict) and isinstance(x.get("length"), int) and isinstance(x.get("sample"), str)
            for x in v.values()
        )
    ),
    "data_fingerprint": lambda v: isinstance(v, str) and len(v) == 64,
    "train_mean": lambda v: isinstance(v, list) and bool(v) and all(_finite_number(x) for x in v),
    "base_fingerprint": lambda v: isinstance(v, str) and len(v) == 64,
    "baseline_accuracy": lambda v: _finite_number(v) and 0 <= v <= 1,
}


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write a plan's manifest (the fields of :data:`_MANIFEST_FIELDS`) atomically."""
    return write_json_atomic(manifest, path, sort_keys=True, indent=1)


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The plan's manifest at ``path``, or None when there is none, or when it is unreadable or malformed (then with a
    warning naming the file: the plan step writes it again)."""
    try:
        manifest = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        warnings.warn(f"The ROAR plan manifest {path} cannot be read ({err}); it is ignored.", RuntimeWarning, 2)
        return None
    bad = (
        [name for name, ok in _MANIFEST_FIELDS.items() if name not in manifest or not ok(manifest[name])]
        if isinstance(manifest, dict)
        else ["the whole file"]
    )
    if bad:
        warnings.warn(
            f"The ROAR plan manifest {path} has a malformed {', '.join(bad)}; it is ignored.", RuntimeWarning, 2
        )
        return None
    return manifest


_SHARD = re.compile(r"(\d{9})-(\d{9})\.npy")


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` image ranges of the shards of a split of ``count`` images.

    Example::

        >>> shard_ranges(10, 4)
        [(0, 4), (4, 8), (8, 10)]
    """
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def shard_path(folder: str | os.PathLike, start: int, stop: int) -> Path:
    """Where the shard of images ``start`` to ``stop - 1`` of a ranking folder lives."""
    return Path(folder) / f"{start:09d}-{stop:09d}.npy"


class Rankings:
    """The rank positions stored in one ranking folder (see the module docstring), read a few rows at a time.

    The folder is listed once, each shard memory-mapped on first use, and :meth:`rows` copies only the rows asked for,
    in the stored dtype (``uint16`` up to 256 x 256 px): never a widened copy of the whole file or batch. Pickles
    without its open maps (a DataLoader worker opens its own).

    Example::

        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> np.save(shard_path(folder, 0, 2), np.array([[1, 0], [0, 1]], dtype=np.uint16))
        >>> rankings = Rankings(folder)
        >>> rankings.complete(2), rankings.rows([1, 0]).tolist()
        (True, [[0, 1], [1, 0]])
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._starts: list[int] = []
        self._stops: list[int] = []
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "_starts": [], "_stops": [], "_maps": {}}

    def shards(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` of every shard file present, in order (one directory listing)."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted((int(m.group(1)), int(m.group(2))) for m in map(_SHARD.fullmatch, names) if m)

    def checked_shards(self) -> list[tuple[int, int]]:
        """:meth:`shards`, after moving aside (:func:`quarantine`) every shard file that is not what its name says:
        unreadable as ``.npy``, not a (stop - start, H*W) ``uint16``/``uint32`` array, or of another width than the
        folder's other shards. Reads only the files' headers."""
        found = []
        for start, stop in self.shards():
            path = shard_path(self.folder, start, stop)
            try:
                array = load_rankings(path)
            except FileNotFoundError:  # moved aside by another process meanwhile
                continue
            except (OSError, ValueError) as err:
                quarantine(path, f"cannot be read as a .npy array ({type(err).__name__})")
                continue
            if array.ndim != 2 or array.shape[0] != stop - start or array.dtype not in (np.uint16, np.uint32):
                quarantine(
                    path, f"holds a {array.dtype} array of shape {array.shape}, not {stop - start} rows of uint16"
                )
                continue
            found.append((start, stop, array.shape[1]))
        widths = [width for *_, width in found]
        common = max(set(widths), key=widths.count) if widths else 0
        for start, stop, width in found:
            if width != common:
                quarantine(shard_path(self.folder, start, stop), f"has {width} positions a row, the others {common}")
        return [(start, stop) for start, stop, width in found if width == common]

    def complete(self, count: int) -> bool:
        """Whether the shards present, checked (:meth:`checked_shards`), tile the images ``[0, count)``."""
        reached = 0
        for start, stop in self.checked_shards():
            if start == reached:
                reached = stop
        return reached == count

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """The (len(indices), H*W) rank positions of those images, in the stored dtype."""
        if not self._starts:
            found = self.shards()
            self._starts, self._stops = [s for s, _ in found], [e for _, e in found]
        out = []
        for index in indices:
            k = bisect.bisect_right(self._starts, index) - 1
            if k < 0 or index >= self._stops[k]:
                raise IndexError(f"Image {index} has no ranking shard in {self.folder}; prepare the plan's rankings.")
            if k not in self._maps:
                self._maps[k] = load_rankings(shard_path(self.folder, self._starts[k], self._stops[k]))
            out.append(self._maps[k][index - self._starts[k]])
        return np.stack(out)


def ranking_dtype(positions: int) -> np.dtype:
    """``uint16`` when every rank position of an image of ``positions`` pixels fits in it (<= 65,536), else
    ``uint32``."""
    return np.dtype(np.uint16 if positions <= np.iinfo(np.uint16).max + 1 else np.uint32)


def compute_rankings(
    model: nn.Module,
    explainer: Explainer,
    dataset: Dataset,
    path: str | os.PathLike,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    description: str = "",
    loader_options: dict[str, Any] | None = None,
) -> Path:
    """Rank the pixels of every image of ``dataset`` by ``explainer``'s ``"sum_abs"`` map for its label, on the
    model's device, and stream the rank positions to ``path`` (an (N, H*W) ``.npy`` of :func:`ranking_dtype`), one
    batch at a time; returns ``path``. A shard is this over a ``Subset`` of the split.

    Ties are broken by a jitter seeded with ``seed`` (:func:`captum_ext.maps.rank_pixels`), the same for every image,
    so shards and batch sizes do not change a deterministic method's result (a stochastic one draws per call). ``loader_options`` (``num_workers``, ``pin_memory``...) go to
    the DataLoader that reads the images. The file appears only when complete (temporary file + rename).
    """
    target = Path(path)
    device = model_device(model)
    sized = cast(Sized, dataset)  # a map-style dataset: torch's Dataset declares no __len__
    written, dtype = 0, None
    with (
        atomic_path(target) as tmp,
        open(tmp, "wb") as handle,
        tqdm(
            total=len(sized), desc=description or f"ranking {explainer.name}", disable=not progress, leave=False
        ) as bar,
    ):
        for batch in _loader(dataset, batch_size, loader_options):
            x, y = unpack_batch(batch)
            x, y = x.to(device), torch.as_tensor(y).to(device)
            saliency = explainer.saliency(model, x, y, reduce="sum_abs")
            ranking = maps.rank_pixels(saliency, seed=seed)
            n, hw = ranking.shape
            if dtype is None:  # the .npy header first, then the rows as they come (no memory map, no growth)
                dtype = ranking_dtype(hw)
                header = {
                    "descr": np.lib.format.dtype_to_descr(dtype),
                    "fortran_order": False,
                    "shape": (len(sized), hw),
                }
                np.lib.format.write_array_header_1_0(handle, header)
            positions = torch.empty_like(ranking)
            positions.scatter_(1, ranking, torch.arange(hw, device=ranking.device).expand(n, -1))
            handle.write(positions.to(torch.int32).cpu().numpy().astype(dtype).tobytes())
            written += n
            bar.update(n)
        if written != len(sized) or written == 0:
            raise ValueError(
                f"Expected the dataset to yield len(dataset) = {len(sized)} > 0 images, but it yielded {written}."
            )
    return target


def load_rankings(path: str | os.PathLike) -> np.ndarray:
    """The (N, H*W) rank positions of one ranking shard file, memory-mapped read-only, loaded without pickle."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def record_path(folder: str | os.PathLike, key: str) -> Path:
    """Where the record of run ``key`` lives: ``folder/runs/<key>.json``."""
    return Path(folder) / "runs" / f"{key}.json"


def write_record(folder: str | os.PathLike, key: str, record: dict[str, Any]) -> Path:
    """Write run ``key``'s record as its own JSON file, atomically (temporary file + rename; safe on NFS, where
    appends from several hosts are not)."""
    return write_json_atomic(record, record_path(folder, key), sort_keys=True)


def _record_problem(record: Any, key: str) -> str:
    """What is wrong with a parsed record of run ``key`` ("" when nothing is)."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not a record"
    if record.get("key") != key:
        return f"holds the key {str(record.get('key'))[:16]!r}..., not its own (another run's record?)"
    accuracy: Any = record.get("accuracy")
    if not _finite_number(accuracy) or not 0 <= accuracy <= 1:
        return f"has the accuracy {accuracy!r}, not a number in [0, 1]"
    return ""


def quarantine(path: str | os.PathLike, reason: str) -> Path:
    """Move a damaged cache file (or folder) aside to ``quarantine/`` beside it, with a warning naming it and
    ``reason``; returns where it went. The run or shard it stood for is then computed again."""
    source = Path(path)
    target = source.parent / "quarantine" / f"{source.name}.{time.time_ns()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except FileNotFoundError:  # another process moved it first
        return target
    warnings.warn(
        f"The ROAR cache file {source} {reason}; moved to {target}, and what it held will be computed again.",
        RuntimeWarning,
        stacklevel=3,
    )
    return target


def read_record(folder: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """Run ``key``'s record, or None when the run has not finished. A record that cannot be trusted (not JSON, not an
    object, another run's key, an accuracy outside [0, 1] or not finite, a folder) is quarantined with a warning
    (:func:`quarantine`) and counts as missing, so the run is trained again: a damaged file never blocks a plan nor
    changes its table."""
    path = record_path(folder, key)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # not JSON, not UTF-8, a folder
        quarantine(path, f"cannot be read as JSON ({type(err).__name__})")
        return None
    problem = _record_problem(record, key)
    if problem:
        quarantine(path, problem)
        return None
    return record


def recorded_keys(folder: str | os.PathLike) -> set[str]:
    """The keys of every run with a record file, from one directory listing."""
    try:
        with os.scandir(Path(folder) / "runs") as entries:
            return {
                entry.name[: -len(".json")]
                for entry in entries
                if entry.name.endswith(".json") and not entry.name.startswith(".")
            }
    except FileNotFoundError:
        return set()


def _writer_alive(tmp: Path) -> bool | None:
    """Whether the process that writes ``tmp`` (named ``.<target>.<host>-<pid>.<random>.tmp`` by
    :func:`captum_ext._io.atomic_path`) is alive: None when it ran on another host or the name carries no owner."""
    return owner_alive(tmp.name.split(".")[-3] if tmp.name.count(".") >= 4 else "")


def remove_stale_temporaries(folder: str | os.PathLike, max_age_s: float = 6 * 3600.0) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes (``.<name>.*.tmp``): those whose writer on this host
    has died, and those of other hosts (or without an owner) not modified for ``max_age_s`` seconds; a live writer's
    file is never touched. Returns the paths removed."""
    removed = []
    now = time.time()
    for tmp in [*Path(folder).glob(".*.tmp"), *Path(folder).glob("runs/.*.tmp"), *Path(folder).glob("rank_*/.*.tmp")]:
        alive = _writer_alive(tmp)
        try:
            if alive is False or (alive is None and now - tmp.stat().st_mtime > max_age_s):
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another driver removed or renamed it meanwhile
            continue
    return removed


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """``torch.save`` the state dict to a temporary file and rename it into place."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state dict saved by :func:`save_weights` with ``weights_only=True``."""
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
