"""Where does a ViT look? Attention rollout and gradient rollout on a TinyViT trained on the digits.

    python examples/vit_rollout.py [--fast] [--out runs/examples/rollout]

Writes rollout.png: tagged zeros with their rollout and gradient-rollout maps. One figure of a few images
invites cherry-picking: the printed number is the aggregate over every tagged zero in the test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from captum_ext.attr import AttentionRollout, GradientRollout
from captum_ext.data import CleverHansDigits
from captum_ext.models import TinyViT, fit_classifier
from captum_ext.plots import overlay_grid


def main(out: str, fast: bool) -> None:
    data = CleverHansDigits()
    vit = fit_classifier(TinyViT(), data, max_epochs=10 if fast else 40, lr=3e-3)
    images, labels = data.shortcut_test_images(tagged=True)
    rollout = AttentionRollout(vit).attribute(images)[:, 0]
    gradient = GradientRollout(vit).attribute(images, target=labels)[:, 0]
    share = (rollout * data.region_mask).sum((1, 2)) / rollout.sum((1, 2))
    print(
        f"rollout mass in the tag: {share.mean():.3f} (the tag is {data.region_mask.float().mean():.3f} of the image)"
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    figure = overlay_grid(images[:8], {"rollout": rollout[:8], "gradient rollout": gradient[:8]})
    figure.savefig(Path(out) / "rollout.png")
    print(f"wrote {Path(out) / 'rollout.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/examples/rollout")
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()
    main(args.out, args.fast)
