"""Complexity of a map: how concentrated is the explanation? Higher sparseness and lower complexity mean fewer
features carry the relevance, which makes a map easier to read.

* sparseness (Chalasani et al., ICML 2020): the Gini index of ``|a|`` over a map's values sorted ascending,
  ``G = sum_i (2i - n - 1) |a|_(i) / (n sum_i |a|_(i))``, in [0, 1) (0: all equal; near 1: one value carries all);
* complexity (Bhatt et al., IJCAI 2020): the entropy ``-sum_i p_i log p_i`` of the fractional contributions
  ``p_i = |a_i| / sum_j |a_j|`` (natural log; 0 for a single non-zero value, ``log n`` when all are equal);
* effective complexity (Nguyen & Martínez, 2020): how many values have ``|a_i| > eps``.

Each is computed on the attribution as given, every channel's value a feature (an (N, H, W) map, or (N, C, H, W)
attributions), for a whole batch at once, on its device. A map that is all zero has no distribution of relevance: its
sparseness and complexity are NaN, with a warning, and the metric classes leave it out of their mean.

Example::

    >>> import torch
    >>> one_hot = torch.zeros(1, 1, 2, 2); one_hot[0, 0, 0, 0] = 5.0
    >>> sparseness(one_hot), complexity(one_hot), effective_complexity(one_hot)
    (tensor([0.7500]), tensor([0.]), tensor([1.]))
"""

from __future__ import annotations

import warnings

import torch

from captum_ext._checks import check_finite, check_real
from captum_ext.metrics._mean import MeanOverImages

__all__ = ["sparseness", "complexity", "effective_complexity", "Sparseness", "Complexity", "EffectiveComplexity"]


def _magnitudes(attributions: torch.Tensor) -> torch.Tensor:
    """(N, features) float64 ``|a|`` of an (N, ...) batch of maps."""
    if not isinstance(attributions, torch.Tensor) or attributions.dim() < 2 or not attributions.is_floating_point():
        got = (
            f"shape {tuple(attributions.shape)}"
            if isinstance(attributions, torch.Tensor)
            else type(attributions).__name__
        )
        raise ValueError(
            f"Expected argument `attributions` to be a float (N, H, W) or (N, C, H, W) tensor, but got {got}."
        )
    check_finite("attributions", attributions)
    return attributions.detach().flatten(1).abs().double()


def _undefined_for_zero_maps(scores: torch.Tensor, total: torch.Tensor, metric: str) -> torch.Tensor:
    """``scores`` with NaN where a map's total relevance is 0, and a warning saying how many and why."""
    zero = total == 0
    if bool(zero.any()):
        warnings.warn(
            f"{metric}: {int(zero.sum())} of {len(zero)} maps are all zero; their {metric} is undefined (NaN), not 0. "
            "An all-zero map says nothing about the input (see the Explainer's warning for the likely cause).",
            RuntimeWarning,
            stacklevel=3,
        )
    return torch.where(zero, torch.full_like(scores, float("nan")), scores)


def sparseness(attributions: torch.Tensor) -> torch.Tensor:
    """(N,) Gini index of each map's ``|a|`` (Chalasani et al. 2020); higher is sparser; NaN for an all-zero map."""
    values = torch.sort(_magnitudes(attributions), dim=1).values
    n = values.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=values.device, dtype=values.dtype) - n - 1
    total = values.sum(1)
    gini = (values * weights).sum(1) / (n * total.clamp(min=torch.finfo(total.dtype).tiny))
    return _undefined_for_zero_maps(gini, total, "sparseness").float()


def complexity(attributions: torch.Tensor) -> torch.Tensor:
    """(N,) entropy of each map's fractional contributions ``|a_i| / sum |a|`` (Bhatt et al. 2020); lower is simpler;
    NaN for an all-zero map."""
    values = _magnitudes(attributions)
    total = values.sum(1, keepdim=True)
    share = values / total.clamp(min=torch.finfo(values.dtype).tiny)
    entropy = -(share * torch.log(torch.where(share > 0, share, torch.ones_like(share)))).sum(1)
    entropy = entropy + 0.0  # turns -0.0 (a single non-zero value) into 0.0
    return _undefined_for_zero_maps(entropy, total[:, 0], "complexity").float()


def effective_complexity(attributions: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(N,) number of values with ``|a_i| > eps`` (Nguyen & Martínez 2020); lower is simpler."""
    check_real("eps", eps, 0.0)
    return (_magnitudes(attributions) > eps).sum(1).float()


class Sparseness(MeanOverImages):
    """Mean Gini index of the maps seen (:func:`sparseness`); DDP-synced.

    Example::

        >>> metric = Sparseness()
        >>> metric.update(torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]))
        >>> metric.compute()
        tensor(0.3750)
    """

    higher_is_better = True

    def update(self, attributions: torch.Tensor) -> None:
        """Add a batch of (N, H, W) or (N, C, H, W) attributions (all-zero maps left out, with a warning)."""
        scores = sparseness(attributions)
        self.add(scores[~scores.isnan()])


class Complexity(MeanOverImages):
    """Mean entropy of the maps' fractional contributions (:func:`complexity`); DDP-synced."""

    higher_is_better = False

    def update(self, attributions: torch.Tensor) -> None:
        """Add a batch of (N, H, W) or (N, C, H, W) attributions (all-zero maps left out, with a warning)."""
        scores = complexity(attributions)
        self.add(scores[~scores.isnan()])


class EffectiveComplexity(MeanOverImages):
    """Mean number of values above ``eps`` in magnitude (:func:`effective_complexity`); DDP-synced."""

    higher_is_better = False

    def __init__(self, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eps = check_real("eps", eps, 0.0)

    def update(self, attributions: torch.Tensor) -> None:
        """Add a batch of (N, H, W) or (N, C, H, W) attributions."""
        self.add(effective_complexity(attributions, self.eps))
