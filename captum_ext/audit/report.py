"""``AuditReport``: the per-class evidence of a :class:`~captum_ext.audit.CleverHansAudit`, with its verdicts.

Example::

    >>> import torch
    >>> from captum_ext.audit import CleverHansAudit
    >>> from captum_ext.models import SmallCNN
    >>> x, y = torch.rand(8, 1, 32, 32), torch.tensor([0, 1] * 4)
    >>> report = CleverHansAudit("input_x_gradient", region=(0, 0, 4, 4)).run(SmallCNN(), (x, y))
    >>> sorted(report.to_dict()["classes"]), type(report.plot()).__name__
    ([0, 1], 'Figure')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from captum_ext._results import JSONResult
from captum_ext.boxes import box_to_mask
from captum_ext.report import Report

__all__ = ["AuditReport"]

# (key in classes[c], column title, format)
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("n_images", "n", "{:d}"),
    ("relevance_mass", "mass", "{:.3f}"),
    ("area", "area", "{:.3f}"),
    ("ratio", "ratio", "{:.2f}"),
    ("pointing_game", "point", "{:.2f}"),
    ("rank_accuracy", "rank", "{:.2f}"),
    ("specificity", "spec", "{:.1f}"),
    ("consistency", "cons", "{:.2f}"),
    ("accuracy_drop", "acc drop", "{:+.2f}"),
    ("flip_rate", "flip", "{:.2f}"),
    ("intervention_p", "p", "{:.0e}"),
    ("control_ratio", "ctrl ratio", "{:.2f}"),
)


def _fmt(value: Any, form: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return form.format(value)


def _plain(value: Any) -> Any:
    """JSON-able copy: tensors to lists, tuples to lists, non-finite floats to None."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class AuditReport(JSONResult):
    """What a Clever Hans audit found, per class, and which classes it flags.

    Attributes:
        explainer: name of the explainer used.
        region: the given (H, W) bool region; None in discovery mode (each class's found box is in
            ``classes[c]["region"]``).
        classes: ``{class: {"n_images", "relevance_mass", "area", "ratio", "pointing_game", "rank_accuracy",
            "specificity", "consistency", "accuracy_before", "accuracy_after", "accuracy_drop", "flip_rate",
            "flip_source", "placebo_drop", "placebo_flip_rate", "intervention_p", "control_ratio", "region",
            "candidate_region", "evidence", "agreement", "flagged", "reason"}}``; ``evidence`` holds the verdict of
            each criterion (``"localised"``, ``"attribution"``, ``"counterfactual"``, ``"control"``,
            ``"candidate"``; None where it does not apply); ``agreement`` says whether the maps and the intervention
            agree, and which one disagrees; ``reason`` is one line saying why the class was or was not flagged; in
            discovery mode ``candidate_region`` is the box drawn from relevance and ``region`` the box refined by
            intervention.
        class_maps: ``{class: (H, W) mean of the class's maps, each normalised to sum 1}``.
        flagged: the classes the intervention shows to rely on the region, with every other applicable criterion
            agreeing (:func:`captum_ext.audit.clever_hans.flag_rule`).
        thresholds: the thresholds used.
        target: ``"label"`` or ``"prediction"``.
        imputer: repr of the imputer used for ``accuracy_drop``.
        n_images: number of images audited.
        control_class_maps: the control model's class-mean maps, or None without a control.
    """

    explainer: str
    region: torch.Tensor | None
    classes: dict[int, dict[str, Any]]
    class_maps: dict[int, torch.Tensor]
    flagged: list[int]
    thresholds: dict[str, float]
    target: str
    imputer: str
    n_images: int
    control_class_maps: dict[int, torch.Tensor] | None = None

    def region_of(self, cls: int) -> torch.Tensor | None:
        """The (H, W) bool region measured for ``cls``: the given one, or the box discovered for it."""
        if self.region is not None:
            return self.region
        box = self.classes[cls].get("region")
        if box is None:
            return None
        h, w = self.class_maps[cls].shape
        return box_to_mask(box, (h, w))

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (tensors as nested lists, non-finite numbers as None)."""
        return _plain(
            {
                "explainer": self.explainer,
                "target": self.target,
                "imputer": self.imputer,
                "n_images": self.n_images,
                "region": self.region,
                "flagged": list(self.flagged),
                "thresholds": self.thresholds,
                "classes": self.classes,
                "class_maps": self.class_maps,
                "control_class_maps": self.control_class_maps,
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditReport:
        """The report :meth:`to_dict` described: class keys back to ints, maps and region back to tensors (a number
        that was not finite stays None)."""

        def maps(value: dict[str, Any] | None) -> dict[int, torch.Tensor] | None:
            return None if value is None else {int(c): torch.tensor(m, dtype=torch.float32) for c, m in value.items()}

        return cls(
            explainer=data["explainer"],
            region=None if data["region"] is None else torch.tensor(data["region"], dtype=torch.bool),
            classes={
                int(c): {
                    **entry,
                    **{key: tuple(entry[key]) for key in ("region", "candidate_region") if entry.get(key) is not None},
                }
                for c, entry in data["classes"].items()
            },
            class_maps=maps(data["class_maps"]) or {},
            flagged=[int(c) for c in data["flagged"]],
            thresholds=data["thresholds"],
            target=data["target"],
            imputer=data["imputer"],
            n_images=int(data["n_images"]),
            control_class_maps=maps(data["control_class_maps"]),
        )

    # -- display ----------------------------------------------------------------------------------------------
    def _rows(self) -> list[list[str]]:
        rows = []
        for cls, entry in self.classes.items():
            cells = [str(cls)] + [_fmt(entry.get(key), form) for key, _, form in _COLUMNS]
            rows.append(cells + ["FLAGGED" if entry.get("flagged") else ""])
        return rows

    def _header(self) -> list[str]:
        return ["class"] + [title for _, title, _ in _COLUMNS] + ["verdict"]

    def __repr__(self) -> str:
        mode = f"region given ({int(self.region.sum())} px)" if self.region is not None else "discovery"
        lines = [f"AuditReport(explainer={self.explainer!r}, target={self.target!r}, {self.n_images} images, {mode})"]
        table = [self._header()] + self._rows()
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths)).rstrip())
        lines.append(f"flagged: {self.flagged}")
        lines += [f"class {cls}: {entry.get('reason', '')}" for cls, entry in self.classes.items()]
        return "\n".join(lines)

    def table(self) -> list[dict[str, str]]:
        """The evidence table as one ``{column title: formatted value}`` dict per class (what ``repr`` prints and
        :meth:`to_html` shows)."""
        return [dict(zip(self._header(), row)) for row in self._rows()]

    def plot(self, columns: int = 5, table: bool = True) -> Figure:
        """Class-mean maps with the region outlined (flagged classes titled in red; the control's maps below when
        there is a control), and the evidence table.

        Args:
            columns: maps per row. Default 5.
            table: draw the evidence table under the maps; False where the table is shown as text beside the
                figure (the HTML pages). Default True.

        Returns:
            a matplotlib ``Figure`` (no pyplot state is touched).
        """
        sets = [("", self.class_maps)] + ([("control ", self.control_class_maps)] if self.control_class_maps else [])
        classes = list(self.class_maps)
        columns = max(1, min(columns, len(classes)))
        map_rows = math.ceil(len(classes) / columns) * len(sets)
        table_height = 0.3 * (len(classes) + 2) if table else 0.0
        fig = Figure(figsize=(max(2.0 * columns, 11.0 if table else 8.0), 2.1 * map_rows + table_height + 0.3))
        grid = fig.add_gridspec(map_rows + 1, columns, height_ratios=[2.1] * map_rows + [max(table_height, 1e-3)])
        for set_index, (prefix, maps) in enumerate(sets):
            for i, cls in enumerate(classes):
                row = set_index * math.ceil(len(classes) / columns) + i // columns
                ax = fig.add_subplot(grid[row, i % columns])
                ax.set_xticks([])
                ax.set_yticks([])
                if cls not in maps:
                    ax.set_axis_off()
                    continue
                image = maps[cls].float()
                ax.imshow(image.numpy(), cmap="inferno", vmin=0.0, vmax=max(float(image.max()), 1e-12))
                region = self.region_of(cls)
                if region is not None:  # padded so the outline closes along the image border
                    h, w = region.shape
                    padded = np.pad(region.float().numpy(), 1)
                    ax.contour(
                        np.arange(-1, w + 1), np.arange(-1, h + 1), padded, levels=[0.5], colors="cyan", linewidths=1.0
                    )
                    ax.set_xlim(-0.5, w - 0.5)
                    ax.set_ylim(h - 0.5, -0.5)
                entry = self.classes[cls]
                ratio = entry.get("control_ratio") if prefix else entry.get("ratio")
                label = f"{prefix}class {cls}" + ("" if ratio is None else f": ratio {ratio:.1f}")
                flagged = bool(entry.get("flagged")) and not prefix
                ax.set_title(label, fontsize=8, color="red" if flagged else "black")
        if table:
            ax = fig.add_subplot(grid[map_rows, :])
            ax.set_axis_off()
            drawn = ax.table(cellText=self._rows(), colLabels=self._header(), loc="center", cellLoc="right")
            drawn.auto_set_font_size(False)
            drawn.set_fontsize(7)
        mode = "given region" if self.region is not None else "discovered regions"
        fig.suptitle(f"Clever Hans audit ({self.explainer}, {mode}): flagged {self.flagged}", fontsize=10)
        return fig

    def to_html(self) -> str:
        """A self-contained HTML page (:class:`captum_ext.report.Report`): verdict, figure, evidence table, thresholds."""
        mode = "given region" if self.region is not None else "discovered regions"
        page = Report(f"Clever Hans audit: {self.explainer}")
        text = (
            f"{self.n_images} images, target {self.target}, {mode}, imputer {self.imputer}. "
            "Thresholds: " + ", ".join(f"{k} = {v:g}" for k, v in self.thresholds.items()) + "."
        )
        verdict = (f"flagged classes: {self.flagged}" if self.flagged else "no class flagged", not self.flagged)
        page.add_section(
            "Evidence per class", text=text, table=self.table(), verdict=verdict, figures=[self.plot(table=False)]
        )
        reasons = [{"class": str(cls), "why": entry.get("reason", "")} for cls, entry in self.classes.items()]
        page.add_section("Why each class was or was not flagged", table=reasons)
        return page.to_html()
