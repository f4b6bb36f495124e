"""captum-ext inside an ordinary Captum workflow: our attributions in Captum's visualiser and metrics.

    python examples/captum_workflow.py [--fast] [--out runs/examples/captum]

AttentionRollout is a captum.attr.Attribution, so captum.attr.visualization.visualize_image_attr draws it and
captum.metrics.infidelity / sensitivity_max score it like any Captum method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from captum.attr import visualization
from captum.metrics import infidelity, sensitivity_max

from captum_ext.attr import AttentionRollout
from captum_ext.data import CleverHansDigits
from captum_ext.models import TinyViT, fit_classifier


def _perturb(inputs: torch.Tensor):
    gen = torch.Generator().manual_seed(0)
    noise = 0.05 * torch.randn(inputs.shape, generator=gen)
    return noise, inputs - noise


def main(out: str, fast: bool) -> None:
    data = CleverHansDigits()
    vit = fit_classifier(TinyViT(), data, max_epochs=5 if fast else 40, lr=3e-3)
    x, y, _ = data.split("test")
    x, y = x[:4], y[:4]
    rollout = AttentionRollout(vit)
    attributions = rollout.attribute(x)
    print("infidelity:", infidelity(vit, _perturb, x, attributions, target=y).tolist())
    print("sensitivity_max:", sensitivity_max(rollout.attribute, x, n_perturb_samples=2).tolist())
    figure, _ = visualization.visualize_image_attr(
        attributions[0].permute(1, 2, 0).numpy(),
        x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="positive",
        use_pyplot=False,
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    figure.savefig(Path(out) / "captum_visualisation.png")
    print(f"wrote {Path(out) / 'captum_visualisation.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/examples/captum")
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()
    main(args.out, args.fast)
