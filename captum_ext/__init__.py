"""captum-ext: can an explanation be trusted? ROAR/ROAD, sanity checks, ViT rollout, Clever Hans audits and
Lightning callbacks, in Captum's idiom.
"""

from captum_ext.explainer import Explainer

__all__ = ["Explainer"]
__version__ = "0.1.0"
