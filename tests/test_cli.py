"""The CLI: a config round trip for each subcommand on the digits; bad configs exit 2 without a traceback."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from captum_ext.cli import _recorded_run, main
from captum_ext.evaluation import ROARResult

SANITY = {
    "model": "captum_ext.models:SmallCNN",
    "datamodule": "captum_ext.data:CleverHansDigits",
    "explainers": ["saliency"],
}


def _write(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_roar_config_round_trip(tmp_path, capsys):
    config = {
        "module_factory": "captum_ext.models:small_cnn_module",
        "datamodule": "captum_ext.data:CleverHansDigits",
        "explainers": ["saliency"],
        "fractions": [0.5],
        "repeats": 1,
        "trainer_kwargs": {"max_epochs": 2},
        "out": str(tmp_path / "out"),
    }
    assert main(["roar", "--config", _write(tmp_path, config)]) == 0
    result = ROARResult.from_json(tmp_path / "out" / "roar.json")
    assert set(result.accuracy) == {"saliency", "random"}
    assert list(result.accuracy["saliency"]) == [0.5] and len(result.accuracy["saliency"][0.5]) == 1
    assert 0.0 <= result.accuracy["random"][0.5][0] <= 1.0 and result.keep is False
    assert (tmp_path / "out" / "roar.png").stat().st_size > 0
    # the rerun resumes from the results file: nothing is retrained, the same numbers come back
    assert main(["roar", "--config", _write(tmp_path, config)]) == 0
    assert ROARResult.from_json(tmp_path / "out" / "roar.json").accuracy == result.accuracy


#: The ROAR grid of the job-array tests: one method, one fraction, one repeat, one epoch (2 runs).
ARRAY = {
    "module_factory": "captum_ext.models:small_cnn_module",
    "datamodule": "captum_ext.data:CleverHansDigits",
    "explainers": ["saliency"],
    "fractions": [0.5],
    "repeats": 1,
    "trainer_kwargs": {"max_epochs": 1},
}


def test_roar_as_a_job_array_plan_run_index_collect(tmp_path, capsys):
    """Issue #15: --plan once, --run-index per array task (in any order), --collect once; the table equals the
    one-command run's on the same settings. Issue #22: the printed sbatch line is absolute, throttled and carries the
    config's resources."""
    config = {
        **ARRAY,
        "out": str(tmp_path / "array"),
        "slurm": {"parallel": 50, "cpus_per_task": 4, "gres": "gpu:1", "time": "01:00:00"},
    }
    path = _write(tmp_path, config)
    assert main(["roar", "--config", path, "--run-index", "0"]) == 2  # no plan yet: a one-line error
    assert "--plan" in capsys.readouterr().err
    assert main(["roar", "--config", path, "--plan"]) == 0
    plan = json.loads((tmp_path / "array" / "plan.json").read_text())
    assert [r["index"] for r in plan["runs"]] == [0, 1]
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "sbatch" in line]
    assert f"--array=0-1%2 --chdir={os.getcwd()} --cpus-per-task=4 --gres=gpu:1 --time=01:00:00" in line
    assert f"-m captum_ext.cli roar --config {path} --run-index $SLURM_ARRAY_TASK_ID'" in line
    assert os.path.isabs(line.split("--wrap '")[1].split()[0])  # this Python, not a name looked up on the node
    assert main(["roar", "--config", path, "--run-index", "1"]) == 0
    assert main(["roar", "--config", path, "--collect"]) == 2
    assert "indices [0]" in capsys.readouterr().err
    assert main(["roar", "--config", path, "--run-index", "0"]) == 0
    assert main(["roar", "--config", path, "--collect"]) == 0
    collected = ROARResult.from_json(tmp_path / "array" / "roar.json")
    # a finished task reads plan.json and the record: no torch, no data (issue #22: seconds whatever the data size)
    check = (
        "import sys; from captum_ext.cli import main; code = main(sys.argv[1:]); print(code, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, "roar", "--config", path, "--run-index", "1"], capture_output=True, text=True
    )
    record = json.loads(done.stdout.splitlines()[0])
    assert done.stdout.splitlines()[1] == "0 False" and record["key"] == plan["runs"][1]["key"]
    assert _recorded_run(path, 1) == record and _recorded_run(path, 2) is None
    _write(tmp_path, {**config, "repeats": 2})  # the config changed since the plan: the full path decides
    assert _recorded_run(path, 1) is None
    path = _write(tmp_path, config)
    damaged = tmp_path / "array" / "cache" / "runs" / f"{plan['runs'][0]['key']}.json"
    damaged.write_text(json.dumps({**json.loads(damaged.read_text()), "accuracy": 7.5}))  # issue #24: a bad record
    with pytest.warns(RuntimeWarning, match="moved to"):
        assert main(["roar", "--config", path, "--collect"]) == 2  # one line naming the run, no traceback
    assert "indices 0." in capsys.readouterr().err
    assert main(["roar", "--config", path, "--run-index", "0"]) == 0  # retrained: the same seed, the same record
    assert main(["roar", "--config", path, "--collect"]) == 0
    assert ROARResult.from_json(tmp_path / "array" / "roar.json").accuracy == collected.accuracy
    assert main(["roar", "--config", _write(tmp_path, {**config, "out": str(tmp_path / "whole")})]) == 0
    assert ROARResult.from_json(tmp_path / "whole" / "roar.json").accuracy == collected.accuracy


