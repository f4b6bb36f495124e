"""Result dataclasses of the faithfulness benchmarks: :class:`ROARResult` (ROAR / KAR) and :class:`ROADResult`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

from captum_ext._checks import check_real
from captum_ext._results import JSONResult

__all__ = ["ROARResult", "ROADResult", "road_agreement", "road_figure"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


@dataclass
class ROARResult(JSONResult):
    """Test accuracy after removing (ROAR) or keeping (KAR) each method's top-ranked pixels and retraining.

    Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks", NeurIPS 2019.

    Attributes:
        accuracy: ``{method: {fraction: [test accuracy of each repeat]}}``, fractions as floats; the random
            ranking is under ``"random"``.
        baseline_accuracy: Test accuracy of the model trained on unmodified data.
        keep: False for ROAR (top pixels removed), True for KAR (top pixels kept, the rest removed).
        better_than_random: Verdict per method (not ``"random"``): True when, at a majority of the fractions, its
            mean accuracy is lower (ROAR) or higher (KAR) than the random ranking's by more than the larger of
            the two standard deviations over repeats. Derived from ``accuracy``.

    Example::

        >>> result = ROARResult({"saliency": {0.5: [0.6, 0.62]}, "random": {0.5: [0.8, 0.82]}}, 0.9, keep=False)
        >>> result.better_than_random
        {'saliency': True}
    """

    accuracy: dict[str, dict[float, list[float]]]
    baseline_accuracy: float
    keep: bool = False
    better_than_random: dict[str, bool] = field(init=False)

    def __post_init__(self) -> None:
        self.baseline_accuracy = float(self.baseline_accuracy)
        self.better_than_random = {name: self._beats_random(name) for name in self.accuracy if name != "random"}

    @property
    def fractions(self) -> list[float]:
        """The fractions measured, ascending."""
        return sorted({f for per_method in self.accuracy.values() for f in per_method})

    def _beats_random(self, name: str) -> bool:
        random = self.accuracy.get("random", {})
        votes = []
        for fraction, values in self.accuracy[name].items():
            if fraction not in random:
                continue
            mean, std = _mean_std(values)
            random_mean, random_std = _mean_std(random[fraction])
            margin = max(std, random_std)
            votes.append(random_mean - mean > margin if not self.keep else mean - random_mean > margin)
        return bool(votes) and sum(votes) > len(votes) / 2

    def mean_std(self, name: str) -> dict[float, tuple[float, float]]:
        """``{fraction: (mean, std)}`` of one method's accuracy over repeats."""
        return {f: _mean_std(v) for f, v in sorted(self.accuracy[name].items())}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; fraction keys become ``repr`` strings, which :meth:`from_dict` turns back exactly."""
        return {
            "accuracy": {m: {repr(float(f)): list(v) for f, v in per.items()} for m, per in self.accuracy.items()},
            "baseline_accuracy": self.baseline_accuracy,
            "keep": self.keep,
            "better_than_random": dict(self.better_than_random),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ROARResult:
        """Rebuild from :meth:`to_dict` output (float fraction keys restored exactly)."""
        accuracy = {m: {float(f): [float(a) for a in v] for f, v in per.items()} for m, per in data["accuracy"].items()}
        return cls(accuracy, float(data["baseline_accuracy"]), keep=bool(data["keep"]))

    def plot(self) -> Figure:
        """Mean test accuracy vs. fraction per method with ±1 std error bars, and the unmodified baseline."""
        fig = Figure(figsize=(6.0, 4.0))
        ax = fig.add_subplot()
        for name in self.accuracy:
            stats = self.mean_std(name)
            xs = list(stats)
            style: dict[str, Any] = {"color": "black", "linestyle": "--"} if name == "random" else {}
            ax.errorbar(
                xs,
                [m for m, _ in stats.values()],
                yerr=[s for _, s in stats.values()],
                marker="o",
                capsize=3,
                label=name,
                **style,
            )
        ax.axhline(self.baseline_accuracy, color="grey", linestyle=":", label="unmodified")
        ax.set_xlabel("fraction of pixels " + ("kept (KAR)" if self.keep else "removed (ROAR)"))
        ax.set_ylabel("test accuracy after retraining")
        ax.set_title("KAR" if self.keep else "ROAR")
        ax.legend(fontsize="small")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        fractions = self.fractions
        kind = "KAR: top pixels kept" if self.keep else "ROAR: top pixels removed"
        head = f"{'method':<22}" + "".join(f"{f:>14g}" for f in fractions) + "  better than random"
        lines = [f"ROARResult ({kind}; unmodified accuracy {self.baseline_accuracy:.3f})", head]
        for name in self.accuracy:
            stats = self.mean_std(name)
            cells = "".join(
                f"{f'{stats[f][0]:.3f}±{stats[f][1]:.3f}':>14}" if f in stats else f"{'-':>14}" for f in fractions
            )
            verdict = "" if name == "random" else str(self.better_than_random[name])
            lines.append(f"{name:<22}{cells}  {verdict}")
        return "\n".join(lines)


@dataclass
class ROADResult(JSONResult):
    """Accuracy after removing (MoRF) or keeping (LeRF) pixels by rank with noisy linear imputation, no retraining.

    Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022.

    Attributes:
        explainer: The explainer's name.
        order: ``"morf"`` (most relevant first removed) or ``"lerf"`` (least relevant first removed).
        accuracy: ``{fraction: accuracy}`` for the explainer's ranking.
        random_accuracy: ``{fraction: accuracy}`` for a seeded random ranking on the same images.
        baseline_accuracy: Accuracy on the unmodified images.
        better_than_random: Verdict: the mean accuracy over fractions is lower (MoRF) or higher (LeRF) than the
            random ranking's.

    Example::

        >>> r = ROADResult("saliency", "morf", {0.5: 0.4}, {0.5: 0.7}, 0.9)
        >>> r.better_than_random
        True
    """

    explainer: str
    order: str
    accuracy: dict[float, float]
    random_accuracy: dict[float, float]
    baseline_accuracy: float
    better_than_random: bool = field(init=False)

    def __post_init__(self) -> None:
        ours = statistics.fmean(self.accuracy.values())
        random = statistics.fmean(self.random_accuracy.values())
        self.better_than_random = bool(ours < random if self.order == "morf" else ours > random)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (fraction keys as ``repr`` strings)."""
        return {
            "explainer": self.explainer,
            "order": self.order,
            "accuracy": {repr(float(f)): a for f, a in self.accuracy.items()},
            "random_accuracy": {repr(float(f)): a for f, a in self.random_accuracy.items()},
            "baseline_accuracy": self.baseline_accuracy,
            "better_than_random": self.better_than_random,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ROADResult:
        """Rebuild from :meth:`to_dict` output (float fraction keys restored exactly)."""
        return cls(
            data["explainer"],
            data["order"],
            {float(f): float(a) for f, a in data["accuracy"].items()},
            {float(f): float(a) for f, a in data["random_accuracy"].items()},
            float(data["baseline_accuracy"]),
        )

    def plot(self) -> Figure:
        """Accuracy vs. fraction removed for the explainer and the random ranking, with the unmodified baseline
        (:func:`road_figure` of this one result)."""
        return road_figure([self])

    def __repr__(self) -> str:
        lines = [
            f"ROADResult ({self.order.upper()}, {self.explainer}; unmodified accuracy {self.baseline_accuracy:.3f}; "
            f"better than random: {self.better_than_random})",
            f"{'fraction':>10}{self.explainer[:14]:>16}{'random':>10}",
        ]
        for f in self.accuracy:
            lines.append(f"{f:>10g}{self.accuracy[f]:>16.3f}{self.random_accuracy.get(f, math.nan):>10.3f}")
        return "\n".join(lines)


def road_agreement(morf: ROADResult, lerf: ROADResult, margin: float = 0.02) -> str:
    """Rong et al.'s two orders read together: ``"both orders"`` when the method beats random removing its most
    relevant pixels first (MoRF: lower mean accuracy) and its least relevant first (LeRF: higher), else the one order
    it wins, or ``"neither"``. A win needs the mean accuracies over fractions to differ by more than ``margin``
    (default 0.02), so a difference of one or two images in a hundred is not a win (``ROADResult.better_than_random``
    has no margin, so the two can differ by a hair).

    Example::

        >>> morf = ROADResult("saliency", "morf", {0.5: 0.2}, {0.5: 0.6}, 0.8)
        >>> lerf = ROADResult("saliency", "lerf", {0.5: 0.59}, {0.5: 0.6}, 0.8)
        >>> road_agreement(morf, lerf)
        'MoRF only'
    """
    for name, result in (("morf", morf), ("lerf", lerf)):
        if not isinstance(result, ROADResult) or result.order != name:
            got = f"one with order {result.order!r}" if isinstance(result, ROADResult) else type(result).__name__
            raise ValueError(f"Expected argument `{name}` to be a ROADResult with order {name!r}, but got {got}.")
    if morf.explainer != lerf.explainer:
        raise ValueError(
            f"Expected arguments `morf` and `lerf` to score one explainer, but got {morf.explainer!r} and {lerf.explainer!r}."
        )
    margin = check_real("margin", margin, 0.0)
    gain = {
        "MoRF": statistics.fmean(morf.random_accuracy.values()) - statistics.fmean(morf.accuracy.values()),
        "LeRF": statistics.fmean(lerf.accuracy.values()) - statistics.fmean(lerf.random_accuracy.values()),
    }
    wins = [order for order, value in gain.items() if value > margin]
    return "both orders" if len(wins) == 2 else f"{wins[0]} only" if wins else "neither"


def road_figure(results: Sequence[ROADResult]) -> Figure:
    """One panel per order (MoRF, LeRF) of ROAD results: each explainer's accuracy against the fraction removed, the
    random ranking dashed and the unmodified accuracy dotted (both from the first result of that order).

    Example::

        >>> morf = ROADResult("saliency", "morf", {0.1: 0.5, 0.5: 0.2}, {0.1: 0.7, 0.5: 0.6}, 0.8)
        >>> len(road_figure([morf]).axes)
        1
    """
    orders = [order for order in ("morf", "lerf") if any(r.order == order for r in results)]
    if not orders:
        raise ValueError("Expected argument `results` to hold at least one ROADResult, but got none.")
    fig = Figure(figsize=(4.6 * len(orders), 3.6))
    for ax, order in zip(fig.subplots(1, len(orders), squeeze=False)[0], orders):
        chosen = [r for r in results if r.order == order]
        for r in chosen:
            ax.plot(list(r.accuracy), list(r.accuracy.values()), marker="o", label=r.explainer)
        first = chosen[0]
        random = first.random_accuracy
        ax.plot(list(random), list(random.values()), color="black", linestyle="--", marker="o", label="random")
        ax.axhline(first.baseline_accuracy, color="grey", linestyle=":", label="unmodified")
        title = "MoRF: most relevant removed first (lower is better)"
        if order == "lerf":
            title = "LeRF: least relevant removed first (higher is better)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction removed")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
