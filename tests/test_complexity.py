"""Complexity metrics (issue #16) against the formulas written here, element by element, and under DDP."""

from __future__ import annotations

import math

import pytest
import torch

from captum_ext.metrics import Complexity, EffectiveComplexity, Sparseness
from captum_ext.metrics.complexity import complexity, effective_complexity, sparseness


def _gini(values: list[float]) -> float:
    """Chalasani et al. 2020, eq. for the Gini index, with plain Python loops."""
    v = sorted(abs(x) for x in values)
    n, total = len(v), sum(abs(x) for x in values)
    return sum((2 * (i + 1) - n - 1) * v[i] for i in range(n)) / (n * total) if total else math.nan


def _entropy(values: list[float]) -> float:
    total = sum(abs(x) for x in values)
    return -sum(abs(x) / total * math.log(abs(x) / total) for x in values if x != 0)


def test_each_score_equals_its_formula_on_random_and_extreme_maps():
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 3, 6, 6, generator=gen)
    maps[1] = 0.0
    maps[1, 0, 2, 3] = -4.0  # one value carries everything
    maps[2] = 1.5  # all equal
    maps[3] = 0.0  # nothing
    maps[4, :, :3] = 1e-7  # many values below eps
    flat = [m.flatten().tolist() for m in maps]
    with pytest.warns(RuntimeWarning, match=r"sparseness: 1 of 5 maps are all zero; their sparseness is undefined"):
        torch.testing.assert_close(
            sparseness(maps), torch.tensor([_gini(v) for v in flat]), rtol=1e-5, atol=1e-6, equal_nan=True
        )
    with pytest.warns(RuntimeWarning, match=r"complexity: 1 of 5 maps are all zero"):
        torch.testing.assert_close(
            complexity(maps),
            torch.tensor([_entropy(v) if any(v) else math.nan for v in flat]),
            rtol=1e-5,
            atol=1e-6,
            equal_nan=True,
        )
    metric = Sparseness()
    with pytest.warns(RuntimeWarning, match="all zero"):
        metric.update(maps)
    assert float(metric.compute()) == pytest.approx(float(sparseness(maps[[0, 1, 2, 4]]).mean()), rel=1e-6)
    assert effective_complexity(maps).tolist() == [float(sum(abs(x) > 1e-5 for x in v)) for v in flat]
    assert sparseness(maps)[1] == pytest.approx(1 - 1 / 108) and sparseness(maps)[2] == pytest.approx(0.0, abs=1e-6)
    assert complexity(maps)[2] == pytest.approx(math.log(108)) and complexity(maps)[1] == 0.0


def test_metrics_average_over_batches_and_refuse_bad_maps():
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(7, 8, 8, generator=gen) ** 4
    for metric, function in ((Sparseness(), sparseness), (Complexity(), complexity), (EffectiveComplexity(1e-3), None)):
        metric.update(maps[:3])
        metric.update(maps[3:])
        expected = (function(maps) if function else effective_complexity(maps, 1e-3)).mean()
        assert float(metric.compute()) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        sparseness(torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="`attributions` to be a float"):
        complexity(torch.ones(4, dtype=torch.long))
