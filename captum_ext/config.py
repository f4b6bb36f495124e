"""YAML configs for ``captum-ext roar | sanity | audit``: name your model, data and explainers by import path.

An import path is ``package.module:attribute`` (or ``package.module.attribute``). Every field is checked before
anything runs; a bad field raises :class:`ConfigError` naming the field, the expected form and the value.

Example (``sanity.yaml``)::

    model: captum_ext.models:SmallCNN        # a callable returning an nn.Module
    train_epochs: 15                          # optional: train it on the data module first
    datamodule: captum_ext.data:CleverHansDigits
    explainers: [saliency, guided_backprop, {method: gradcam, layer: features.conv3}]
    num_samples: 64
    out: runs/sanity
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from captum_ext.batches import unpack_batch
from captum_ext.explainer import METHODS, Explainer

__all__ = [
    "ConfigError",
    "FIELDS",
    "load_config",
    "import_object",
    "build_explainer",
    "build_model",
    "build_datamodule",
    "probe_batch",
]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the field."""


_COMMON = {
    "datamodule": "import path of a LightningDataModule class or factory (required)",
    "datamodule_kwargs": "keyword arguments for it (mapping, default {})",
    "seed": "seed for every random step (int, default 0)",
    "out": "folder for the results (default runs/<command>)",
}
_MODEL = {
    "model": "import path of a callable returning the nn.Module to check (required)",
    "model_kwargs": "keyword arguments for it (mapping, default {})",
    "checkpoint": "optional state_dict file for the model (loaded with weights_only=True)",
    "train_epochs": "optional: first train the model this many epochs on the data module (int)",
}
_EXPLAINERS = {
    "explainers": "list of short names (" + ", ".join(METHODS) + ") or mappings {method, layer, name, seed, "
    "init_kwargs, kwargs}; a method may also be the import path of a Captum Attribution class",
}
FIELDS: dict[str, dict[str, str]] = {
    "roar": {
        "module_factory": "import path of a callable returning a fresh LightningModule (required)",
        **_COMMON,
        **_EXPLAINERS,
        "fractions": "fractions of pixels removed (list of floats in (0, 1), default [0.1, 0.3, 0.5, 0.7, 0.9])",
        "repeats": "retrainings per (method, fraction) (int, default 3)",
        "trainer_kwargs": "keyword arguments for the Lightning Trainer of each retraining (mapping)",
        "cache_dir": "folder of the ranking cache and the resumable results file (default <out>/cache)",
        "keep": "false: ROAR (remove the top pixels); true: KAR (keep them) (default false)",
        "device": "where rankings and test accuracies run, e.g. cuda:0 (default: the trainer's accelerator)",
        "data_version": "your label for the data; change it when the data change (string, default none)",
        "shard_size": "images per ranking shard, the unit of --rank-index tasks (int, default 8192)",
        "slurm": "sbatch options of the printed job arrays: parallel (tasks at a time, default 100), cpus_per_task, "
        "gres, time, mem, partition, account, qos (mapping)",
    },
    "sanity": {
        **_MODEL,
        **_COMMON,
        **_EXPLAINERS,
        "num_samples": "probe images taken from the test split (int, default 64)",
        "mode": "cascading or independent (default cascading)",
        "threshold": "Spearman(|map|) level below which a map counts as changed (default 0.6)",
    },
    "audit": {
        **_MODEL,
        **_COMMON,
        "explainer": "one explainer, as in `explainers` (default input_x_gradient)",
        "region": "suspected region as a half-open box [x0, y0, x1, y1], or null to discover one (default null)",
        "classes": "classes to audit (list of ints, default all)",
        "num_samples": "audit at most this many test images (int, default all)",
    },
}


def field_help(command: str) -> str:
    """The field table shown by ``captum-ext COMMAND --help``."""
    width = max(map(len, FIELDS[command]))
    return "config fields:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in FIELDS[command].items())


