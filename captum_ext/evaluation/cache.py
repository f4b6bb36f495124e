"""ROAR's on-disk cache: fingerprints, pixel rankings streamed to ``.npy`` files, the append-only results file
and the base model's weights. Nothing here is loaded with pickle (``allow_pickle=False``, ``weights_only=True``).

* A ranking file holds, for every image of a split in dataset order, the rank position of each pixel
  (0 = most relevant) as an (N, H*W) int16/int32 ``.npy`` array. It is written batch by batch to a temporary
  file and renamed into place, so memory does not grow with the dataset and a crash leaves no half-written
  cache.
* Every finished run has its own record ``runs/<key>.json``, written atomically, so drivers and job-array tasks on
  several hosts can share the folder on a network filesystem (:mod:`captum_ext.evaluation.claims` decides who
  trains a run). Temporary files of interrupted writes are removed when ROAR starts (a dead writer's at once,
  other hosts' after six hours without a change).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sized
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
    "compute_rankings",
    "load_rankings",
    "record_path",
    "write_record",
    "read_record",
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


def _loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def data_fingerprint(datasets: dict[str, Dataset], batch_size: int) -> tuple[str, torch.Tensor]:
    """SHA-256 of every split's images and labels in order (images and labels hashed as two streams, so the value
    does not depend on ``batch_size``), and the per-channel mean of the ``"train"`` split (float64 running sums: one
    streaming pass, nothing kept)."""
    sha = hashlib.sha256()
    total, count = None, 0
    for split in sorted(datasets):
        streams = [hashlib.sha256(), hashlib.sha256()]
        for batch in _loader(datasets[split], batch_size):
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


def compute_rankings(
    model: nn.Module,
    explainer: Explainer,
    dataset: Dataset,
    path: str | os.PathLike,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    description: str = "",
) -> Path:
    """Rank the pixels of every image of ``dataset`` by ``explainer``'s ``"sum_abs"`` map for its label and stream the
    rank positions to ``path`` (an (N, H*W) ``.npy``), one batch at a time; returns ``path``.

    Ties are broken by a jitter seeded with ``seed`` (:func:`captum_ext.maps.rank_pixels`). The file appears only
    when complete (temporary file + rename).
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
        for batch in _loader(dataset, batch_size):
            x, y = unpack_batch(batch)
            x, y = x.to(device), torch.as_tensor(y).to(device)
            saliency = explainer.saliency(model, x, y, reduce="sum_abs")
            ranking = maps.rank_pixels(saliency, seed=seed)
            n, hw = ranking.shape
            if dtype is None:  # the .npy header first, then the rows as they come (no memory map, no growth)
                dtype = np.dtype(np.int16 if hw <= np.iinfo(np.int16).max else np.int32)
                header = {
                    "descr": np.lib.format.dtype_to_descr(dtype),
                    "fortran_order": False,
                    "shape": (len(sized), hw),
                }
                np.lib.format.write_array_header_1_0(handle, header)
            positions = torch.empty_like(ranking)
            positions.scatter_(1, ranking, torch.arange(hw, device=ranking.device).expand(n, -1))
            handle.write(positions.cpu().numpy().astype(dtype).tobytes())
            written += n
            bar.update(n)
        if written != len(sized) or written == 0:
            raise ValueError(
                f"Expected the dataset to yield len(dataset) = {len(sized)} > 0 images, but it yielded {written}."
            )
    return target


def load_rankings(path: str | os.PathLike) -> np.ndarray:
    """The (N, H*W) rank positions of a ranking file, memory-mapped read-only, loaded without pickle."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def record_path(folder: str | os.PathLike, key: str) -> Path:
    """Where the record of run ``key`` lives: ``folder/runs/<key>.json``."""
    return Path(folder) / "runs" / f"{key}.json"


def write_record(folder: str | os.PathLike, key: str, record: dict[str, Any]) -> Path:
    """Write run ``key``'s record as its own JSON file, atomically (temporary file + rename; safe on NFS, where
    appends from several hosts are not)."""
    return write_json_atomic(record, record_path(folder, key), sort_keys=True)


def read_record(folder: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """Run ``key``'s record, or None when the run has not finished (or its file is unreadable: it is then trained
    again, with a warning)."""
    path = record_path(folder, key)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        warnings.warn(
            f"The ROAR record {path} is not valid JSON; the run will be trained again.", RuntimeWarning, stacklevel=2
        )
        path.unlink(missing_ok=True)
        return None
    return record if isinstance(record, dict) else None


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
    for tmp in [*Path(folder).glob(".*.tmp"), *Path(folder).glob("runs/.*.tmp")]:
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
