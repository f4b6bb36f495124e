"""Robustness of an explanation: how much does the map move when the input moves a little?

* max- / average-sensitivity (Yeh et al., NeurIPS 2019): for ``samples`` inputs ``x' = x + u``, ``u`` uniform in
  ``[-radius, radius]`` per value, the relative change ``||e(x') - e(x)||_2 / ||e(x)||_2`` of the flattened map
  (Quantus' definition; Yeh et al. report the change itself), its maximum or mean over the samples; lower is better.
* relative input / output / representation stability (Agarwal et al., 2022): the largest relative map change per
  relative change of the input, the logits or a layer's output, over perturbations that keep the prediction
  (Quantus takes ``max`` instead of ``nanmax``, so one flipped prediction among 200 makes the image NaN, and draws
  positive-only noise in [0.02, 0.2]; here the noise is symmetric like the sensitivities');
* local Lipschitz estimate (Alvarez-Melis & Jaakkola, 2018): ``max ||ê(x') - ê(x)||_2 / ||x' - x||_2`` over Gaussian
  ``x' = x + N(0, std^2)``, with each map ``ê`` scaled by its own maximum absolute value (Quantus scales by the
  maximum over the whole batch, which makes an image's score depend on the others); lower is better.

All ``N * samples`` perturbed images are explained together, a chunk of images per explainer call. The noise comes
from a generator seeded by ``seed`` and is the same for every image of the batch (sample ``s`` adds the same
``u_s`` to each), so with a deterministic explainer an image's score depends neither on the other images nor on
its DDP shard (a stochastic one, such as SmoothGrad, draws per explainer call, and the calls' chunks depend on N). The explanations are computed for
``target`` (the true class, as in Quantus), by an :class:`~captum_ext.Explainer`.

Example::

    >>> import torch
    >>> from captum_ext import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> max_sensitivity(net, Explainer("saliency"), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), samples=4)
    tensor([0., 0.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from captum_ext._checks import check_choice, check_finite, check_int, check_real, check_seed, class_targets
from captum_ext._context import eval_mode, full_precision
from captum_ext._model import resolve_layer
from captum_ext.explainer import Explainer, as_explainer, images_per_pass
from captum_ext.metrics._mean import MeanOverImages
from captum_ext.model_output import OutputFn, logits

__all__ = [
    "max_sensitivity",
    "avg_sensitivity",
    "local_lipschitz_estimate",
    "relative_stability",
    "MaxSensitivity",
    "AvgSensitivity",
    "LocalLipschitzEstimate",
    "RelativeInputStability",
    "RelativeOutputStability",
    "RelativeRepresentationStability",
]

Noise = Callable[[torch.Generator, tuple[int, ...]], torch.Tensor]


def _perturbed_maps(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    target: torch.Tensor,
    samples: int,
    noise: Noise,
    seed: int,
    output_fn: OutputFn | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, N, C, H, W) input perturbations and the maps of the perturbed inputs, explained in chunks."""
    recipe = as_explainer(explainer)
    gen = torch.Generator().manual_seed(seed)
    deltas = noise(gen, (samples, 1, *inputs.shape[1:])).to(inputs).expand(samples, *inputs.shape)
    perturbed = (inputs.detach()[None] + deltas).reshape(-1, *inputs.shape[1:])
    targets = target.repeat(samples)
    chunk = min(256, images_per_pass(inputs))  # small digits: 256 a pass is faster on CPU than thousands
    out = [
        recipe.attribute(model, perturbed[i : i + chunk], targets[i : i + chunk], output_fn=output_fn)
        for i in range(0, perturbed.shape[0], chunk)
    ]
    return deltas, torch.cat(out).reshape(samples, *inputs.shape)


