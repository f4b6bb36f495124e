"""The demo in --fast mode: it runs, writes its summary, and the shortcut shows in its numbers."""

from __future__ import annotations

import json

from captum_ext.cli import main


def test_fast_demo_writes_a_summary_with_the_shortcut(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--fast"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["shortcut_class_accuracy_tagged"] - summary["shortcut_class_accuracy_untagged"] >= 0.2
    assert summary["test_accuracy"] > 0.5
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {tmp_path / 'tensorboard'}" in printed
    assert list((tmp_path / "tensorboard").glob("version_*/events.out.tfevents.*"))
