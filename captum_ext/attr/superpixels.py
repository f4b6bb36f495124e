"""Superpixels for LIME (Ribeiro et al., KDD 2016): the interpretable features are image segments, not pixels.

:func:`superpixel_mask` segments each image with scikit-image's SLIC; :class:`SuperpixelLime` (the ``Explainer``'s
``"lime"``) hands it to Captum's ``Lime`` as the ``feature_mask``, so LIME switches whole superpixels on and off.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from captum.attr import Lime
from skimage.segmentation import slic

from captum_ext._checks import class_targets

__all__ = ["superpixel_mask", "SuperpixelLime"]


def superpixel_mask(inputs: torch.Tensor, n_segments: int = 50, compactness: float = 1.0) -> torch.Tensor:
    """(N, 1, H, W) long tensor of SLIC superpixel ids, numbered 0, 1, ... within each image, on ``inputs``' device.

    Each image is scaled to [0, 1] (its own min and max) and segmented on its own channels, without scikit-image's
    Lab conversion, so any channel count and normalised inputs work. With ``compactness=1`` the segments are close
    to a grid, bent by strong edges; lower values follow colour more (and may merge into few segments on noisy
    images: with the Lab conversion and skimage's default of 10, a noise image became one segment).

    Example::

        >>> mask = superpixel_mask(torch.rand(2, 3, 32, 32), n_segments=16)
        >>> mask.shape, int(mask.min())
        (torch.Size([2, 1, 32, 32]), 0)
    """
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise ValueError(
            f"Expected argument `inputs` to be an (N, C, H, W) tensor, but got {getattr(inputs, 'shape', inputs)!r}."
        )
    if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 1:
        raise ValueError(f"Expected argument `n_segments` to be an int >= 1, but got {n_segments!r}.")
    images = inputs.detach().float().cpu()
    masks = []
    for image in images:
        low, high = image.min(), image.max()
        scaled = ((image - low) / (high - low if high > low else 1.0)).permute(1, 2, 0).numpy().astype(np.float64)
        multichannel = scaled.shape[-1] > 1
        segments = slic(
            scaled if multichannel else scaled[..., 0],
            n_segments=n_segments,
            compactness=compactness,
            channel_axis=-1 if multichannel else None,
            convert2lab=False,
            start_label=0,
        )
        masks.append(np.unique(segments, return_inverse=True)[1].reshape(segments.shape))  # ids 0..K-1, no gaps
    return torch.from_numpy(np.stack(masks)).long().unsqueeze(1).to(inputs.device)


class SuperpixelLime(Lime):
    """Captum's ``Lime`` with SLIC superpixels as its interpretable features and, by default, each image's own
    per-channel mean as the "off" value of a superpixel (never black, as for occlusion).

    ``attribute`` takes ``n_segments`` and ``compactness`` (for :func:`superpixel_mask`) besides Lime's own
    arguments; a given ``feature_mask`` is used as it is. Each image gets its own interpretable model, fitted on
    ``n_samples`` perturbations: by default a ridge regression (``alpha=1``) as in the original LIME, not Captum's
    Lasso, which sets every coefficient to zero when the score moves little (an untrained or saturated model).

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        >>> _ = torch.manual_seed(0)
        >>> SuperpixelLime(net).attribute(torch.rand(2, 1, 8, 8), target=0, n_segments=4, n_samples=8).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self, forward_func: Any, interpretable_model: Any = None, similarity_func: Any = None, perturb_func: Any = None
    ):
        if interpretable_model is None:
            from captum._utils.models.linear_model import SkLearnRidge

            interpretable_model = SkLearnRidge(alpha=1.0)
        super().__init__(forward_func, interpretable_model, similarity_func, perturb_func)

    def attribute(
        self,
        inputs: torch.Tensor,
        target: Any = None,
        n_segments: int = 50,
        compactness: float = 1.0,
        baselines: Any = None,
        feature_mask: torch.Tensor | None = None,
        n_samples: int = 64,
        perturbations_per_eval: int = 1,
    ) -> torch.Tensor:
        """(N, C, H, W) attributions: each pixel carries its superpixel's coefficient.

        Each image is explained on its own, with its own number of superpixels and the same random stream (one seed
        drawn from the global RNG per call), so an image's map does not depend on the rest of the batch.
        """
        masks = feature_mask if feature_mask is not None else superpixel_mask(inputs, n_segments, compactness)
        seed = int(torch.randint(2**62, ()))
        devices = [inputs.device] if inputs.device.type == "cuda" else []
        targets = class_targets(target, inputs.shape[0], None, inputs.device) if target is not None else None
        out = []
        for i in range(inputs.shape[0]):
            image = inputs[i : i + 1]
            off = baselines
            if off is None:
                off = image.detach().mean(dim=(2, 3), keepdim=True).expand_as(image).contiguous()
            elif isinstance(off, torch.Tensor) and off.dim() == 4 and off.shape[0] == inputs.shape[0]:
                off = off[i : i + 1]
            mask = masks[i : i + 1] if masks.shape[0] == inputs.shape[0] else masks
            mask = torch.unique(mask, return_inverse=True)[1].reshape(mask.shape)  # this image's ids, 0..K-1
            with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
                torch.manual_seed(seed)
                warnings.filterwarnings("ignore", message="You are providing multiple inputs for Lime")
                out.append(
                    super().attribute(
                        image,
                        baselines=off,
                        target=None if targets is None else targets[i : i + 1],
                        feature_mask=mask,
                        n_samples=n_samples,
                        perturbations_per_eval=perturbations_per_eval,
                    )
                )
        return torch.cat(out)
