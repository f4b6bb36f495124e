"""One result protocol (issue #17): every result object writes itself with ``to_json(path)`` (returning the path,
atomically) and comes back equal from ``from_json``: the same dict, and every tensor with its values and dtype."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ext.audit import CleverHansAudit, spray
from captum_ext.evaluation import ROADResult, ROARResult
from captum_ext.failures import failure_modes
from captum_ext.features import activation_atlas, concept_iou, top_activating_patches
from captum_ext.models import SmallCNN
from captum_ext.sanity import model_randomization_test

torch.manual_seed(0)
MODEL = SmallCNN().eval()
CONTROL = SmallCNN().eval()
X, Y = torch.rand(12, 1, 32, 32), torch.arange(12) % 3
REGION = torch.zeros(32, 32, dtype=torch.bool)
REGION[24:, 24:] = True
SQUARE = torch.zeros(4, 1, 8, 8)
SQUARE[:, :, 2:4, 2:4] = 1.0

RESULTS = {
    "roar": lambda: ROARResult({"saliency": {0.5: [0.6, 0.62]}, "random": {0.5: [0.8, 0.81]}}, 0.9),
    "road": lambda: ROADResult("saliency", "lerf", {0.3: 0.7, 0.9: 0.4}, {0.3: 0.6, 0.9: 0.3}, 0.8),
    "sanity": lambda: model_randomization_test(MODEL, "saliency", X[:4], keep_maps=2),
    "audit": lambda: CleverHansAudit("input_x_gradient", region=REGION).run(MODEL, (X, Y)),
    "audit_discovery": lambda: CleverHansAudit("input_x_gradient").run(MODEL, (X, Y), control=CONTROL),
    "spray": lambda: spray(torch.rand(12, 8, 8)),
    "concept_iou": lambda: concept_iou(nn.Sequential(nn.Identity()), "0", [(SQUARE, SQUARE[:, 0] > 0)], quantile=0.9),
    "top_patches": lambda: top_activating_patches(MODEL, "features.relu1", 0, DataLoader(TensorDataset(X), 4), k=3),
    "failures": lambda: failure_modes(MODEL, "saliency", X, Y, limit=4),
    "atlas": lambda: activation_atlas(MODEL, "features.relu3", X, Y, grid=2, min_count=1, steps=2),
}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return b is None or (isinstance(b, float) and math.isnan(b))  # not finite: written as null
    return a == b


@pytest.mark.parametrize("name", list(RESULTS))
def test_every_result_round_trips_through_json(name, tmp_path):
    result = RESULTS[name]()
    path = result.to_json(tmp_path / f"{name}.json")
    assert path == tmp_path / f"{name}.json" and [p.name for p in tmp_path.iterdir()] == [path.name]
    loaded = type(result).from_json(path)
    assert loaded.to_dict() == result.to_dict()
    for field in dataclasses.fields(result):
        assert _same(getattr(result, field.name), getattr(loaded, field.name)), field.name
