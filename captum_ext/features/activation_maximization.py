"""``ActivationMaximization``: what input does a class logit or a channel respond to most?

Gradient ascent on the input image (Erhan et al. 2009; Simonyan et al. 2014), with the regularisers that turn
adversarial-looking noise into readable pictures: an L2 penalty (Simonyan 2014), total variation (Mahendran &
Vedaldi 2015), random jitter and periodic Gaussian blur (Yosinski et al. 2015; Mordvintsev et al. 2015, Olah
et al. 2017, "Feature Visualization"). With every regulariser at 0 it is naive ascent, whose high-frequency
result is the lesson of the method: the maximiser of a network is not a natural image.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Literal, overload

import torch
from torch import nn

from captum_ext._checks import check_int, check_real, check_seed
from captum_ext._context import eval_mode, gradients_enabled
from captum_ext._model import capture_output
from captum_ext.imputation import gaussian_blur
from captum_ext.model_output import OutputFn, check_output_fn
from captum_ext.model_output import logits as read_logits

__all__ = ["ActivationMaximization", "total_variation"]


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of each image of a (K, C, H, W) batch: sum of |vertical| + |horizontal| steps, (K,)."""
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().sum(dim=(1, 2, 3))
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().sum(dim=(1, 2, 3))
    return dy + dx


def _as_index_list(value: object, name: str) -> list[int]:
    items = [value] if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if (
        not isinstance(items, Sequence)
        or isinstance(items, str)
        or not items
        or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) and int(i) >= 0 for i in items)
    ):
        raise ValueError(
            f"Expected argument `{name}` to be a non-negative int or a non-empty list of them, but got {value!r}."
        )
    return [int(i) for i in items]