def test_roar_rankings_as_array_tasks_from_another_folder(tmp_path, capsys):
    """Issue #22: --prepare leaves the rankings to --rank-index tasks (one shard each, disjoint); a run before its
    rankings exits 2 naming --rank-index; the printed ranking task runs as printed from another folder; the table
    equals the one-command run's."""
    config = {**ARRAY, "shard_size": 1000, "out": str(tmp_path / "array")}
    path = _write(tmp_path, config)
    assert main(["roar", "--config", path, "--prepare"]) == 0
    printed = capsys.readouterr().out
    ranked = re.search(r"ranked=\$\((sbatch --parsable --array=0-(\d+)%\d+ .*) \| cut -d';' -f1\)$", printed, re.M)
    assert ranked is not None and "--dependency=afterok:$ranked --array=0-1%2" in printed
    shards = int(ranked.group(2)) + 1
    assert shards == 2 * 4  # saliency and random x (train: 2 shards of 1000, val, test)
    assert main(["roar", "--config", path, "--run-index", "0"]) == 2
    assert "--rank-index" in capsys.readouterr().err
    task = shlex.split(ranked.group(1).split("--wrap ", 1)[1])[0].replace("$SLURM_ARRAY_TASK_ID", "0")
    elsewhere = tmp_path / "node"
    elsewhere.mkdir()
    done = subprocess.run(task, shell=True, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for j in range(1, shards):
        assert main(["roar", "--config", path, "--rank-index", str(j)]) == 0
    for i in (1, 0):
        assert main(["roar", "--config", path, "--run-index", str(i)]) == 0
    assert main(["roar", "--config", path, "--collect"]) == 0
    collected = ROARResult.from_json(tmp_path / "array" / "roar.json")
    assert (
        main(["roar", "--config", _write(tmp_path, {**config, "out": str(tmp_path / "whole"), "shard_size": 8192})])
        == 0
    )
    assert ROARResult.from_json(tmp_path / "whole" / "roar.json").accuracy == collected.accuracy


def test_sanity_config_round_trip(tmp_path):
    config = {
        "model": "captum_ext.models:SmallCNN",
        "train_epochs": 3,
        "datamodule": "captum_ext.data:CleverHansDigits",
        "explainers": ["saliency", {"method": "captum.attr:GuidedBackprop", "name": "gbp"}],
        "num_samples": 16,
        "out": str(tmp_path / "out"),
    }
    assert main(["sanity", "--config", _write(tmp_path, config)]) == 0
    for name in ("saliency", "gbp"):
        data = json.loads((tmp_path / "out" / f"sanity_{name}.json").read_text())
        assert data["layers"] == ["classifier", "features.conv3", "features.conv2", "features.conv1"]
        assert len(data["similarity"]["spearman_abs"]) == 4 and isinstance(data["passed"], bool)


def test_audit_config_round_trip_flags_the_planted_class(tmp_path):
    config = {
        "model": "captum_ext.models:SmallCNN",
        "train_epochs": 15,
        "datamodule": "captum_ext.data:CleverHansDigits",
        "explainer": "input_x_gradient",
        "region": [26, 26, 31, 31],
        "num_samples": 160,
        "out": str(tmp_path / "out"),
    }
    assert main(["audit", "--config", _write(tmp_path, config)]) == 0
    data = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert 0 in data["flagged"]
    assert "<html" in (tmp_path / "out" / "audit.html").read_text().lower()


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {
                "model": "captum_ext.models:NoSuchNet",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "explainers": ["saliency"],
            },
            r"Field `model`: cannot import 'captum_ext.models:NoSuchNet'",
        ),
        (
            {
                "model": "captum_ext.models:SmallCNN",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "explainers": ["saliency"],
                "num_sample": 3,
            },
            r"Unknown config field\(s\) 'num_sample'",
        ),
        (
            {
                "model": "captum_ext.models:SmallCNN",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "explainers": ["grad_cam"],
            },
            r"Expected argument `method` .* but got 'grad_cam'",
        ),
        (
            {
                "model": "captum_ext.models:SmallCNN",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "datamodule_kwargs": {"p_class": 2},
                "explainers": ["saliency"],
            },
            r"`p_class` to be a probability",
        ),
        # issue #14: every field's type is checked before anything runs
        ({**SANITY, "seed": "abc"}, r"field `seed` to be an int >= 0, but got 'abc'"),
        ({**SANITY, "mode": "bogus"}, r"field `mode` to be one of 'cascading', 'independent', but got 'bogus'"),
        ({**SANITY, "threshold": "high"}, r"field `threshold` to be a number in \[-1, 1\]"),
        ({**SANITY, "num_samples": 0}, r"field `num_samples` to be an int >= 1"),
        ({**SANITY, "train_epochs": "two"}, r"field `train_epochs` to be an int >= 1, but got 'two'"),
        ({**SANITY, "model_kwargs": [1]}, r"field `model_kwargs` to be a mapping"),
        ({**SANITY, "explainers": "saliency"}, r"field `explainers` to be a non-empty list"),
        ({**SANITY, "datamodule": "captum_ext.models:SmallCNN"}, r"field `datamodule` to build a LightningDataModule"),
        ({**SANITY, "explainers": [{"method": "saliency", "kwargs": {"bogus": 1}}]}, r"Field `explainers`: .*'bogus'"),
    ],
)
def test_bad_configs_exit_2_with_a_one_line_error(tmp_path, capsys, config, message):
    config = {**config, "out": str(tmp_path / "never")}
    assert main(["sanity", "--config", _write(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "never").exists()  # a failed run writes nothing


@pytest.mark.parametrize(
    "command, config, message",
    [
        (
            "roar",
            {
                "module_factory": "captum_ext.models:small_cnn_module",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "explainers": ["saliency"],
                "trainer_kwargs": {"max_epochs": "two"},
            },
            r"field `trainer_kwargs.max_epochs` to be an int, but got 'two'",
        ),
        (
            "roar",
            {
                "module_factory": "captum_ext.models:small_cnn_module",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "explainers": ["saliency"],
                "fractions": [0.5, 1.5],
            },
            r"field `fractions` to be a non-empty list",
        ),
        (
            "roar",
            {
                "module_factory": "captum_ext.models:small_cnn_module",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "explainers": ["saliency"],
                "keep": "yes",
            },
            r"field `keep` to be true or false",
        ),
        (
            "audit",
            {
                "model": "captum_ext.models:SmallCNN",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "region": [1, 2, 3],
            },
            r"field `region` to be a box",
        ),
        (
            "audit",
            {
                "model": "captum_ext.models:SmallCNN",
                "datamodule": "captum_ext.data:CleverHansDigits",
                "classes": ["zero"],
            },
            r"field `classes` to be a list of class indices",
        ),
    ],
)
def test_bad_fields_of_every_command_exit_2_before_anything_runs(tmp_path, capsys, command, config, message):
    config = {**config, "out": str(tmp_path / "never")}
    assert main([command, "--config", _write(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "never").exists()


def test_a_checkpoint_of_another_architecture_names_the_field(tmp_path, capsys):
    import torch

    from captum_ext.models import TinyViT

    torch.save(TinyViT().state_dict(), tmp_path / "vit.pt")
    config = {**SANITY, "checkpoint": str(tmp_path / "vit.pt"), "out": str(tmp_path / "never")}
    assert main(["sanity", "--config", _write(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"Field `checkpoint`: .*vit.pt' does not fit the model of field `model`", err), err
    assert not (tmp_path / "never").exists()


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["audit", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
