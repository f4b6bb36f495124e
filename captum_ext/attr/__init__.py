"""Captum ``Attribution`` subclasses of captum-ext."""

from captum_ext.attr.random_map import RandomAttribution
from captum_ext.attr.rollout import AttentionRollout, GradientRollout, RawAttention

__all__ = ["RandomAttribution", "AttentionRollout", "GradientRollout", "RawAttention"]