class ActivationMaximization:
    """Synthesise the input that maximises a class logit or a channel's mean activation, several at once.

    Each of the K images ``x_k`` maximises, with Adam at learning rate ``lr`` for ``steps`` steps,

        ``a_k(jitter(x_k)) - l2 * sum(x_k ** 2) - tv * TV(x_k)``

    where ``a_k`` is the logit of class ``target[k]`` or the mean over positions of channel ``channel[k]`` of
    ``layer``'s output (dimension 1 is the channel; every further dimension is averaged). Every ``blur_every``
    steps each image is blurred with a Gaussian of std ``blur_sigma``. The K images never interact (penalties
    and Adam act per pixel, and the objective is a sum over images), so a batch of targets costs about one
    forward/backward per step instead of K.

    References: Erhan et al. 2009, "Visualizing Higher-Layer Features of a Deep Network"; Simonyan et al. 2014,
    "Deep Inside Convolutional Networks"; Mahendran & Vedaldi 2015 (total variation); Yosinski et al. 2015,
    "Understanding Neural Networks Through Deep Visualization" (blur, jitter); Olah et al. 2017, Distill.

    The model is used in eval mode and left exactly as it was: no ``.grad`` is written to its parameters and
    the hook used for ``layer`` is removed even on error. Random steps (the initial image, the jitter) come
    from a ``torch.Generator`` seeded with ``seed`` at each call, so a call is reproducible and the global RNG
    is untouched.

    Args:
        model: an ``nn.Module`` taking (K, C, H, W) images; for ``target`` it must return (K, classes) logits.
        input_shape: ``(C, H, W)``, without the batch dimension.
        steps: Optimisation steps. Default 256.
        lr: Adam's learning rate (about the change per pixel per step). Default 0.05.
        l2: Weight of the L2 penalty ``sum(x ** 2)``. Default 0.01.
        tv: Weight of the total variation (L1 of the image gradients). Default 0.05.
        jitter: Largest random shift in pixels (circular, same for all K images), drawn anew each step;
            0 turns it off. Default 2.
        blur_every: Blur every this many steps; 0 turns blurring off. Default 4.
        blur_sigma: Std of the Gaussian blur in pixels; 0 turns blurring off too. Default 0.5.
        value_range: ``(lo, hi)`` to clamp the image after each step; None (default) leaves it unconstrained.
        seed: Seeds the initial image and the jitter. Default 0.
        output_fn: maps the model's output to (K, classes) scores for class targets. Default the package's output
            rule (:func:`captum_ext.model_output.logits`).

    The initial image is ``0.01 * N(0, 1)`` per pixel, or ``(lo + hi) / 2 + 0.01 * (hi - lo) * N(0, 1)`` with a
    ``value_range``.

    Raises:
        ValueError: a setting out of range, or a bad ``input_shape``.
        TypeError: ``model`` is not an ``nn.Module``.

    Example::

        >>> import torch
        >>> from captum_ext.features import ActivationMaximization
        >>> from captum_ext.models import SmallCNN
        >>> am = ActivationMaximization(SmallCNN(), (1, 32, 32), steps=8)
        >>> am.visualize(target=[0, 1, 2]).shape
        torch.Size([3, 1, 32, 32])
        >>> am.visualize(layer="features.conv2", channel=5).shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        steps: int = 256,
        lr: float = 0.05,
        l2: float = 0.01,
        tv: float = 0.05,
        jitter: int = 2,
        blur_every: int = 4,
        blur_sigma: float = 0.5,
        value_range: tuple[float, float] | None = None,
        seed: int = 0,
        output_fn: OutputFn | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}.")
        shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
        if shape is None or len(shape) != 3 or not all(isinstance(s, numbers.Integral) and s > 0 for s in shape):
            raise ValueError(f"Expected argument `input_shape` to be (C, H, W) positive ints, but got {input_shape!r}.")
        if value_range is not None:
            ok = (
                isinstance(value_range, Sequence)
                and len(value_range) == 2
                and all(isinstance(v, numbers.Real) for v in value_range)
                and value_range[0] < value_range[1]
            )
            if not ok:
                raise ValueError(
                    f"Expected argument `value_range` to be None or (lo, hi) with lo < hi, but got {value_range!r}."
                )
            value_range = (float(value_range[0]), float(value_range[1]))
        self.model = model
        self.input_shape: tuple[int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.steps = check_int("steps", steps, 1)
        self.lr = check_real("lr", lr, 0.0, low_open=True)
        self.l2 = check_real("l2", l2, 0.0)
        self.tv = check_real("tv", tv, 0.0)
        self.jitter = check_int("jitter", jitter, 0)
        self.blur_every = check_int("blur_every", blur_every, 0)
        self.blur_sigma = check_real("blur_sigma", blur_sigma, 0.0)
        self.value_range = value_range
        self.seed = check_seed(seed)
        self.output_fn = check_output_fn(output_fn)

    def __repr__(self) -> str:
        return (
            f"ActivationMaximization(model={type(self.model).__name__}, input_shape={self.input_shape}, "
            f"steps={self.steps}, lr={self.lr}, l2={self.l2}, tv={self.tv}, jitter={self.jitter}, "
            f"blur_every={self.blur_every}, blur_sigma={self.blur_sigma}, value_range={self.value_range}, "
            f"seed={self.seed})"
        )

    @overload
    def visualize(
        self,
        target: int | Sequence[int] | None = None,
        *,
        layer: str | None = None,
        channel: int | Sequence[int] | None = None,
        direction: torch.Tensor | None = None,
        return_trace: Literal[False] = False,
    ) -> torch.Tensor: ...

    @overload
    def visualize(
        self,
        target: int | Sequence[int] | None = None,
        *,
        layer: str | None = None,
        channel: int | Sequence[int] | None = None,
        direction: torch.Tensor | None = None,
        return_trace: Literal[True],
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def visualize(
        self,
        target: int | Sequence[int] | None = None,
        *,
        layer: str | None = None,
        channel: int | Sequence[int] | None = None,
        direction: torch.Tensor | None = None,
        return_trace: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...

    def visualize(
        self,
        target: int | Sequence[int] | None = None,
        *,
        layer: str | None = None,
        channel: int | Sequence[int] | None = None,
        direction: torch.Tensor | None = None,
        return_trace: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Optimise one image per class ``target``, per ``channel`` of ``layer``, or per ``direction`` in ``layer``'s
        channel space (exactly one of the three forms).

        Args:
            target: A class index or a list of K of them (maximise the logit).
            layer: Dotted name of a submodule (with ``channel`` or ``direction``).
            channel: A channel index or a list of K of them (maximise the channel's mean activation).
            direction: (K, channels) vectors: maximise the dot product of the layer's mean activation vector with
                each (an activation atlas' cell, Carter et al. 2019).
            return_trace: Also return the maximised activation at every step. Default False.

        Returns:
            The images (K, C, H, W), detached; with ``return_trace`` also the trace (steps, K): the activation
            ``a_k`` (before penalties) measured at each step on the jittered image.

        Raises:
            ValueError: both or neither of ``target`` and ``layer``/``channel``, a bad index, a model output of
                the wrong form, or an unknown ``layer``.
        """
        if (target is None) == (layer is None and channel is None and direction is None):
            raise ValueError(
                "Expected either argument `target` (class logits) or arguments `layer` and `channel` (or `direction`), "
                f"but got target={target!r}, layer={layer!r}, channel={channel!r}."
            )
        if target is None and (layer is None or (channel is None) == (direction is None)):
            raise ValueError(
                f"Expected argument `layer` with exactly one of `channel` and `direction`, but got layer={layer!r}, "
                f"channel={channel!r}, direction of shape {tuple(direction.shape) if direction is not None else None}."
            )
        if direction is not None and (not isinstance(direction, torch.Tensor) or direction.dim() != 2):
            raise ValueError(f"Expected argument `direction` to be a (K, channels) tensor, but got {direction!r}.")
        if direction is not None:
            indices = [0] * direction.shape[0]
        else:
            indices = _as_index_list(
                target if target is not None else channel, "target" if target is not None else "channel"
            )
        with eval_mode(self.model), gradients_enabled():
            if layer is None:
                images, trace = self._optimise(indices, self._logits)
            else:
                with capture_output(self.model, layer) as outputs:

                    def channel_output(x: torch.Tensor) -> torch.Tensor:
                        outputs.clear()
                        self.model(x)
                        means = self._channel_means(outputs[-1], layer)
                        if direction is None:
                            return means
                        return (means * direction.to(means)).sum(dim=1, keepdim=True)  # (K, 1): the dot product

                    images, trace = self._optimise(indices, channel_output)
        return (images, trace) if return_trace else images

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = read_logits(self.model(x), self.output_fn)
        if logits.dim() != 2:
            got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"Expected the model to return logits (K, classes) for argument `target`, but got {got}.")
        return logits

    @staticmethod
    def _channel_means(output: torch.Tensor, layer: str) -> torch.Tensor:
        if output.dim() < 2:
            raise ValueError(
                f"Expected layer {layer!r} to output (K, channels, ...), but got shape {tuple(output.shape)}."
            )
        return output.flatten(2).mean(2) if output.dim() > 2 else output

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.model.parameters(), None)
        if param is None or not param.is_floating_point():
            return torch.device("cpu"), torch.float32
        return param.device, param.dtype

    def _optimise(
        self, indices: list[int], activations: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device, dtype = self._device_dtype()
        gen = torch.Generator().manual_seed(self.seed)
        k = len(indices)
        noise = torch.randn((k, *self.input_shape), generator=gen, dtype=torch.float32)
        if self.value_range is None:
            init = 0.01 * noise
        else:
            lo, hi = self.value_range
            init = (lo + hi) / 2 + 0.01 * (hi - lo) * noise
        x = init.to(device=device, dtype=dtype).requires_grad_(True)
        optimiser = torch.optim.Adam([x], lr=self.lr)
        rows = torch.arange(k, device=device)
        picked = torch.tensor(indices, device=device)
        trace = torch.empty(self.steps, k)
        for step in range(self.steps):
            shifted = x
            if self.jitter:
                dy, dx = torch.randint(-self.jitter, self.jitter + 1, (2,), generator=gen).tolist()
                shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            out = activations(shifted)
            if int(picked.max()) >= out.shape[1]:
                raise ValueError(
                    f"Expected every index to be < {out.shape[1]} (the size of dimension 1 of the maximised output), "
                    f"but got {indices}."
                )
            act = out[rows, picked]
            objective = act - self.l2 * x.pow(2).sum(dim=(1, 2, 3))
            if self.tv:
                objective = objective - self.tv * total_variation(x)
            (grad,) = torch.autograd.grad(-objective.sum(), [x])
            x.grad = grad
            optimiser.step()
            with torch.no_grad():
                if self.blur_every and self.blur_sigma and (step + 1) % self.blur_every == 0:
                    x.copy_(gaussian_blur(x, self.blur_sigma, padding="reflect"))
                if self.value_range is not None:
                    x.clamp_(*self.value_range)
            trace[step] = act.detach().float().cpu()
        return x.detach(), trace