def load_config(path: str | Path, command: str) -> dict[str, Any]:
    """Read a YAML config for ``command`` and reject unknown fields (a typo must not pass silently)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Expected the config to be a mapping of fields, but got {type(data).__name__}.")
    unknown = sorted(set(data) - set(FIELDS[command]))
    if unknown:
        raise ConfigError(
            f"Unknown config field(s) {', '.join(map(repr, unknown))} for `{command}`; expected some of "
            f"{', '.join(map(repr, FIELDS[command]))}."
        )
    for field, value in data.items():
        if value is not None and field in _CHECKS:
            _CHECKS[field](field, value)
    return data


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= minimum


def _expect(ok: bool, field: str, form: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"Expected field `{field}` to be {form}, but got {value!r}.")


def _text(field: str, value: Any) -> None:
    _expect(isinstance(value, str) and bool(value.strip()), field, "a non-empty string", value)


def _trainer_kwargs(field: str, value: Any) -> None:
    _expect(isinstance(value, dict), field, "a mapping", value)
    for key in ("max_epochs", "min_epochs", "max_steps"):  # Lightning would only assert on these, after building
        if value.get(key) is not None:
            _expect(_is_int(value[key], -1), f"{field}.{key}", "an int", value[key])


#: The type and range of every typed field, checked by :func:`load_config` before anything runs.
_CHECKS: dict[str, Callable[[str, Any], None]] = {
    **dict.fromkeys(("datamodule", "model", "module_factory", "out", "cache_dir", "checkpoint"), _text),
    **{
        f: lambda f_, v: _expect(isinstance(v, dict), f_, "a mapping", v) for f in ("datamodule_kwargs", "model_kwargs")
    },
    "trainer_kwargs": _trainer_kwargs,
    "seed": lambda f, v: _expect(_is_int(v, 0), f, "an int >= 0", v),
    "repeats": lambda f, v: _expect(_is_int(v, 1), f, "an int >= 1", v),
    "train_epochs": lambda f, v: _expect(_is_int(v, 1), f, "an int >= 1", v),
    "num_samples": lambda f, v: _expect(_is_int(v, 1), f, "an int >= 1", v),
    "keep": lambda f, v: _expect(isinstance(v, bool), f, "true or false", v),
    "mode": lambda f, v: _expect(v in ("cascading", "independent"), f, "one of 'cascading', 'independent'", v),
    "threshold": lambda f, v: _expect(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and not v < -1 and v <= 1, f, "a number in [-1, 1]", v
    ),
    "fractions": lambda f, v: _expect(
        isinstance(v, list)
        and bool(v)
        and all(isinstance(x, numbers.Real) and not isinstance(x, bool) and not x <= 0 and x < 1 for x in v),
        f,
        "a non-empty list of numbers in (0, 1)",
        v,
    ),
    "classes": lambda f, v: _expect(
        isinstance(v, list) and bool(v) and all(_is_int(c, 0) for c in v), f, "a list of class indices", v
    ),
    "region": lambda f, v: _expect(
        isinstance(v, list) and len(v) == 4 and all(_is_int(c, 0) for c in v),
        f,
        "a box [x0, y0, x1, y1] of ints or null",
        v,
    ),
    "explainers": lambda f, v: _expect(isinstance(v, list) and bool(v), f, "a non-empty list", v),
    "device": _text,
    "data_version": _text,
    "shard_size": lambda f, v: _expect(_is_int(v, 1), f, "an int >= 1", v),
    "slurm": lambda f, v: _slurm(f, v),
}

#: The sbatch options a ``slurm`` field may set, each with its check (``parallel`` is the array's ``%N`` throttle).
_SLURM_OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "parallel": ("an int >= 1", lambda v: _is_int(v, 1)),
    "cpus_per_task": ("an int >= 1", lambda v: _is_int(v, 1)),
    **dict.fromkeys(
        ("gres", "time", "mem", "partition", "account", "qos"),
        ("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip())),
    ),
}


def _slurm(field: str, value: Any) -> None:
    _expect(isinstance(value, dict), field, "a mapping", value)
    unknown = sorted(set(value) - set(_SLURM_OPTIONS))
    _expect(not unknown, field, f"a mapping of {', '.join(_SLURM_OPTIONS)}", value)
    for name, option in value.items():
        _expect(_SLURM_OPTIONS[name][1](option), f"{field}.{name}", _SLURM_OPTIONS[name][0], option)


def import_object(path: Any, field: str) -> Any:
    """Resolve ``package.module:attribute`` (or a dotted path) named by config ``field``."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(
            f"Expected field `{field}` to be an import path 'package.module:attribute', but got {path!r}."
        )
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"Field `{field}`: cannot import {path!r} ({err}).") from None
    return obj


