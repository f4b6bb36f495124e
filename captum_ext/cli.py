"""The ``captum-ext`` command.

Example::

    $ captum-ext demo --out runs/demo --fast
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captum-ext", description="Can this explanation be trusted?")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train on the embedded digits and run every check (a few minutes)")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed for data, model and every random step (default: 0)")
    demo.add_argument("--fast", action="store_true", help="fewer epochs and smaller probes (under a minute)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captum-ext`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from captum_ext.demo import print_summary, run_demo

        print_summary(run_demo(args.out, seed=args.seed, fast=args.fast))
    return 0


if __name__ == "__main__":
    sys.exit(main())
