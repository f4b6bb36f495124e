"""A self-contained HTML report: sections with text, tables, verdicts and embedded PNG figures.

Example::

    >>> from captum_ext.report import Report
    >>> report = Report("demo")
    >>> report.add_section("Sanity", text="Gradient depends on the weights.", verdict=("passed", True),
    ...                    table=[{"method": "saliency", "spearman": 0.31}])
    >>> "<table" in report.to_html()
    True
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from captum_ext._io import write_text_atomic
from captum_ext.plots import figure_to_png

__all__ = ["Report"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
nav{background:#f7f7f7;border:1px solid #ddd;border-radius:4px;padding:.4em 1em;margin-bottom:1.5em}
nav ol{margin:.3em 0;padding-left:1.4em;columns:2}h2 a{color:inherit;text-decoration:none}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:.85em;white-space:nowrap}th{background:#f3f3f3}
td{text-align:right}td:first-child{text-align:left}.verdict{font-weight:bold;padding:2px 8px;border-radius:4px}
.pass{background:#d8f5d8}.fail{background:#fbd5d5}img{max-width:100%;margin:.4em 0}.top{font-size:.8em}
"""


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


@dataclass
class _Section:
    title: str
    text: str | None = None
    table: list[dict] | None = None
    verdict: tuple[str, bool] | None = None
    figures: list[bytes] = field(default_factory=list)


class Report:
    """Collect sections and write one HTML file with every figure embedded as base64 PNG."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[_Section] = []

    def add_section(
        self,
        title: str,
        text: str | None = None,
        table: Sequence[dict] | None = None,
        verdict: tuple[str, bool] | None = None,
        figures: Sequence[Figure] = (),
    ) -> None:
        """Add a section; ``verdict`` is ``(label, ok)``, shown green when ``ok`` and red otherwise."""
        self.sections.append(
            _Section(title, text, list(table) if table else None, verdict, [figure_to_png(f) for f in figures])
        )

    def to_html(self) -> str:
        """The whole report as one HTML string: a contents list linking every section, then the sections; wide
        tables scroll sideways inside their section instead of widening the page."""
        parts = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
            f"<style>{_STYLE}</style></head><body><h1 id='top'>{html.escape(self.title)}</h1>",
        ]
        if len(self.sections) > 1:
            links = "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(self.sections))
            parts.append(f"<nav><strong>Contents</strong><ol>{links}</ol></nav>")
        for i, section in enumerate(self.sections):
            parts.append(f"<section id='s{i}'><h2><a href='#s{i}'>{html.escape(section.title)}</a></h2>")
            if section.verdict is not None:
                label, ok = section.verdict
                parts.append(
                    f"<p>Verdict: <span class='verdict {'pass' if ok else 'fail'}'>{html.escape(label)}</span></p>"
                )
            if section.text:
                parts.append(f"<p>{html.escape(section.text)}</p>")
            if section.table:
                columns = list(dict.fromkeys(k for row in section.table for k in row))
                parts.append(
                    "<div class='scroll'><table><tr>"
                    + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
                    + "</tr>"
                )
                for row in section.table:
                    parts.append("<tr>" + "".join(f"<td>{_cell(row.get(c, ''))}</td>" for c in columns) + "</tr>")
                parts.append("</table></div>")
            for png in section.figures:
                parts.append(
                    f"<img alt='{html.escape(section.title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                )
            if len(self.sections) > 1:
                parts.append("<p class='top'><a href='#top'>back to contents</a></p>")
            parts.append("</section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report atomically (temporary file, then rename) and return its path."""
        return write_text_atomic(self.to_html(), path)
