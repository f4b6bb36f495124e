"""``Explainer``: a picklable recipe "Captum method + layer name + kwargs" that every benchmark, check, audit and
callback takes as "an attribution method".

The recipe holds no model: :meth:`Explainer.build` makes the Captum ``Attribution`` for whichever model it is
given, resolving ``layer`` by its dotted name, so one recipe serves the trained model, its deep copy and its
randomised copies alike.

Short names and their defaults (everything can be overridden by keyword):

==========================  ====================================================================================
``"saliency"``              ``captum.attr.Saliency`` with ``abs=False``: the signed gradient (Simonyan 2014).
``"input_x_gradient"``      ``captum.attr.InputXGradient``.
``"integrated_gradients"``  ``captum.attr.IntegratedGradients``, zero baseline, Captum's 50 steps.
``"guided_backprop"``       ``captum.attr.GuidedBackprop``.
``"gradcam"``               ``captum.attr.LayerGradCam`` with ReLU, upsampled bilinearly to the input and
                            repeated over channels; ``layer`` defaults to the last ``nn.Conv2d`` in forward order.
``"guided_gradcam"``        ``captum.attr.GuidedGradCam`` with bilinear upsampling; same default layer.
``"smoothgrad"``            ``NoiseTunnel(Saliency)``, 16 samples, noise std 0.15 x the batch's input range
``"smoothgrad_sq"``         (Smilkov 2017's recommendation, not Captum's 1.0); seeded, see ``seed``.
``"vargrad"``
``"occlusion"``             ``captum.attr.Occlusion``, square window of 1/8 of the image side, half stride, filled
                            with the per-channel mean of the explained batch (pass ``baselines=`` a (C,) tensor
                            such as ``CleverHansDigits.train_mean`` for the dataset mean), never black.
``"rollout"``               :class:`captum_ext.attr.AttentionRollout` (ViTs).
``"gradient_rollout"``      :class:`captum_ext.attr.GradientRollout` (ViTs).
``"random"``                :class:`captum_ext.attr.random_map.RandomAttribution`: a seeded random map.
==========================  ====================================================================================

Maps are always computed in eval mode (each module's mode is restored afterwards), with gradients enabled even
inside ``torch.no_grad`` / ``torch.inference_mode``, on a clone of the inputs. ``target=None`` means the model's
predicted class.

Example::

    >>> import torch
    >>> from captum_ext import Explainer
    >>> from captum_ext.models import SmallCNN
    >>> model, x = SmallCNN(), torch.rand(4, 1, 32, 32)
    >>> Explainer("gradcam", layer="features.conv3").attribute(model, x, target=3).shape
    torch.Size([4, 1, 32, 32])
    >>> Explainer("saliency").saliency(model, x, target=[0, 1, 2, 3], reduce="sum_abs").shape
    torch.Size([4, 32, 32])
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from captum import attr as captum_attr
from torch import nn

from captum_ext import maps
from captum_ext._context import eval_mode, gradients_enabled
from captum_ext.attr.random_map import RandomAttribution

__all__ = ["Explainer", "METHODS", "as_explainer", "canonical", "forward_order", "resolve_layer", "last_conv_layer"]

Target = int | list | tuple | torch.Tensor | None


@dataclass(frozen=True)
class _Method:
    """How a short name builds its Captum attribution and which attribute kwargs it adds by default."""

    build: Callable[[nn.Module, nn.Module | None, dict], captum_attr.Attribution]
    layer: bool = False
    stochastic: bool = False
    defaults: Callable[[torch.Tensor], dict] = field(default=lambda x: {})


def _noise_defaults(nt_type: str) -> Callable[[torch.Tensor], dict]:
    def defaults(x: torch.Tensor) -> dict:
        spread = float(x.detach().max() - x.detach().min()) or 1.0
        return {"nt_type": nt_type, "nt_samples": 16, "stdevs": 0.15 * spread, "abs": False}

    return defaults


def _occlusion_defaults(x: torch.Tensor) -> dict:
    c, h, w = x.shape[1:]
    side = (max(1, round(h / 8)), max(1, round(w / 8)))
    stride = (c, max(1, side[0] // 2), max(1, side[1] // 2))
    return {
        "sliding_window_shapes": (c, *side),
        "strides": stride,
        "baselines": x.mean(dim=(0, 2, 3)),
        "perturbations_per_eval": 32,
    }


def _rollout(class_name: str) -> Callable[[nn.Module, nn.Module | None, dict], captum_attr.Attribution]:
    def build(model: nn.Module, layer: nn.Module | None, kwargs: dict) -> captum_attr.Attribution:
        module = importlib.import_module("captum_ext.attr.rollout")  # imported late: rollout imports this module
        return getattr(module, class_name)(model, **kwargs)

    return build


METHODS: dict[str, _Method] = {
    "saliency": _Method(lambda m, l, k: captum_attr.Saliency(m, **k), defaults=lambda x: {"abs": False}),
    "input_x_gradient": _Method(lambda m, l, k: captum_attr.InputXGradient(m, **k)),
    "integrated_gradients": _Method(lambda m, l, k: captum_attr.IntegratedGradients(m, **k)),
    "guided_backprop": _Method(lambda m, l, k: captum_attr.GuidedBackprop(m, **k)),
    "gradcam": _Method(
        lambda m, l, k: captum_attr.LayerGradCam(m, l, **k), layer=True, defaults=lambda x: {"relu_attributions": True}
    ),
    "guided_gradcam": _Method(
        lambda m, l, k: captum_attr.GuidedGradCam(m, l, **k),
        layer=True,
        defaults=lambda x: {"interpolate_mode": "bilinear"},
    ),
    "smoothgrad": _Method(
        lambda m, l, k: captum_attr.NoiseTunnel(captum_attr.Saliency(m, **k)),
        stochastic=True,
        defaults=_noise_defaults("smoothgrad"),
    ),
    "smoothgrad_sq": _Method(
        lambda m, l, k: captum_attr.NoiseTunnel(captum_attr.Saliency(m, **k)),
        stochastic=True,
        defaults=_noise_defaults("smoothgrad_sq"),
    ),
    "vargrad": _Method(
        lambda m, l, k: captum_attr.NoiseTunnel(captum_attr.Saliency(m, **k)),
        stochastic=True,
        defaults=_noise_defaults("vargrad"),
    ),
    "occlusion": _Method(lambda m, l, k: captum_attr.Occlusion(m, **k), defaults=_occlusion_defaults),
    "rollout": _Method(_rollout("AttentionRollout")),
    "gradient_rollout": _Method(_rollout("GradientRollout")),
    "random": _Method(lambda m, l, k: RandomAttribution(m, **k), stochastic=True),
}


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return ``model``'s submodule called ``name`` (dotted), or raise a ``ValueError`` listing the names."""
    if not isinstance(name, str):
        raise TypeError(f"Expected argument `layer` to be a dotted module name (str), but got {type(name).__name__}.")
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        shown = ", ".join(repr(n) for n in names[:40]) + (", ..." if len(names) > 40 else "")
        raise ValueError(f"Expected argument `layer` to name a submodule of the model; {name!r} is not one of {shown}.") from None


