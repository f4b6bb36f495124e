#!/usr/bin/env bash
# Build the sdist, build the wheel from it (with the project venv's setuptools, no download), install the wheel into a clean venv and run an example there, from
# outside the source tree. The clean venv borrows the dependencies (torch, captum, ...) from the project's venv
# through a .pth path entry instead of downloading them again; the package itself comes only from the wheel.
#
#   bash scripts/check_package.sh [.venv/bin/python]
set -euo pipefail
PY=${1:-.venv/bin/python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m build --no-isolation --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
ls "$WORK"/dist/captum_ext-*.tar.gz "$WORK"/dist/captum_ext-*.whl > /dev/null
DEPS=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
BASE=$("$PY" -c "import sys; print(sys._base_executable)")
"$BASE" -m venv "$WORK/venv"
CLEAN="$WORK/venv/bin/python"
"$CLEAN" -m pip install --quiet --no-deps --no-index "$WORK"/dist/captum_ext-*.whl
echo "$DEPS" > "$("$CLEAN" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/project-deps.pth"
cd "$WORK"
"$CLEAN" - <<'PY'
import pathlib, sys

import torch
from torch.utils.data import DataLoader, TensorDataset

import captum_ext
from captum_ext import Explainer
from captum_ext.evaluation import road
from captum_ext.models import SmallCNN

source = pathlib.Path(captum_ext.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in source.parents, f"captum_ext imported from {source}, not from the wheel"
assert (source.parent / "py.typed").exists(), "py.typed missing from the wheel"
torch.manual_seed(0)
model, x, y = SmallCNN(), torch.rand(8, 1, 32, 32), torch.randint(0, 10, (8,))
maps = Explainer("saliency").attribute(model, x, target=y)
assert maps.shape == x.shape and torch.isfinite(maps).all()
result = road(model, DataLoader(TensorDataset(x, y), batch_size=4), "saliency", fractions=(0.5,))
print(f"wheel OK: captum_ext from {source.parent}, ROAD accuracy {result.accuracy}")
PY
"$WORK/venv/bin/captum-ext" --help > /dev/null
echo "sdist and wheel OK: $(cd "$WORK/dist" && ls)"
