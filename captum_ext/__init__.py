"""captum-ext: can an explanation be trusted? ROAR/ROAD, sanity checks, ViT rollout, Clever Hans audits and
Lightning callbacks, in Captum's idiom.

``Explainer`` is imported on first use, so ``import captum_ext`` (and a finished job-array task of the
``captum-ext`` command) does not pay for torch, Captum and Lightning until they are needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captum_ext.explainer import Explainer

__all__ = ["Explainer"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Explainer":
        from captum_ext.explainer import Explainer

        return Explainer
    raise AttributeError(f"module 'captum_ext' has no attribute {name!r}")
