"""``SanityResult``: what a model- or data-randomisation sanity check found (Adebayo et al., NeurIPS 2018)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from matplotlib.figure import Figure

from captum_ext import maps as map_utils
from captum_ext._results import JSONResult

__all__ = ["SanityResult"]


@dataclass
class SanityResult(JSONResult):
    """Similarity between the original maps and the maps after each randomisation step, with the verdicts.

    Attributes:
        test: ``"model"`` (parameter randomisation) or ``"data"`` (label randomisation).
        mode: ``"cascading"``, ``"independent"`` or ``"data"``.
        explainer: the explainer's name.
        layers: one label per randomisation step, in the order applied (top-down by default); for the data
            test the single step ``"random labels"``. A model's own parameters (``""``) show as ``"<model>"``.
        similarity: ``{metric: [mean over images after each step]}``, aligned with ``layers``.
        similarity_std: ``{metric: [standard deviation over images after each step]}``.
        noise_floor: ``{metric: mean similarity between two explanation passes of the unchanged model}`` over the
            first 16 probe images: 1 for a deterministic explainer, near 0 for a noise "explainer".
        threshold: the Spearman(|map|) level below which a map counts as changed.
        passed: Spearman(|map|) after the first and after the last step are both below ``threshold``: the map
            depends on the weights (or the labels). A pure-noise explainer passes this alone; read ``reproducible``.
        reproducible: the noise floor's Spearman(|map|) is at least ``threshold``: the explainer gives the same map
            twice for the same model, so a drop after randomisation is caused by the model, not by the explainer's
            own noise. A noise explainer is ``passed=True, reproducible=False``: the check says nothing about it.
        train_accuracy: data test only: the accuracy the random-label model reached on its (permuted) training set.
        maps: optional (steps + 1, K, H, W) ``"sum_abs"`` maps of the first K probe images: the original first,
            then one per step (for the map grid).
        images: optional (K, C, H, W) probe images matching ``maps``.
        unchanged: model test with a deterministic method only: the steps whose re-initialisation left every
            parameter and buffer as it was (a BatchNorm of a freshly initialised model is already at its initial
            values); their maps are the previous step's (cascading) or the original's (independent), not computed
            again.
        passes: the attribution passes made over the probe batch (the noise floor's shorter pass not counted):
            ``1 + len(layers) - len(unchanged)`` for the model test, 2 for the data test.
    """

    test: Literal["model", "data"]
    mode: Literal["cascading", "independent", "data"]
    explainer: str
    layers: list[str]
    similarity: dict[str, list[float]]
    similarity_std: dict[str, list[float]]
    noise_floor: dict[str, float]
    threshold: float
    passed: bool
    reproducible: bool
    train_accuracy: float | None = None
    maps: torch.Tensor | None = field(default=None, repr=False)
    images: torch.Tensor | None = field(default=None, repr=False)
    unchanged: list[str] = field(default_factory=list)
    passes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able Python values (tensors as nested lists)."""
        out: dict[str, Any] = {
            "test": self.test,
            "mode": self.mode,
            "explainer": self.explainer,
            "layers": list(self.layers),
            "similarity": {k: [float(v) for v in vs] for k, vs in self.similarity.items()},
            "similarity_std": {k: [float(v) for v in vs] for k, vs in self.similarity_std.items()},
            "noise_floor": {k: float(v) for k, v in self.noise_floor.items()},
            "threshold": float(self.threshold),
            "passed": bool(self.passed),
            "reproducible": bool(self.reproducible),
            "train_accuracy": None if self.train_accuracy is None else float(self.train_accuracy),
            "unchanged": list(self.unchanged),
            "passes": self.passes,
        }
        out["maps"] = None if self.maps is None else self.maps.tolist()
        out["images"] = None if self.images is None else self.images.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SanityResult:
        """The result :meth:`to_dict` described (maps and images back as float tensors)."""

        def tensor(key: str) -> torch.Tensor | None:
            return None if data.get(key) is None else torch.tensor(data[key], dtype=torch.float32)

        return cls(
            test=data["test"],
            mode=data["mode"],
            explainer=data["explainer"],
            layers=list(data["layers"]),
            similarity=data["similarity"],
            similarity_std=data["similarity_std"],
            noise_floor=data["noise_floor"],
            threshold=float(data["threshold"]),
            passed=bool(data["passed"]),
            reproducible=bool(data["reproducible"]),
            train_accuracy=data["train_accuracy"],
            maps=tensor("maps"),
            images=tensor("images"),
            unchanged=list(data.get("unchanged", [])),
            passes=data.get("passes"),
        )

    def plot(self, kind: Literal["curve", "maps"] = "curve") -> Figure:
        """The curve (similarity vs. randomisation step, one line per metric, as in Adebayo's Fig. 2) or the map
        grid (probe images x original map and each step's map, each map scaled to [0, 1]).

        Raises:
            ValueError: ``kind`` unknown, or ``"maps"`` asked of a result that kept no maps.
        """
        if kind == "curve":
            return self._plot_curve()
        if kind == "maps":
            if self.maps is None:
                raise ValueError("This SanityResult kept no maps: run the test with `keep_maps` > 0 for the map grid.")
            return self._plot_maps(self.maps)
        raise ValueError(f"Expected argument `kind` to be one of 'curve', 'maps', but got {kind!r}.")

    def _plot_curve(self) -> Figure:
        fig = Figure(figsize=(max(4.0, 0.6 * len(self.layers) + 2.5), 3.6), layout="constrained")
        ax = fig.add_subplot()
        x = list(range(len(self.layers) + 1))
        for name, values in self.similarity.items():
            mean = torch.tensor([1.0, *values])
            std = torch.tensor([0.0, *self.similarity_std[name]])
            (line,) = ax.plot(x, mean.tolist(), marker="o", label=name)
            ax.fill_between(x, (mean - std).tolist(), (mean + std).tolist(), color=line.get_color(), alpha=0.15)
        ax.axhline(self.threshold, color="grey", linestyle=":", label=f"threshold {self.threshold:g}")
        floor = self.noise_floor.get("spearman_abs")
        if floor is not None:
            ax.axhline(floor, color="black", linestyle="--", linewidth=0.8, label="noise floor (spearman_abs)")
        ax.set_xticks(x, ["original", *self.layers], rotation=45, ha="right")
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("similarity to original map")
        verdict = (
            "passed"
            if self.passed and self.reproducible
            else ("not reproducible" if not self.reproducible else "failed")
        )
        ax.set_title(f"{self.explainer}: {self.mode} randomisation ({verdict})", fontsize=10)
        ax.legend(fontsize=7, loc="lower left")
        return fig

    def _plot_maps(self, maps: torch.Tensor) -> Figure:
        steps, k = maps.shape[0], maps.shape[1]
        cols = steps + (1 if self.images is not None else 0)
        fig = Figure(figsize=(1.3 * cols, 1.4 * k + 0.4), layout="constrained")
        axes = fig.subplots(k, cols, squeeze=False)
        titles = ["original", *self.layers]
        for row in range(k):
            col = 0
            if self.images is not None:
                image = self.images[row].float()
                shown = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0).clamp(0, 1)
                axes[row][0].imshow(shown.numpy(), cmap="gray")
                if row == 0:
                    axes[row][0].set_title("input", fontsize=7)
                col = 1
            for s in range(steps):
                shown = map_utils.normalize_minmax(maps[s, row][None])[0]
                axes[row][col + s].imshow(shown.numpy(), cmap="gray", vmin=0, vmax=1)
                if row == 0:
                    axes[row][col + s].set_title(titles[s], fontsize=7, rotation=30)
        for ax in fig.axes:
            ax.set_xticks([])
            ax.set_yticks([])
        return fig

    def __repr__(self) -> str:
        names = list(self.similarity)
        label_width = max([len("step"), *map(len, self.layers)])
        header = f"{'step':<{label_width}}  " + "  ".join(f"{n:>12}" for n in names)
        rows = [
            f"{layer:<{label_width}}  " + "  ".join(f"{self.similarity[n][i]:>12.3f}" for n in names)
            for i, layer in enumerate(self.layers)
        ]
        floor = f"{'noise floor':<{label_width}}  " + "  ".join(
            f"{self.noise_floor.get(n, float('nan')):>12.3f}" for n in names
        )
        extra = "" if self.train_accuracy is None else f", random-label train accuracy {self.train_accuracy:.3f}"
        verdict = (
            f"passed={self.passed} (spearman_abs after first and last step < {self.threshold:g}), "
            f"reproducible={self.reproducible}{extra}"
        )
        title = f"SanityResult({self.test} randomisation, {self.mode}, explainer={self.explainer!r})"
        return "\n".join([title, header, *rows, floor, verdict])
