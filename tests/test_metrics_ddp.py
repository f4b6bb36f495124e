"""Two gloo ranks with disjoint, unequal shards: every synced torchmetrics state in ``captum_ext.metrics`` gives
the value one process computes on the union (DESIGN: metrics are tested under a real 2-process sync)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from captum_ext.metrics import (
    AOPC,
    IROF,
    AvgSensitivity,
    Complexity,
    DeletionAUC,
    EffectiveComplexity,
    FaithfulnessCorrelation,
    InsertionAUC,
    LocalisationError,
    LocalLipschitzEstimate,
    MapSimilarity,
    MaxSensitivity,
    MonotonicityCorrelation,
    RandomLogit,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
    Sparseness,
)
from captum_ext.metrics.localisation import largest_component_box

FAITHFULNESS = {"DeletionAUC": DeletionAUC, "InsertionAUC": InsertionAUC, "AOPC": AOPC}


def _model() -> torch.nn.Module:
    with torch.random.fork_rng():  # the same weights in every process, the caller's RNG untouched
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))


def _tanh_model() -> torch.nn.Module:
    """A network whose saliency moves with the input (a linear model's would not: its sensitivities are all 0)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _values(x: torch.Tensor, attr: torch.Tensor, maps_b: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    model = _model()
    values = {}
    for name, cls in FAITHFULNESS.items():
        metric = cls(steps=4)
        metric.update(model, x, attr, target)
        values[name] = float(metric.compute())
    similarity = MapSimilarity(("spearman", "spearman_abs", "ssim"))
    similarity.update(attr, maps_b)
    values.update({f"similarity/{k}": float(v) for k, v in similarity.compute().items()})
    localisation = LocalisationError()  # the maps' own boxes: the error is 1 exactly where "predicted" != label
    predicted = torch.where(attr.flatten(1).sum(1) > 0, target, (target + 1) % 3)  # by content, not by shard position
    localisation.update(attr, largest_component_box(attr), predicted, target)
    values["LocalisationError"] = float(localisation.compute())
    # the metrics beyond Quantus: every random draw (subsets, noise, other classes) is the same for every image
    with_maps = {
        "FaithfulnessCorrelation": FaithfulnessCorrelation(runs=12, subset_size=8),
        "IROF": IROF(n_segments=4),
        "MonotonicityCorrelation": MonotonicityCorrelation(features_in_step=8, samples=3),
    }
    explaining = {
        "MaxSensitivity": MaxSensitivity("saliency", samples=3),
        "AvgSensitivity": AvgSensitivity("saliency", samples=3),
        "LocalLipschitzEstimate": LocalLipschitzEstimate("saliency", samples=3),
        "RandomLogit": RandomLogit("saliency", 3),
        "RelativeInputStability": RelativeInputStability("input_x_gradient", samples=3),
        "RelativeOutputStability": RelativeOutputStability("input_x_gradient", samples=3),
        "RelativeRepresentationStability": RelativeRepresentationStability("input_x_gradient", "2", samples=3),
    }
    for name, metric in {**with_maps, **explaining}.items():
        metric.update(model if name in with_maps else _tanh_model(), x, attr if name in with_maps else None, target)
        values[name] = float(metric.compute())
    for name, metric in (
        ("Sparseness", Sparseness()),
        ("Complexity", Complexity()),
        ("EffectiveComplexity", EffectiveComplexity()),
    ):
        metric.update(attr)
        values[name] = float(metric.compute())
    return values


def _worker(rank: int, world: int, port: int, shards: list, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        out.put((rank, _values(*shards[rank])))
    finally:
        dist.destroy_process_group()


def test_faithfulness_and_similarity_states_sync_to_the_union():
    gen = torch.Generator().manual_seed(3)
    n = 7
    data = (
        torch.rand(n, 1, 8, 8, generator=gen),
        torch.randn(n, 1, 8, 8, generator=gen),
        torch.randn(n, 1, 8, 8, generator=gen),
        torch.randint(0, 3, (n,), generator=gen),
    )
    shards = [tuple(t[:2] for t in data), tuple(t[2:] for t in data)]
    queue = mp.get_context("fork").SimpleQueue()
    mp.start_processes(_worker, args=(2, free_port(), shards, queue), nprocs=2, join=True, start_method="fork")
    out = dict(queue.get() for _ in range(2))
    expected = _values(*data)
    for rank in (0, 1):
        assert out[rank].keys() == expected.keys()
        for name, value in expected.items():
            assert abs(out[rank][name] - value) < 1e-6 * max(1.0, abs(value)), (rank, name, out[rank][name], value)
