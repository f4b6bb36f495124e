"""Captum ``Attribution`` subclasses of captum-ext."""

from captum_ext.attr.cam import CAM, GradCAMPlusPlus
from captum_ext.attr.layerwise import LayerwiseInputXGradient
from captum_ext.attr.random_map import RandomAttribution
from captum_ext.attr.rollout import AttentionRollout, GradientRollout, RawAttention
from captum_ext.attr.superpixels import SuperpixelLime

__all__ = [
    "RandomAttribution",
    "AttentionRollout",
    "GradientRollout",
    "RawAttention",
    "CAM",
    "GradCAMPlusPlus",
    "LayerwiseInputXGradient",
    "SuperpixelLime",
]
