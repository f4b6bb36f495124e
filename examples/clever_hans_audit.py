"""A Clever Hans audit: does the digits model rely on the planted tag? With the region given, and without.

    python examples/clever_hans_audit.py [--fast] [--out runs/examples/audit]

Writes audit_region.html and audit_discovery.html (class-mean maps, the evidence table, the verdicts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from captum_ext.audit import CleverHansAudit
from captum_ext.data import CleverHansDigits
from captum_ext.models import SmallCNN, fit_classifier


def main(out: str, fast: bool) -> None:
    data, control_data = CleverHansDigits(), CleverHansDigits(control=True)
    model = fit_classifier(SmallCNN(), data, max_epochs=15)
    control = fit_classifier(SmallCNN(), control_data, max_epochs=15)  # same pixels, tag independent of label
    x, y, _ = data.split("test")
    if fast:
        x, y = x[:160], y[:160]
    Path(out).mkdir(parents=True, exist_ok=True)
    for mode, region in (("region", data.region_mask), ("discovery", None)):
        report = CleverHansAudit("input_x_gradient", region=region).run(model, (x, y), control=control)
        print(report)
        (Path(out) / f"audit_{mode}.html").write_text(report.to_html(), encoding="utf-8")
    print(f"wrote {out}/audit_region.html and audit_discovery.html")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/examples/audit")
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()
    main(args.out, args.fast)
