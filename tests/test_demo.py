"""The demo in --fast mode: it runs, and its report holds the expected sections, images and verdicts."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from captum_ext.cli import main


class _Outline(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.verdicts, self._tag = [], 0, [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.images += tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,")
        if tag == "a" and self._tag == "h2":  # a section title is a link to itself
            return
        self._tag = ("verdict", attrs["class"]) if tag == "span" and "verdict" in attrs.get("class", "") else tag

    def handle_data(self, data):
        if self._tag == "h2":
            self.sections.append(data)
        elif isinstance(self._tag, tuple):
            self.verdicts.append((data, "pass" in self._tag[1]))
        self._tag = None


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--fast"]) == 0
    return out


def test_fast_demo_report_has_every_section_with_figures_and_verdicts(demo):
    outline = _Outline()
    outline.feed((demo / "report.html").read_text())
    for expected in (
        "Training",
        "Sanity check: saliency",
        "Sanity check: guided_backprop",
        "Faithfulness: ROAD in both orders",
        "Faithfulness: a short ROAR, and why ROAR alone misleads",
        "Clever Hans audit (region)",
        "Clever Hans audit (discovery)",
        "ViT attention rollout",
        "Failure modes",
        "Representation views",
    ):
        assert expected in outline.sections
    assert outline.images >= 9
    verdicts = dict(outline.verdicts)
    assert any(text.startswith("flagged classes: [0") for text in verdicts), verdicts


def test_fast_demo_summary_shows_the_shortcut_and_the_sanity_findings(demo, capsys):
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["shortcut_class_accuracy_tagged"] - summary["shortcut_class_accuracy_untagged"] >= 0.2
    assert 0 in summary["audit_flagged"]["region"]
    assert summary["sanity"]["saliency"]["passed"] and not summary["sanity"]["guided_backprop"]["passed"]
    # ROAD in both orders (Rong et al. 2022): saliency beats random removing its most and its least relevant pixels
    # first; the short ROAR shows their mask-shape leak: retrained on images with half the pixels removed where
    # saliency points, the model beats the unmodified one
    assert summary["road"]["saliency"]["agreement"] == "both orders"
    roar = summary["roar"]
    assert roar["shape_leak"] and roar["accuracy"]["saliency"]["0.5"][0] > roar["baseline_accuracy"]
    assert list((demo / "tensorboard").glob("version_*/events.out.tfevents.*"))


def test_running_the_demo_twice_does_not_mix_runs(demo, capfd):
    assert main(["demo", "--out", str(demo), "--fast"]) == 0
    versions = sorted(p.name for p in (demo / "tensorboard").iterdir())
    assert versions == ["version_0", "version_1"]
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["tensorboard_version"].endswith("version_1")
    out, err = capfd.readouterr()  # file-descriptor level: Lightning's handler writes to the original stderr
    assert f"tensorboard --logdir {demo / 'tensorboard'}" in out
    for noise in ("GPU available", "litlogger", "LeafSpec", "`Trainer.fit` stopped"):  # issue #17: a quiet demo
        assert noise not in out + err, noise