def forward_order(model: nn.Module, inputs: torch.Tensor, select: Callable[[nn.Module], bool]) -> list[str]:
    """Dotted names of the modules for which ``select(module)`` holds, in the order a forward pass first enters them.

    Found by a one-sample probe forward in eval mode without gradients; the hooks are removed afterwards, also on
    error. The model is otherwise untouched.

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> forward_order(SmallCNN(), torch.zeros(1, 1, 32, 32), lambda m: isinstance(m, nn.Conv2d))
        ['features.conv1', 'features.conv2', 'features.conv3']
    """
    names = {id(module): name for name, module in model.named_modules() if select(module)}
    order: list[str] = []

    def record(module: nn.Module, args: tuple) -> None:
        if names[id(module)] not in order:
            order.append(names[id(module)])

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if id(m) in names]
    try:
        with torch.no_grad(), eval_mode(model):
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    return order


def last_conv_layer(model: nn.Module, inputs: torch.Tensor) -> str:
    """Dotted name of the last ``nn.Conv2d`` in forward-execution order (found by a one-sample probe forward)."""
    order = forward_order(model, inputs, lambda module: isinstance(module, nn.Conv2d))
    if not order:
        raise ValueError("Expected the model to contain an nn.Conv2d for this layer method; pass `layer=` explicitly.")
    return order[-1]