def _mapping(config: dict, field: str) -> dict:
    value = config.get(field) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"Expected field `{field}` to be a mapping, but got {value!r}.")
    return value


def build_explainer(spec: Any, field: str = "explainers") -> Explainer:
    """An :class:`Explainer` from a short name or a mapping ``{method, layer, name, seed, init_kwargs, kwargs}``."""
    if isinstance(spec, str):
        spec = {"method": spec}
    if not isinstance(spec, dict) or "method" not in spec:
        raise ConfigError(
            f"Expected each entry of `{field}` to be a short name or a mapping with `method`, but got {spec!r}."
        )
    extra = sorted(set(spec) - {"method", "layer", "name", "seed", "init_kwargs", "kwargs"})
    if extra:
        raise ConfigError(
            f"Unknown key(s) {extra} in an entry of `{field}`; expected method, layer, name, seed, init_kwargs, kwargs."
        )
    method = spec["method"]
    if isinstance(method, str) and method not in METHODS and (":" in method or "." in method):
        method = import_object(method, f"{field}.method")
    try:
        return Explainer(
            method,
            layer=spec.get("layer"),
            name=spec.get("name"),
            seed=spec.get("seed", 0),
            init_kwargs=spec.get("init_kwargs"),
            **(spec.get("kwargs") or {}),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"Field `{field}`: {err}") from None


def build_datamodule(config: dict) -> Any:
    """Instantiate the config's data module and run its ``setup``."""
    factory = import_object(config.get("datamodule"), "datamodule")
    if not callable(factory):
        raise ConfigError(
            f"Expected field `datamodule` to name a LightningDataModule class or factory, but got {factory!r}."
        )
    try:
        datamodule = factory(**_mapping(config, "datamodule_kwargs"))
    except TypeError as err:
        raise ConfigError(f"Field `datamodule_kwargs`: {err}") from None
    missing = [
        name
        for name in ("setup", "train_dataloader", "test_dataloader")
        if not callable(getattr(datamodule, name, None))
    ]
    if missing:
        raise ConfigError(
            f"Expected field `datamodule` to build a LightningDataModule (with setup, train_dataloader and "
            f"test_dataloader), but {type(datamodule).__name__} has no {', '.join(missing)}."
        )
    datamodule.setup("fit")
    return datamodule


def build_model(config: dict, datamodule: Any) -> nn.Module:
    """Build the config's model, load its checkpoint and/or train it, and return it in eval mode."""
    from captum_ext.models import fit_classifier

    factory: Callable[..., nn.Module] = import_object(config.get("model"), "model")
    with torch.random.fork_rng():
        torch.manual_seed(int(config.get("seed", 0)))
        model = factory(**_mapping(config, "model_kwargs"))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"Expected field `model` to return an nn.Module, but it returned {type(model).__name__}.")
    if config.get("checkpoint"):
        try:
            state = torch.load(config["checkpoint"], map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"Field `checkpoint`: cannot load {config['checkpoint']!r} ({err}).") from None
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"Field `checkpoint`: {config['checkpoint']!r} does not fit the model of field `model` ({first})."
            ) from None
    epochs = config.get("train_epochs")
    if epochs is not None:
        if not isinstance(epochs, numbers.Integral) or epochs < 1:
            raise ConfigError(f"Expected field `train_epochs` to be a positive int, but got {epochs!r}.")
        fit_classifier(
            model, datamodule, max_epochs=int(epochs), seed=int(config.get("seed", 0)), enable_progress_bar=True
        )
    return model.eval()


def probe_batch(datamodule: Any, num_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_samples`` (all when None) images and labels of the data module's test loader."""
    if num_samples is not None and (not isinstance(num_samples, numbers.Integral) or num_samples < 1):
        raise ConfigError(f"Expected field `num_samples` to be a positive int, but got {num_samples!r}.")
    images, labels, count = [], [], 0
    for batch in datamodule.test_dataloader():
        x, y = unpack_batch(batch)
        images.append(x)
        labels.append(torch.as_tensor(y))
        count += len(y)
        if num_samples is not None and count >= num_samples:
            break
    x, y = torch.cat(images), torch.cat(labels)
    return (x, y) if num_samples is None else (x[:num_samples], y[:num_samples])
