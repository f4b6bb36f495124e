"""Captum ``Attribution`` subclasses of captum-ext."""

from captum_ext.attr.random_map import RandomAttribution

__all__ = ["RandomAttribution"]