def canonical(value: Any) -> Any:
    """A stable JSON-able form of settings for fingerprints: tensors by content hash, classes by qualified name,
    other objects by class and public attributes (never by ``repr``, which may hold a memory address)."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        return {"sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest(), "shape": list(data.shape), "dtype": str(data.dtype)}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    attributes = {k: v for k, v in vars(value).items() if not k.startswith("_")} if hasattr(value, "__dict__") else {}
    return {"class": f"{type(value).__module__}.{type(value).__qualname__}", "attributes": canonical(attributes)}


class Explainer:
    """A picklable attribution recipe: Captum method (class or short name) + layer name + kwargs.

    Args:
        method: a Captum ``Attribution`` class (``captum.attr.Saliency``, ``LayerGradCam``, ... or one of ours) or
            one of the short names in :data:`METHODS` (see the module docstring for each one's defaults).
        layer: dotted module name for layer methods (``"features.conv3"``), resolved on each model given.
        init_kwargs: extra keyword arguments for the attribution class's constructor. Default none.
        name: display name, unique within a benchmark. Default the short name or the class name.
        seed: seeds the stochastic methods (SmoothGrad, VarGrad, random). Call *i* uses seed ``(seed, i)``: two
            consecutive calls differ, and a new ``Explainer`` with the same seed reproduces the sequence.
            Default 0.
        **attribute_kwargs: keyword arguments for ``attribute`` (override the short name's defaults). ``method`` is
            positional-only, so Captum's own ``method=`` of ``IntegratedGradients`` passes through.

    Raises:
        ValueError: an unknown short name (the message lists them), or a layer method without a conv layer.
        TypeError: ``method`` neither a string nor an ``Attribution`` subclass.
    """

    def __init__(
        self,
        method: str | type[captum_attr.Attribution],
        /,
        *,
        layer: str | None = None,
        init_kwargs: dict | None = None,
        name: str | None = None,
        seed: int = 0,
        **attribute_kwargs: Any,
    ):
        if isinstance(method, str):
            if method not in METHODS:
                raise ValueError(
                    f"Expected argument `method` to be a Captum Attribution class or one of "
                    f"{', '.join(map(repr, METHODS))}, but got {method!r}."
                )
        elif not (isinstance(method, type) and issubclass(method, captum_attr.Attribution)):
            raise TypeError(
                f"Expected argument `method` to be a captum.attr.Attribution subclass or a short name, but got {method!r}."
            )
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"Expected argument `layer` to be a dotted module name (str) or None, but got {layer!r}.")
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise TypeError(f"Expected argument `init_kwargs` to be a dict or None, but got {type(init_kwargs).__name__}.")
        if method == "random" and attribute_kwargs:
            raise ValueError(
                f"The 'random' explainer takes no attribute keyword arguments, but got {sorted(attribute_kwargs)}."
            )
        if not isinstance(seed, numbers.Integral):
            raise TypeError(f"Expected argument `seed` to be an int, but got {seed!r}.")
        self.method = method
        self.layer = layer
        self.init_kwargs = dict(init_kwargs or {})
        self.attribute_kwargs = dict(attribute_kwargs)
        self.name = name or (method if isinstance(method, str) else method.__name__)
        self.seed = int(seed)
        self._calls = 0

    # -- recipe ---------------------------------------------------------------------------------------------
    @property
    def _spec(self) -> _Method | None:
        return METHODS[self.method] if isinstance(self.method, str) else None

    @property
    def uses_layer(self) -> bool:
        """Whether the method attributes to a layer (its maps are upsampled to the input)."""
        if self._spec is not None:
            return self._spec.layer
        return issubclass(self.method, captum_attr.LayerAttribution) or issubclass(self.method, captum_attr.GuidedGradCam)

    @property
    def stochastic(self) -> bool:
        """Whether the method draws random numbers (seeded by ``seed`` and the call count)."""
        return self._spec.stochastic if self._spec is not None else False

    def _layer_name(self, model: nn.Module, inputs: torch.Tensor | None) -> str | None:
        if not self.uses_layer:
            return None
        if self.layer is not None:
            return self.layer
        if inputs is None:
            raise ValueError(f"The layer method {self.name!r} needs `layer=` (or inputs to find the last conv layer).")
        return last_conv_layer(model, inputs)

    def build(self, model: nn.Module, inputs: torch.Tensor | None = None) -> captum_attr.Attribution:
        """The Captum ``Attribution`` for ``model`` (layer resolved by name on this model)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}.")
        layer_name = self._layer_name(model, inputs)
        layer = resolve_layer(model, layer_name) if layer_name is not None else None
        if self._spec is not None:
            return self._spec.build(model, layer, dict(self.init_kwargs))
        if layer is not None:
            return self.method(model, layer, **self.init_kwargs)
        return self.method(model, **self.init_kwargs)

    def config(self) -> dict:
        """A JSON-able description of the recipe (method, layer, every kwarg, seed): what fingerprints hash."""
        method = self.method if isinstance(self.method, str) else canonical(self.method)
        return {
            "method": method,
            "layer": self.layer,
            "init_kwargs": canonical(self.init_kwargs),
            "attribute_kwargs": canonical(self.attribute_kwargs),
            "seed": self.seed,
        }

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`config`: changes whenever the method, the layer or any kwarg changes."""
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()

    # -- maps -----------------------------------------------------------------------------------------------
    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """Attributions shaped like ``inputs`` (N, C, H, W); layer maps are upsampled and repeated over channels.

        Args:
            model: the classifier, left unchanged (mode, weights, gradients, hooks).
            inputs: (N, C, H, W) float tensor.
            target: class index, per-sample indices (list or (N,) tensor), or None for the predicted class.

        Returns:
            Detached float tensor of ``inputs``' shape.
        """
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
            got = f"shape {tuple(inputs.shape)}, dtype {inputs.dtype}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"Expected argument `inputs` to be a float (N, C, H, W) tensor, but got {got}.")
        with gradients_enabled(), eval_mode(model):
            x = inputs.detach().clone().requires_grad_()
            target = self._target(model, x, target)
            attribution = self.build(model, x)
            kwargs = self._spec.defaults(x) if self._spec is not None else {}
            kwargs.update(self.attribute_kwargs)
            if self.method == "occlusion":
                kwargs["baselines"] = self._occlusion_baseline(kwargs["baselines"], x)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
                out = self._run(attribution, x, target, kwargs)
        out = out.detach().float()
        if self.uses_layer and out.shape[-2:] != x.shape[-2:]:
            out = maps.upsample(out, x.shape[-2:])
        if out.shape != x.shape:
            out = out.expand(x.shape[0], x.shape[1], *out.shape[-2:]).contiguous()
        return out

    def _run(self, attribution: captum_attr.Attribution, x: torch.Tensor, target: Any, kwargs: dict) -> torch.Tensor:
        # Every method runs seeded inside fork_rng: a user-given Captum class may sample (Lime, KernelShap, ...)
        # and must neither read nor advance the global RNG.
        call_seed = self.seed * 1_000_003 + self._calls
        self._calls += 1
        if self.method == "random":
            return attribution.attribute(x, target=target, generator=torch.Generator().manual_seed(call_seed))
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(call_seed)
            return attribution.attribute(x, target=target, **kwargs)

    @staticmethod
    def _occlusion_baseline(baselines: Any, x: torch.Tensor) -> Any:
        if isinstance(baselines, torch.Tensor) and baselines.dim() == 1:
            if baselines.numel() != x.shape[1]:
                raise ValueError(
                    f"Expected `baselines` to have one value per channel ({x.shape[1]}), but got {baselines.numel()}."
                )
            return baselines.to(x).reshape(1, -1, 1, 1).expand(1, *x.shape[1:]).contiguous()
        return baselines

    @staticmethod
    def _target(model: nn.Module, x: torch.Tensor, target: Target) -> Any:
        n = x.shape[0]
        if target is None:
            with torch.no_grad():
                return model(x).argmax(dim=1)
        if isinstance(target, torch.Tensor):
            if target.dim() == 0:
                return int(target)
            if target.shape != (n,):
                raise ValueError(f"Expected argument `target` to be an int or have shape ({n},), but got {tuple(target.shape)}.")
            return target.to(x.device).long()
        if isinstance(target, (list, tuple)):
            if len(target) != n:
                raise ValueError(f"Expected argument `target` to have one entry per input ({n}), but got {len(target)}.")
            return torch.as_tensor(target, device=x.device).long()
        if isinstance(target, numbers.Integral):
            return int(target)
        raise TypeError(f"Expected argument `target` to be an int, a sequence, a tensor or None, but got {target!r}.")

    def saliency(
        self, model: nn.Module, inputs: torch.Tensor, target: Target = None, reduce: maps.Reduction = "sum_abs"
    ) -> torch.Tensor:
        """The channel-reduced (N, H, W) map every metric uses (see :func:`captum_ext.maps.reduce_channels`)."""
        maps.check_reduction(reduce)  # before the attribution pass, not after it
        return maps.reduce_channels(self.attribute(model, inputs, target), reduce)

    def __repr__(self) -> str:
        method = self.method if isinstance(self.method, str) else self.method.__name__
        extras = "".join(f", {k}={v!r}" for k, v in self.attribute_kwargs.items())
        layer = f", layer={self.layer!r}" if self.layer else ""
        return f"Explainer({method!r}{layer}, name={self.name!r}{extras})"


def as_explainer(value: Explainer | str, argument: str = "explainer") -> Explainer:
    """A private copy of an ``Explainer`` with its call counter reset, or one built from a short name.

    Consumers (benchmarks, checks, audits, callbacks) call this so that their stochastic maps are reproducible and the
    caller's own object is never advanced.

    Raises:
        TypeError: ``value`` is neither an ``Explainer`` nor a string.
    """
    if isinstance(value, str):
        return Explainer(value)
    if isinstance(value, Explainer):
        fresh = copy.deepcopy(value)
        fresh._calls = 0
        return fresh
    raise TypeError(f"Expected argument `{argument}` to be an Explainer or a short name, but got {value!r}.")
