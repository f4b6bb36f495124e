"""The ``captum-ext`` command: ``demo``, and ``roar | sanity | audit --config FILE.yaml`` on your own model.

Configs name the model, data module and explainers by import path (see :mod:`captum_ext.config`, or
``captum-ext sanity --help`` for the fields). A bad config exits with code 2 and a one-line error, no traceback.

Example::

    $ captum-ext demo --out runs/demo --fast
    $ captum-ext sanity --config sanity.yaml
    $ captum-ext roar --config roar.yaml --plan            # then, per task: --run-index $SLURM_ARRAY_TASK_ID
    $ captum-ext roar --config roar.yaml --prepare         # or: rankings as tasks too (--rank-index J)
    $ captum-ext roar --config roar.yaml --collect
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from captum_ext._io import save_figure, write_json_atomic, write_text_atomic

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from captum_ext.config import FIELDS, field_help

    parser = argparse.ArgumentParser(prog="captum-ext", description="Can this explanation be trusted?")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train on the embedded digits and run every check (a few minutes)")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed for data, model and every random step (default: 0)")
    demo.add_argument("--fast", action="store_true", help="fewer epochs and smaller probes (under a minute)")
    about = {
        "roar": "ROAR / KAR: remove (or keep) each explainer's top pixels, retrain, compare with random",
        "sanity": "model-parameter randomisation sanity check for each explainer",
        "audit": "Clever Hans audit: does the model rely on a region (given, or discovered)?",
    }
    for name in FIELDS:
        sub = commands.add_parser(
            name,
            help=about[name],
            description=about[name],
            epilog=field_help(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--config", required=True, help="YAML file with the fields listed below")
        if name == "roar":  # the steps of a job array (Slurm): plan once, one run per task, collect once
            steps = sub.add_mutually_exclusive_group()
            steps.add_argument(
                "--plan", action="store_true", help="train the base model, rank, write plan.json; no retraining"
            )
            steps.add_argument(
                "--prepare", action="store_true", help="as --plan, but leave the rankings to --rank-index tasks"
            )
            steps.add_argument(
                "--rank-index", type=int, metavar="J", help="compute ranking shard J of the plan (after --prepare)"
            )
            steps.add_argument(
                "--run-index",
                type=int,
                metavar="I",
                help="execute run I of the plan (e.g. $SLURM_ARRAY_TASK_ID); waits for a run held elsewhere",
            )
            steps.add_argument(
                "--collect", action="store_true", help="write roar.json / roar.png from the finished runs"
            )
    return parser


def _out(config: dict, command: str) -> Path:
    """The output folder; created by the first result written (a failed run leaves no empty folder)."""
    from captum_ext.config import ConfigError

    out = Path(config.get("out") or f"runs/{command}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Expected field `out` to be a folder, but {str(out)!r} is a file.")
    return out


def _explainers(config: dict) -> list:
    from captum_ext.config import ConfigError, build_explainer

    specs = config.get("explainers")
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"Expected field `explainers` to be a non-empty list, but got {specs!r}.")
    return [build_explainer(spec) for spec in specs]


def _sbatch(config: dict, path: str, count: int, flag: str, dependency: str = "", parsable: bool = False) -> str:
    """The ``sbatch`` line of a job array running ``flag`` (``--rank-index`` or ``--run-index``) for indices 0 to
    ``count - 1``: absolute paths (this Python, the config, the working folder), throttled to ``slurm.parallel``
    tasks at a time (default 100), with the config's resources (``slurm.cpus_per_task``, ``gres``, ``time``...).
    ``parsable`` prints only the job id; ``dependency`` starts the array after that job succeeded."""
    slurm = dict(config.get("slurm") or {})
    parallel = min(int(slurm.pop("parallel", 100)), count)
    options = ["--parsable"] if parsable else []
    options += [f"--dependency=afterok:{dependency}"] if dependency else []
    options += [f"--array=0-{count - 1}%{parallel}", f"--chdir={shlex.quote(os.getcwd())}"]
    options += [f"--{name.replace('_', '-')}={shlex.quote(str(value))}" for name, value in slurm.items()]
    config_path = str(Path(path).resolve())
    task = f"{shlex.quote(sys.executable)} -m captum_ext.cli roar --config {shlex.quote(config_path)} {flag} "
    return f"sbatch {' '.join(options)} --wrap {shlex.quote(task + '$SLURM_ARRAY_TASK_ID')}"


def _run_roar(config: dict, step: dict[str, Any], path: str = "FILE") -> None:
    """All runs here (no ``step``), or one step of a job array: ``plan`` (base model and rankings here),
    ``prepare`` (base model only; rankings left to ``rank_index`` tasks), ``rank_index``, ``run_index`` or
    ``collect`` (``path``: the config file, for the commands printed after ``plan`` and ``prepare``)."""
    from captum_ext.config import ConfigError, build_datamodule, import_object
    from captum_ext.evaluation import roar_plan

    out = _out(config, "roar")
    factory = import_object(config.get("module_factory"), "module_factory")
    fields = ("fractions", "repeats", "trainer_kwargs", "seed", "device", "data_version", "shard_size")
    kwargs: dict[str, Any] = {k: config[k] for k in fields if config.get(k) is not None}
    first = bool(step.get("plan") or step.get("prepare") or not step)
    plan = roar_plan(
        factory,
        build_datamodule(config),
        _explainers(config),
        cache_dir=config.get("cache_dir") or out / "cache",
        keep=bool(config.get("keep", False)),
        compute=first,
        rank=not step.get("prepare"),
        progress=first,
        **kwargs,
    )
    if step.get("plan") or step.get("prepare"):
        described = {
            "runs": plan.describe(),
            "ranking_shards": len(plan.shards),
            "cache_dir": str(plan.cache_dir),
            "config": _config_digest(config),
        }
        write_json_atomic(described, out / "plan.json", indent=1)
        runs = _sbatch(config, path, len(plan), "--run-index", "$ranked" if step.get("prepare") else "")
        lines = [f"{plan}", f"wrote {out / 'plan.json'}", "", "as Slurm job arrays:"]
        if step.get("prepare"):
            ranking = _sbatch(config, path, len(plan.shards), "--rank-index", parsable=True)
            lines.append(f"  ranked=$({ranking} | cut -d';' -f1)")  # --parsable prints id[;cluster]
        collect = (
            f"{shlex.quote(sys.executable)} -m captum_ext.cli roar --config {shlex.quote(str(Path(path).resolve()))}"
        )
        lines += [f"  {runs}", f"then: {collect} --collect"]
        print("\n".join(lines))
        return
    if step.get("rank_index") is not None:
        print(f"ranking shard {step['rank_index']}: {plan.rank(step['rank_index'], progress=True)}")
        return
    if step.get("run_index") is not None:  # waits for a run held elsewhere: a task never ends without its record
        print(json.dumps(plan.run(step["run_index"], wait=True)))
        return
    if step.get("collect") and plan.missing():
        missing = plan.missing()
        raise ConfigError(
            f"{len(missing)} of {len(plan)} runs have no record yet (indices {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}); run them with --run-index first."
        )
    if step.get("collect"):
        try:
            result = plan.collect()
        except RuntimeError as err:  # a record quarantined on reading (with its warning): run that index again
            raise ConfigError(str(err)) from None
    else:
        result = plan.execute()
    result.to_json(out / "roar.json")
    save_figure(result.plot(), out / "roar.png")
    print(result)
    print(f"\nwrote {out / 'roar.json'} and {out / 'roar.png'}")


def _run_sanity(config: dict) -> None:
    from captum_ext.config import build_datamodule, build_model, probe_batch
    from captum_ext.sanity import model_randomization_test

    out = _out(config, "sanity")
    datamodule = build_datamodule(config)
    explainers = _explainers(config)
    model = build_model(config, datamodule)
    x, _ = probe_batch(datamodule, config.get("num_samples", 64))
    kwargs = {k: config[k] for k in ("mode", "threshold", "seed") if config.get(k) is not None}
    for explainer in explainers:
        result = model_randomization_test(model, explainer, x, **kwargs)
        result.to_json(out / f"sanity_{explainer.name}.json")
        save_figure(result.plot(), out / f"sanity_{explainer.name}.png")
        print(result)
    print(f"\nwrote {out}/sanity_<explainer>.json and .png")


def _run_audit(config: dict) -> None:
    from captum_ext.audit import CleverHansAudit
    from captum_ext.config import build_datamodule, build_explainer, build_model, probe_batch

    out = _out(config, "audit")
    datamodule = build_datamodule(config)
    explainer = build_explainer(config.get("explainer", "input_x_gradient"), "explainer")
    model = build_model(config, datamodule)
    region = config.get("region")
    if region is not None:
        region = tuple(region) if isinstance(region, list) else region
    report = CleverHansAudit(explainer, region=region, classes=config.get("classes")).run(
        model, probe_batch(datamodule, config.get("num_samples"))
    )
    report.to_json(out / "audit.json")
    write_text_atomic(report.to_html(), out / "audit.html")
    print(report)
    print(f"\nwrote {out / 'audit.json'} and {out / 'audit.html'}")


def _config_digest(config: dict) -> str:
    """What ties a ``plan.json`` to the config (and package version) it was written for."""
    from captum_ext import __version__

    return hashlib.sha256(json.dumps([config, __version__], sort_keys=True, default=str).encode()).hexdigest()


def _recorded_run(config_path: str, index: int) -> dict | None:
    """Run ``index``'s record, found through the ``plan.json`` that ``--plan`` / ``--prepare`` wrote for this very
    config, or None (the full path then decides). A finished (or requeued, or duplicate) array task returns with it
    in a fraction of a second: no torch, no Lightning, no data."""
    try:
        config = yaml.safe_load(Path(config_path).read_text()) or {}
        plan = json.loads((Path(config.get("out") or "runs/roar") / "plan.json").read_text())
        if plan.get("config") != _config_digest(config) or index < 0:
            return None
        key = plan["runs"][index]["key"]
        record = json.loads((Path(plan["cache_dir"]) / "runs" / f"{key}.json").read_text())
        accuracy = record["accuracy"]
    except (OSError, ValueError, LookupError, TypeError, AttributeError, yaml.YAMLError):
        return None
    valid = record.get("key") == key and isinstance(accuracy, (int, float)) and 0 <= accuracy <= 1
    return record if valid else None


def _finished_task(argv: Sequence[str]) -> dict | None:
    """For exactly ``roar --config F --run-index I`` (options in any order, ``--x=v`` or ``--x v``), the run's
    record when it is already there; None for anything else, which the full parser then handles."""
    if not argv or argv[0] != "roar":
        return None
    options, rest = {}, list(argv[1:])
    while rest:
        name, equals, value = rest.pop(0).partition("=")
        if not equals:
            if not rest:
                return None
            value = rest.pop(0)
        options[name] = value
    if set(options) != {"--config", "--run-index"} or not options["--run-index"].isdigit():
        return None
    return _recorded_run(options["--config"], int(options["--run-index"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captum-ext`` console script; returns the exit code (2 for a bad config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    record = _finished_task(argv)
    if record is not None:
        print(json.dumps(record))
        return 0
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from captum_ext.demo import print_summary, run_demo

        print_summary(run_demo(args.out, seed=args.seed, fast=args.fast))
        return 0
    from captum_ext.config import ConfigError, load_config

    runners = {"sanity": _run_sanity, "audit": _run_audit}
    try:
        config = load_config(args.config, args.command)
        if args.command == "roar":
            chosen = {k: getattr(args, k) for k in ("plan", "prepare", "rank_index", "run_index", "collect")}
            _run_roar(config, {k: v for k, v in chosen.items() if v is not None and v is not False}, args.config)
        else:
            runners[args.command](config)
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"captum-ext {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