def _prepare(model, explainer, inputs, target, attributions, output_fn) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        raise ValueError(
            f"Expected argument `inputs` to be a float (N, C, H, W) tensor, but got {getattr(inputs, 'shape', inputs)!r}."
        )
    check_finite("inputs", inputs)
    target = class_targets(target, inputs.shape[0], None, inputs.device)
    if attributions is None:
        attributions = as_explainer(explainer).attribute(model, inputs, target, output_fn=output_fn)
    elif attributions.shape != inputs.shape:
        raise ValueError(
            f"Expected argument `attributions` to have the inputs' shape {tuple(inputs.shape)}, but got "
            f"{tuple(attributions.shape)}."
        )
    return target, check_finite("attributions", attributions.detach())


def _sensitivities(model, explainer, inputs, target, samples, radius, attributions, seed, output_fn) -> torch.Tensor:
    """(samples, N) relative changes ``||e(x') - e(x)|| / ||e(x)||``; NaN for an all-zero map."""
    check_int("samples", samples, 1)
    radius = check_real("radius", radius, 0.0, low_open=True)  # 0: no perturbation, a sensitivity of 0 by construction
    target, base = _prepare(model, explainer, inputs, target, attributions, output_fn)
    _, moved = _perturbed_maps(
        model,
        explainer,
        inputs,
        target,
        samples,
        lambda gen, shape: (torch.rand(shape, generator=gen) * 2 - 1) * radius,
        seed,
        output_fn,
    )
    change = (moved - base[None]).flatten(2).norm(dim=2)
    size = base.flatten(1).norm(dim=1)
    return torch.where(
        size > 0, change / size.clamp(min=torch.finfo(size.dtype).tiny), torch.full_like(change, float("nan"))
    )


