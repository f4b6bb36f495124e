"""Embedded data: :class:`CleverHansDigits`, scikit-learn's bundled digits with an optional planted shortcut."""

from captum_ext.data.digits import CleverHansDigits

__all__ = ["CleverHansDigits"]
