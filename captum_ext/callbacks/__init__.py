"""Lightning callbacks that log attributions, their metrics and shortcut checks to TensorBoard every epoch.

Every callback derives from :class:`~captum_ext.callbacks.base.ExplanationCallback`, so it works with the
``pytorch_lightning`` and the ``lightning.pytorch`` Trainer, under DDP, and never changes the training run.
"""

from captum_ext.callbacks.attribution import AttributionMonitor
from captum_ext.callbacks.base import ExplanationCallback
from captum_ext.callbacks.filters import FilterMonitor
from captum_ext.callbacks.projector import EmbeddingProjector
from captum_ext.callbacks.randomization import RandomizationMonitor
from captum_ext.callbacks.shortcut import ShortcutMonitor

__all__ = [
    "AttributionMonitor",
    "RandomizationMonitor",
    "ShortcutMonitor",
    "EmbeddingProjector",
    "ExplanationCallback",
    "FilterMonitor",
]
