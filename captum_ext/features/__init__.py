"""What a model has learned in general: activation maximisation, activation atlases, first-layer filters and
feature maps, top-activating patches with computed receptive fields, and Network Dissection's concept IoU.

Example::

    >>> import torch
    >>> from captum_ext.features import ActivationMaximization, first_layer_filters
    >>> from captum_ext.models import SmallCNN
    >>> ActivationMaximization(SmallCNN(), (1, 32, 32), steps=4).visualize(target=[0, 1]).shape
    torch.Size([2, 1, 32, 32])
"""

from captum_ext.features.activation_maximization import ActivationMaximization
from captum_ext.features.atlas import ActivationAtlas, activation_atlas
from captum_ext.features.concept_iou import ConceptIoU, concept_iou
from captum_ext.features.filters import feature_maps, first_layer_filters
from captum_ext.features.receptive_field import receptive_field
from captum_ext.features.top_patches import TopPatches, top_activating_patches

__all__ = [
    "ActivationMaximization",
    "activation_atlas",
    "ActivationAtlas",
    "first_layer_filters",
    "feature_maps",
    "top_activating_patches",
    "concept_iou",
    "receptive_field",
    "TopPatches",
    "ConceptIoU",
]
