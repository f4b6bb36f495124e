"""The HTML report embeds real PNGs, escapes text, shows explicit verdicts; plots render what they are given."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from captum_ext import plots
from captum_ext.report import Report


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.verdicts, self.cells, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "span" and "verdict" in attrs.get("class", ""):
            self._in = attrs["class"]
        if tag == "td":
            self._in = "td"

    def handle_data(self, data):
        if self._in == "td":
            self.cells.append(data)
        elif self._in:
            self.verdicts.append((self._in, data))
        self._in = None


def test_report_embeds_pngs_tables_and_verdicts(tmp_path):
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    report = Report("t <&>")
    report.add_section(
        "A", text="x < y", table=[{"method": "saliency", "score": 0.12345}], verdict=("passed", True), figures=[fig]
    )
    report.add_section("B", verdict=("failed", False))
    path = report.write(tmp_path / "r.html")
    text = path.read_text()
    assert "t &lt;&amp;&gt;" in text and "x &lt; y" in text
    parsed = _Collector()
    parsed.feed(text)
    assert parsed.cells == ["saliency", "0.123"]
    assert parsed.verdicts == [("verdict pass", "passed"), ("verdict fail", "failed")]
    (src,) = parsed.images
    png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert png.format == "PNG" and png.size == (200, 100)
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"], "no temporary file is left behind"


def test_overlay_grid_draws_the_map_where_it_is_hot():
    images = torch.zeros(1, 1, 16, 16)
    hot = torch.zeros(1, 16, 16)
    hot[0, :8, :8] = 1.0  # top-left quadrant
    array = plots.figure_to_array(plots.overlay_grid(images, {"m": hot}, cmap="gray", alpha=1.0)).astype(float)
    # the second row's panel: its bright part must be the top-left quadrant of the panel
    panel = array[array.shape[0] // 2 :]
    ys, xs = np.nonzero(panel.mean(-1) > 200)
    assert len(ys) > 0
    assert ys.mean() < panel.shape[0] / 2 and xs.mean() < panel.shape[1] / 2


def test_report_contents_link_every_section_and_wide_tables_scroll():
    """Issue #17: a long report opens with a contents list whose links reach every section, and a wide table
    scrolls inside its section instead of widening the page."""
    report = Report("r")
    wide = [{f"column {i}": float(i) for i in range(30)}]
    for title in ("Training", "Audit", "Rollout"):
        report.add_section(title, table=wide)
    text = report.to_html()

    class Anchors(HTMLParser):
        def __init__(self):
            super().__init__()
            self.links, self.ids, self.stack, self.scrolled_tables = [], [], [], 0

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "a" and "nav" in self.stack:
                self.links.append(attrs["href"])
            if tag == "section":
                self.ids.append(attrs["id"])
            if tag == "table" and self.stack and self.stack[-1] == "div.scroll":
                self.scrolled_tables += 1
            self.stack.append(f"{tag}.{attrs['class']}" if attrs.get("class") else tag)

        def handle_endtag(self, tag):
            while self.stack and self.stack.pop().split(".")[0] != tag:
                pass

    parsed = Anchors()
    parsed.feed(text)
    assert parsed.links == [f"#{i}" for i in parsed.ids] and len(parsed.ids) == 3
    assert parsed.scrolled_tables == 3
    single = Report("one")
    single.add_section("Only")
    assert "<nav" not in single.to_html()
