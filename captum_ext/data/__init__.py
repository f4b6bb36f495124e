"""Embedded data: :class:`CleverHansDigits`, scikit-learn's bundled digits with an optional planted shortcut, and
the shortcut zoo (:func:`shortcut_images`), shape images with a planted shortcut of a known kind and place."""

from captum_ext.data.digits import CleverHansDigits
from captum_ext.data.shortcuts import SHORTCUT_KINDS, ShortcutImages, shortcut_images

__all__ = ["CleverHansDigits", "SHORTCUT_KINDS", "ShortcutImages", "shortcut_images"]
