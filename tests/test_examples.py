"""Each example runs in its fast mode and writes what it promises."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, out: Path) -> None:
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")["main"](str(out), fast=True)


def test_lightning_callbacks_example_logs_maps_and_shortcut_ratios(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run("lightning_callbacks", tmp_path)
    (events,) = tmp_path.glob("**/events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert "attribution/saliency/maps" in acc.Tags()["images"]
    assert "shortcut/0/ratio" in acc.Tags()["scalars"]
    assert f"tensorboard --logdir {tmp_path}" in capsys.readouterr().out


def test_vit_rollout_example(tmp_path, capsys):
    _run("vit_rollout", tmp_path)
    assert (tmp_path / "rollout.png").stat().st_size > 10_000
    share = float(capsys.readouterr().out.split("rollout mass in the tag: ")[1].split()[0])
    assert 0.0 < share < 1.0


def test_roar_example(tmp_path):
    _run("roar_digits", tmp_path)
    data = json.loads((tmp_path / "roar.json").read_text())
    assert set(data["accuracy"]) == {"saliency", "smoothgrad_sq", "random"}
    assert (tmp_path / "roar.png").exists()


def test_clever_hans_audit_example_flags_the_tagged_class(tmp_path):
    _run("clever_hans_audit", tmp_path)
    assert "FLAGGED" in (tmp_path / "audit_region.html").read_text()
    assert (tmp_path / "audit_discovery.html").exists()


def test_captum_workflow_example(tmp_path, capsys):
    _run("captum_workflow", tmp_path)
    printed = capsys.readouterr().out
    values = json.loads(printed.split("infidelity: ")[1].splitlines()[0])
    assert len(values) == 4 and all(math.isfinite(v) for v in values)
    assert (tmp_path / "captum_visualisation.png").exists()