def max_sensitivity(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    target,
    samples: int = 10,
    radius: float = 0.2,
    attributions: torch.Tensor | None = None,
    seed: int = 0,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(N,) largest relative map change over ``samples`` uniform perturbations of size ``radius`` (Yeh et al. 2019).

    ``attributions`` are the maps of the unperturbed inputs (computed by ``explainer`` when None).
    """
    seed = check_seed(seed)
    return _sensitivities(model, explainer, inputs, target, samples, radius, attributions, seed, output_fn).amax(0)


def avg_sensitivity(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    target,
    samples: int = 10,
    radius: float = 0.2,
    attributions: torch.Tensor | None = None,
    seed: int = 0,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(N,) mean relative map change over ``samples`` uniform perturbations of size ``radius`` (Yeh et al. 2019)."""
    seed = check_seed(seed)
    return _sensitivities(model, explainer, inputs, target, samples, radius, attributions, seed, output_fn).mean(0)


def _unit(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its largest absolute value (an all-zero map stays zero)."""
    scale = maps.flatten(-3).abs().amax(-1)[..., None, None, None]
    return maps / torch.where(scale > 0, scale, torch.ones_like(scale))


def local_lipschitz_estimate(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    target,
    samples: int = 10,
    std: float = 0.1,
    attributions: torch.Tensor | None = None,
    seed: int = 0,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(N,) ``max ||ê(x') - ê(x)|| / (||x' - x|| + 1e-10)`` over ``samples`` Gaussian perturbations of std ``std``,
    each map scaled by its own maximum absolute value (Alvarez-Melis & Jaakkola 2018)."""
    seed = check_seed(seed)
    check_int("samples", samples, 1)
    std = check_real("std", std, 0.0, low_open=True)  # no noise: no perturbation, and the estimate would be 0
    target, base = _prepare(model, explainer, inputs, target, attributions, output_fn)
    deltas, moved = _perturbed_maps(
        model,
        explainer,
        inputs,
        target,
        samples,
        lambda gen, shape: torch.randn(shape, generator=gen) * std,
        seed,
        output_fn,
    )
    change = (_unit(moved) - _unit(base)[None]).flatten(2).norm(dim=2)
    return (change / (deltas.flatten(2).norm(dim=2) + 1e-10)).amax(0)


class _RobustnessMetric(MeanOverImages):
    higher_is_better = False
    _score: Callable

    def __init__(
        self,
        explainer: Explainer | str,
        samples: int = 10,
        scale: float = 0.2,
        seed: int = 0,
        output_fn: OutputFn | None = None,
        **kwargs,
    ) -> None:
        seed = check_seed(seed)
        super().__init__(**kwargs)
        self.explainer = as_explainer(explainer)
        self.samples = check_int("samples", samples, 1)
        self.scale = check_real("scale", scale, 0.0, low_open=True)
        self.seed, self.output_fn = seed, output_fn

    def update(self, model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor | None, target) -> None:
        """Add a batch: the model, the inputs, their maps (or None to compute them) and the explained classes; an
        image whose map is all zero has no relative change and is skipped."""
        scores = type(self)._score(
            model, self.explainer, inputs, target, self.samples, self.scale, attributions, self.seed, self.output_fn
        )
        self.add(scores[~scores.isnan()])


class MaxSensitivity(_RobustnessMetric):
    """Mean over images of :func:`max_sensitivity`; DDP-synced. ``scale`` is the noise radius (default 0.2)."""

    _score = staticmethod(max_sensitivity)


class AvgSensitivity(_RobustnessMetric):
    """Mean over images of :func:`avg_sensitivity`; DDP-synced. ``scale`` is the noise radius (default 0.2)."""

    _score = staticmethod(avg_sensitivity)


class LocalLipschitzEstimate(_RobustnessMetric):
    """Mean over images of :func:`local_lipschitz_estimate`; DDP-synced. ``scale`` is the noise std (default 0.1)."""

    _score = staticmethod(local_lipschitz_estimate)

    def __init__(
        self,
        explainer: Explainer | str,
        samples: int = 10,
        scale: float = 0.1,
        seed: int = 0,
        output_fn: OutputFn | None = None,
        **kwargs,
    ) -> None:
        super().__init__(explainer, samples, scale, seed, output_fn, **kwargs)


def _outputs(
    model: nn.Module, images: torch.Tensor, layer: str | None, output_fn: OutputFn | None, chunk: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, K) scores of ``images`` and, with ``layer``, that layer's flattened (B, D) output, ``chunk`` at a time."""

    scores, features = [], []
    hook = None
    if layer is not None:
        hook = resolve_layer(model, layer).register_forward_hook(
            lambda m, a, out: features.append(out.detach().flatten(1))
        )
    try:
        with torch.no_grad(), eval_mode(model), full_precision(images.device):
            for start in range(0, images.shape[0], chunk):
                scores.append(logits(model(images[start : start + chunk]), output_fn).float())
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(scores), (torch.cat(features) if layer is not None else None)


def _relative(change: torch.Tensor, reference: torch.Tensor, eps: float) -> torch.Tensor:
    """``||change / reference||_2`` over everything after the (samples, N) dimensions, a zero of ``reference``
    replaced by ``eps`` (Agarwal et al.)."""
    return (change / torch.where(reference == 0, torch.full_like(reference, eps), reference)).flatten(2).norm(dim=-1)


def relative_stability(
    kind: str,
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    target,
    samples: int = 10,
    radius: float = 0.2,
    attributions: torch.Tensor | None = None,
    seed: int = 0,
    layer: str | None = None,
    eps: float = 1e-6,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(N,) relative input (``kind="input"``), output (``"output"``) or representation (``"representation"``,
    at ``layer``) stability of Agarwal et al. (2022): the largest, over the ``samples`` uniform perturbations of size
    ``radius`` that keep the predicted class, of ``||(e_x - e_x') / e_x|| / max(d, eps)`` with ``d`` the relative
    input change ``||(x - x') / x||``, the logit change ``||h(x) - h(x')||`` or the relative change of the layer's
    output; NaN when every perturbation changes the prediction. Lower is better."""
    seed = check_seed(seed)
    check_choice("kind", kind, ("input", "output", "representation"))
    if (kind == "representation") != (layer is not None):
        raise ValueError("Expected argument `layer` (a dotted module name) exactly when kind='representation'.")
    check_int("samples", samples, 1)
    radius, eps = check_real("radius", radius, 0.0, low_open=True), check_real("eps", eps, 0.0, low_open=True)
    target, base = _prepare(model, explainer, inputs, target, attributions, output_fn)
    deltas, moved = _perturbed_maps(
        model,
        explainer,
        inputs,
        target,
        samples,
        lambda gen, shape: (torch.rand(shape, generator=gen) * 2 - 1) * radius,
        seed,
        output_fn,
    )
    n = inputs.shape[0]
    chunk = min(256, images_per_pass(inputs))
    scores, features = _outputs(
        model, torch.cat([inputs.detach(), (inputs.detach()[None] + deltas).flatten(0, 1)]), layer, output_fn, chunk
    )
    scores = scores.reshape(samples + 1, n, -1)
    numerator = _relative(moved - base[None], base[None].expand_as(moved), eps)  # (samples, N)
    if kind == "input":
        denominator = _relative(-deltas, inputs.detach()[None].expand_as(deltas), eps)
    elif kind == "output":
        denominator = (scores[1:] - scores[:1]).norm(dim=-1)
    else:
        features = cast(torch.Tensor, features).reshape(samples + 1, n, -1)  # "representation" has a layer
        denominator = _relative(features[1:] - features[:1], features[:1].expand_as(features[1:]), eps)
    ratio = numerator / denominator.clamp(min=eps)
    kept = scores[1:].argmax(-1) == scores[:1].argmax(-1)
    return torch.where(kept, ratio, torch.full_like(ratio, -torch.inf)).amax(0).nan_to_num(neginf=float("nan"))


class _RelativeStability(MeanOverImages):
    higher_is_better = False
    _kind = "input"

    def __init__(
        self,
        explainer: Explainer | str,
        samples: int = 10,
        scale: float = 0.2,
        seed: int = 0,
        output_fn: OutputFn | None = None,
        layer: str | None = None,
        **kwargs,
    ) -> None:
        seed = check_seed(seed)
        super().__init__(**kwargs)
        self.explainer, self.layer = as_explainer(explainer), layer
        self.samples, self.scale = check_int("samples", samples, 1), check_real("scale", scale, 0.0, low_open=True)
        self.seed, self.output_fn = seed, output_fn

    def update(self, model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor | None, target) -> None:
        """Add a batch: the model, the inputs, their maps (or None to compute them) and the explained classes; images
        whose every perturbation changes the prediction are skipped."""
        scores = relative_stability(
            self._kind,
            model,
            self.explainer,
            inputs,
            target,
            self.samples,
            self.scale,
            attributions,
            self.seed,
            self.layer,
            output_fn=self.output_fn,
        )
        self.add(scores[~scores.isnan()])


class RelativeInputStability(_RelativeStability):
    """Mean over images of :func:`relative_stability` with ``kind="input"``; DDP-synced; lower is better.

    Example::

        >>> from captum_ext import Explainer
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> metric = RelativeInputStability(Explainer("input_x_gradient"), samples=4)
        >>> metric.update(net, torch.rand(2, 1, 4, 4), None, torch.tensor([0, 1]))
        >>> bool(metric.compute() >= 0)
        True
    """

    def __init__(
        self,
        explainer: Explainer | str,
        samples: int = 10,
        scale: float = 0.2,
        seed: int = 0,
        output_fn: OutputFn | None = None,
        **kwargs,
    ) -> None:
        super().__init__(explainer, samples, scale, seed, output_fn, **kwargs)


class RelativeOutputStability(RelativeInputStability):
    """Mean over images of :func:`relative_stability` with ``kind="output"`` (the logit change below the ratio)."""

    _kind = "output"


class RelativeRepresentationStability(_RelativeStability):
    """Mean over images of :func:`relative_stability` with ``kind="representation"`` at ``layer`` (dotted name)."""

    _kind = "representation"

    def __init__(
        self,
        explainer: Explainer | str,
        layer: str,
        samples: int = 10,
        scale: float = 0.2,
        seed: int = 0,
        output_fn: OutputFn | None = None,
        **kwargs,
    ) -> None:
        if not isinstance(layer, str):
            raise TypeError(f"Expected argument `layer` to be a dotted module name, but got {layer!r}.")
        super().__init__(explainer, samples, scale, seed, output_fn, layer=layer, **kwargs)
