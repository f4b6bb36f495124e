"""ROAR on the digits: remove each method's top pixels, retrain, compare with a random ranking.

    python examples/roar_digits.py [--fast] [--out runs/examples/roar]

Hooker et al. (NeurIPS 2019) found plain gradient no better than random, SmoothGrad-squared and VarGrad better.
A rerun resumes: finished retrainings are read back from <out>/cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from captum_ext import Explainer
from captum_ext.data import CleverHansDigits
from captum_ext.evaluation import roar
from captum_ext.models import small_cnn_module


def main(out: str, fast: bool) -> None:
    explainers = [Explainer("saliency"), Explainer("smoothgrad_sq")]
    if not fast:
        explainers += [Explainer("integrated_gradients"), Explainer("guided_backprop"), Explainer("vargrad")]
    result = roar(
        small_cnn_module,
        CleverHansDigits(shortcut_class=None),
        explainers,
        fractions=(0.5,) if fast else (0.1, 0.3, 0.5, 0.7, 0.9),
        repeats=1 if fast else 2,
        trainer_kwargs={"max_epochs": 2 if fast else 10},
        cache_dir=Path(out) / "cache",
    )
    print(result)
    result.to_json(Path(out) / "roar.json")
    result.plot().savefig(Path(out) / "roar.png")
    print(f"wrote {Path(out) / 'roar.json'} and {Path(out) / 'roar.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/examples/roar")
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()
    main(args.out, args.fast)
