"""``Explainer``: a picklable recipe "Captum method + layer name + kwargs" that every benchmark, check, audit and
callback takes as "an attribution method".

The recipe holds no model: :meth:`Explainer.build` makes the Captum ``Attribution`` for whichever model it is
given, resolving ``layer`` by its dotted name, so one recipe serves the trained model, its deep copy and its
randomised copies alike.

Short names and their defaults (everything can be overridden by keyword):

==========================  ====================================================================================
``"saliency"``              ``captum.attr.Saliency`` with ``abs=False``: the signed gradient (Simonyan 2014).
``"input_x_gradient"``      ``captum.attr.InputXGradient``.
``"integrated_gradients"``  ``captum.attr.IntegratedGradients``, zero baseline, Captum's 50 steps, chunked
                            (``internal_batch_size``, see below).
``"guided_backprop"``       ``captum.attr.GuidedBackprop``.
``"gradcam"``               ``captum.attr.LayerGradCam`` with ReLU, upsampled bilinearly to the input and
                            repeated over channels; ``layer`` defaults to :func:`default_cam_layer`, the output of
                            the last block that still has spatial extent (``layer4`` of a ResNet).
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
``"cam"``                   :class:`captum_ext.attr.cam.CAM` (Zhou 2016): the layer's channels weighted by the
                            linear classifier after its global average pool; same default layer as Grad-CAM;
                            refused for any other head.
``"gradcam_plus_plus"``     :class:`captum_ext.attr.cam.GradCAMPlusPlus` (Chattopadhyay 2018); same default layer.
``"layerwise_input_x_gradient"``  :class:`captum_ext.attr.layerwise.LayerwiseInputXGradient`: input x gradient
                            at every convolution, upsampled, scaled, averaged (``init_kwargs={"skip_first": k}``).
``"lime"``                  :class:`captum_ext.attr.superpixels.SuperpixelLime`: Captum's ``Lime`` over 50 SLIC
                            superpixels, 64 samples, the image's per-channel mean as the "off" value; seeded.
==========================  ====================================================================================

Memory: the multi-sample methods are chunked by default so that no forward / backward pass holds more than
``max(N, 16 * 3 * 224 * 224 / (C * H * W))`` images (16 at 224 px RGB, one gradient pass on a ResNet-50 batch of
16): IntegratedGradients' ``internal_batch_size``, NoiseTunnel's ``nt_samples_batch_size`` and Occlusion's
``perturbations_per_eval`` (4 x as many images: no backward pass). An out-of-memory error names the setting to
lower.

The model's output is read by :func:`captum_ext.model_output.logits` (a tensor, ``.logits``, a dict's ``"logits"``,
a tuple's first element, or your ``output_fn=``). Inputs, model outputs and maps are checked finite; a map that is
constant (all zero, typically) is reported with a warning naming the likely cause.

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
import functools
import hashlib
import importlib
import inspect
import json
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast, overload

import torch
from captum import attr as captum_attr
from torch import nn

from captum_ext import maps
from captum_ext._checks import Target, check_finite, check_int, check_real, check_seed, class_targets
from captum_ext._context import eval_mode, full_precision, gradients_enabled
from captum_ext._model import default_cam_layer, forward_order, last_conv_layer, resolve_layer, unwrap_model
from captum_ext._seeds import derived_seed
from captum_ext.attr.random_map import RandomAttribution
from captum_ext.model_output import LogitsModel, OutputFn, check_output_fn, with_logits

__all__ = [
    "Explainer",
    "METHODS",
    "as_explainer",
    "canonical",
    "forward_order",
    "resolve_layer",
    "last_conv_layer",
    "default_cam_layer",
    "images_per_pass",
]

#: (class whose __init__ takes ``init_kwargs``, classes whose ``attribute`` takes the attribute kwargs)
_Classes = tuple[type[captum_attr.Attribution], tuple[type[captum_attr.Attribution], ...]]


@dataclass(frozen=True)
class _Method:
    """How a short name builds its Captum attribution and which attribute kwargs it adds by default."""

    build: Callable[[nn.Module, nn.Module | None, dict], captum_attr.Attribution]
    #: () -> (class whose __init__ takes ``init_kwargs``, classes whose ``attribute`` takes the attribute kwargs)
    classes: Callable[[], _Classes]
    layer: bool = False
    stochastic: bool = False
    defaults: Callable[[torch.Tensor], dict] = field(default=lambda x: {})


def _captum(name: str, *more: str) -> Callable[[], _Classes]:
    """The ``classes`` of a method built from ``captum.attr.<name>`` (wrapped by ``more``, e.g. NoiseTunnel)."""
    return lambda: (getattr(captum_attr, name), tuple(getattr(captum_attr, n) for n in (name, *more)))


def _ours(module: str, name: str) -> Callable[[], _Classes]:
    def classes() -> _Classes:
        cls = getattr(importlib.import_module(module), name)  # imported late: rollout imports this module
        return cls, (cls,)

    return classes


#: Version of the short names' defaults, part of every fingerprint: 2 since Grad-CAM defaults to the last spatial
#: block output and the multi-sample methods are chunked (issue #13); 3 since each call's seed is
#: :func:`captum_ext._seeds.derived_seed` (issue #17).
DEFAULTS_VERSION = 3

#: Input values one gradient pass may hold by default: a batch of 16 RGB images at 224 px.
PASS_VALUES = 16 * 3 * 224 * 224


def images_per_pass(x: torch.Tensor) -> int:
    """How many images like ``x[0]`` one chunked forward / backward pass holds by default: at least the batch,
    otherwise :data:`PASS_VALUES` worth of input values (16 at 224 px RGB, 2,352 digits of 32 px).

    Example::

        >>> images_per_pass(torch.zeros(4, 3, 224, 224)), images_per_pass(torch.zeros(64, 3, 224, 224))
        (16, 64)
    """
    return max(x.shape[0], PASS_VALUES // max(1, x[0].numel()))


def _noise_defaults(nt_type: str) -> Callable[[torch.Tensor], dict]:
    def defaults(x: torch.Tensor) -> dict:
        spread = float(x.detach().max() - x.detach().min()) or 1.0
        samples = 16
        chunk = min(samples, max(1, images_per_pass(x) // x.shape[0]))
        return {
            "nt_type": nt_type,
            "nt_samples": samples,
            "nt_samples_batch_size": chunk,
            "stdevs": 0.15 * spread,
            "abs": False,
        }

    return defaults


def _occlusion_defaults(x: torch.Tensor) -> dict:
    c, h, w = x.shape[1:]
    side = (max(1, round(h / 8)), max(1, round(w / 8)))
    stride = (c, max(1, side[0] // 2), max(1, side[1] // 2))
    return {
        "sliding_window_shapes": (c, *side),
        "strides": stride,
        "baselines": x.mean(dim=(0, 2, 3)),
        "perturbations_per_eval": max(1, 4 * images_per_pass(x) // x.shape[0]),
    }


#: The attribute keyword that bounds each chunked method's memory, named in out-of-memory errors.
_CHUNK_SETTING = {
    "integrated_gradients": "internal_batch_size",
    "smoothgrad": "nt_samples_batch_size",
    "smoothgrad_sq": "nt_samples_batch_size",
    "vargrad": "nt_samples_batch_size",
    "occlusion": "perturbations_per_eval",
    "lime": "perturbations_per_eval",
}


def _lime_defaults(x: torch.Tensor) -> dict:
    return {"perturbations_per_eval": min(64, 4 * images_per_pass(x[:1]))}  # Lime perturbs one image at a time


def _ours_built(
    module: str, class_name: str, layer: bool
) -> Callable[[nn.Module, nn.Module | None, dict], captum_attr.Attribution]:
    """Build ``module.class_name`` (imported late: those modules import this one), with the layer when ``layer``."""

    def build(model: nn.Module, resolved: nn.Module | None, kwargs: dict) -> captum_attr.Attribution:
        cls = getattr(importlib.import_module(module), class_name)
        return cls(model, resolved, **kwargs) if layer else cls(model, **kwargs)

    return build


def _rollout(class_name: str) -> Callable[[nn.Module, nn.Module | None, dict], captum_attr.Attribution]:
    def build(model: nn.Module, layer: nn.Module | None, kwargs: dict) -> captum_attr.Attribution:
        module = importlib.import_module("captum_ext.attr.rollout")  # imported late: rollout imports this module
        return getattr(module, class_name)(model, **kwargs)

    return build


METHODS: dict[str, _Method] = {
    "saliency": _Method(
        lambda m, l, k: captum_attr.Saliency(m, **k), _captum("Saliency"), defaults=lambda x: {"abs": False}
    ),
    "input_x_gradient": _Method(lambda m, l, k: captum_attr.InputXGradient(m, **k), _captum("InputXGradient")),
    "integrated_gradients": _Method(
        lambda m, l, k: captum_attr.IntegratedGradients(m, **k),
        _captum("IntegratedGradients"),
        defaults=lambda x: {"internal_batch_size": images_per_pass(x)},
    ),
    "guided_backprop": _Method(lambda m, l, k: captum_attr.GuidedBackprop(m, **k), _captum("GuidedBackprop")),
    "gradcam": _Method(
        lambda m, l, k: captum_attr.LayerGradCam(m, l, **k),
        _captum("LayerGradCam"),
        layer=True,
        defaults=lambda x: {"relu_attributions": True},
    ),
    "guided_gradcam": _Method(
        lambda m, l, k: captum_attr.GuidedGradCam(m, l, **k),
        _captum("GuidedGradCam"),
        layer=True,
        defaults=lambda x: {"interpolate_mode": "bilinear"},
    ),
    **{
        name: _Method(
            lambda m, l, k: captum_attr.NoiseTunnel(captum_attr.Saliency(m, **k)),
            _captum("Saliency", "NoiseTunnel"),
            stochastic=True,
            defaults=_noise_defaults(name),
        )
        for name in ("smoothgrad", "smoothgrad_sq", "vargrad")
    },
    "occlusion": _Method(
        lambda m, l, k: captum_attr.Occlusion(m, **k), _captum("Occlusion"), defaults=_occlusion_defaults
    ),
    "rollout": _Method(_rollout("AttentionRollout"), _ours("captum_ext.attr.rollout", "AttentionRollout")),
    "gradient_rollout": _Method(_rollout("GradientRollout"), _ours("captum_ext.attr.rollout", "GradientRollout")),
    "random": _Method(
        lambda m, l, k: RandomAttribution(m, **k), lambda: (RandomAttribution, (RandomAttribution,)), stochastic=True
    ),
    "cam": _Method(_ours_built("captum_ext.attr.cam", "CAM", True), _ours("captum_ext.attr.cam", "CAM"), layer=True),
    "gradcam_plus_plus": _Method(
        _ours_built("captum_ext.attr.cam", "GradCAMPlusPlus", True),
        _ours("captum_ext.attr.cam", "GradCAMPlusPlus"),
        layer=True,
    ),
    "layerwise_input_x_gradient": _Method(
        _ours_built("captum_ext.attr.layerwise", "LayerwiseInputXGradient", False),
        _ours("captum_ext.attr.layerwise", "LayerwiseInputXGradient"),
    ),
    "lime": _Method(
        _ours_built("captum_ext.attr.superpixels", "SuperpixelLime", False),
        _ours("captum_ext.attr.superpixels", "SuperpixelLime"),
        stochastic=True,
        defaults=_lime_defaults,
    ),
}

#: Keyword arguments the Explainer itself passes (or must not be given): never taken from ``attribute_kwargs``.
_RESERVED = {
    "self",
    "inputs",
    "target",
    "return_convergence_delta",
    "forward_func",
    "model",
    "layer",
    "attribution_method",
}


def _keywords(function: Callable) -> tuple[set[str], bool]:
    """(named parameters, whether it takes ``**kwargs``) of ``function``."""
    parameters = inspect.signature(function).parameters.values()
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind == p.VAR_KEYWORD for p in parameters)


def _check_keywords(name: str, argument: str, given: dict, functions: Sequence[Callable], open_ended: bool) -> None:
    """Every key of ``given`` must be a parameter of one of ``functions`` (unless one takes ``**kwargs`` and
    ``open_ended``); otherwise a TypeError naming the unknown keys and the accepted ones."""
    accepted: set[str] = set()
    for function in functions:
        named, var_keyword = _keywords(function)
        if var_keyword and open_ended:
            return
        accepted |= named
    accepted -= _RESERVED
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise TypeError(
            f"Expected the keyword arguments of `{argument}` for {name!r} to be among {', '.join(sorted(accepted)) or 'none'}, "
            f"but got {', '.join(map(repr, unknown))}."
        )


def _code_digest(code: Any) -> str:
    """SHA-256 of a code object's bytecode, names and constants, nested functions' code included."""
    sha = hashlib.sha256(code.co_code + repr(code.co_names).encode())
    for constant in code.co_consts:
        if hasattr(constant, "co_code"):
            sha.update(_code_digest(constant).encode())
        elif isinstance(constant, (str, bytes, int, float, tuple, type(None))):
            sha.update(repr(constant).encode())
    return sha.hexdigest()


def canonical(value: Any) -> Any:
    """A stable JSON-able form of settings for fingerprints: tensors by content hash, classes by qualified name,
    functions by qualified name, a hash of their bytecode (two lambdas differ), their defaults and the values their
    closure captured, ``functools.partial`` by function and arguments, other objects by class and public attributes (never by ``repr``, which may hold a memory
    address)."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        return {
            "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest(),
            "shape": list(data.shape),
            "dtype": str(data.dtype),
        }
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, functools.partial):
        return {
            "partial": canonical(value.func),
            "args": canonical(list(value.args)),
            "keywords": canonical(value.keywords),
        }
    if callable(value) and hasattr(value, "__code__"):  # a function: its name, its compiled body, what it captured
        cells = [cell.cell_contents for cell in value.__closure__ or ()]
        return {
            "function": f"{value.__module__}.{value.__qualname__}",
            "code": _code_digest(value.__code__),
            "defaults": canonical(list(value.__defaults__ or ())),
            "kwdefaults": canonical(value.__kwdefaults__ or {}),
            "closure": canonical(cells),
        }
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
            raise TypeError(
                f"Expected argument `init_kwargs` to be a dict or None, but got {type(init_kwargs).__name__}."
            )
        if method == "random" and attribute_kwargs:
            raise ValueError(
                f"The 'random' explainer takes no attribute keyword arguments, but got {sorted(attribute_kwargs)}."
            )
        if isinstance(method, str):
            init_class, attribute_classes = METHODS[method].classes()
            open_ended = False  # NoiseTunnel's **kwargs go to Saliency, whose keywords are listed
        else:
            init_class, attribute_classes, open_ended = method, (method,), True
        label = method if isinstance(method, str) else method.__name__
        _check_keywords(label, "init_kwargs", dict(init_kwargs or {}), [init_class.__init__], open_ended)
        _check_keywords(label, "attribute", attribute_kwargs, [c.attribute for c in attribute_classes], open_ended)
        _check_counts(attribute_kwargs)
        check_seed(seed)
        self.method: str | type[captum_attr.Attribution] = method
        if layer is not None and not self.uses_layer:
            layer_methods = ", ".join(repr(m) for m, spec in METHODS.items() if spec.layer)
            raise ValueError(
                f"Expected argument `layer` only for a layer method ({layer_methods} or a Captum layer attribution), "
                f"but {label!r} takes none and got layer={layer!r}; it would be ignored."
            )
        self.layer: str | None = layer
        self.init_kwargs: dict = dict(init_kwargs or {})
        self.attribute_kwargs: dict[str, Any] = dict(attribute_kwargs)
        self.name: str = name or (method if isinstance(method, str) else method.__name__)
        self.seed: int = int(seed)
        self._calls: int = 0

    # -- recipe ---------------------------------------------------------------------------------------------
    @property
    def _spec(self) -> _Method | None:
        return METHODS[self.method] if isinstance(self.method, str) else None

    @property
    def uses_layer(self) -> bool:
        """Whether the method attributes to a layer (its maps are upsampled to the input)."""
        if isinstance(self.method, str):
            return METHODS[self.method].layer
        return issubclass(self.method, captum_attr.LayerAttribution) or issubclass(
            self.method, captum_attr.GuidedGradCam
        )

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
            raise ValueError(f"The layer method {self.name!r} needs `layer=` (or inputs to find its default layer).")
        return default_cam_layer(model, inputs)

    def build(
        self, model: nn.Module, inputs: torch.Tensor | None = None, output_fn: OutputFn | None = None
    ) -> captum_attr.Attribution:
        """The Captum ``Attribution`` for ``model`` (layer resolved by name on this model).

        Captum is handed ``model`` wrapped in a :class:`~captum_ext.model_output.LogitsModel`, so a model that returns
        a tuple, a dict or a Hugging Face output works; ``output_fn`` overrides the output rule.
        """
        return self._build(model, with_logits(model, output_fn), inputs)

    def _build(self, model: nn.Module, forward: nn.Module, inputs: torch.Tensor | None) -> captum_attr.Attribution:
        layer_name = self._layer_name(model, inputs)
        layer = resolve_layer(model, layer_name) if layer_name is not None else None
        if isinstance(self.method, str):
            return METHODS[self.method].build(forward, layer, dict(self.init_kwargs))
        if layer is not None:
            return self.method(forward, layer, **self.init_kwargs)
        return self.method(forward, **self.init_kwargs)

    def config(self) -> dict:
        """A JSON-able description of the recipe (method, layer, every kwarg, seed, and for a short name the version
        of its defaults): what fingerprints hash, so cached ROAR rankings and runs never outlive a default."""
        method = self.method if isinstance(self.method, str) else canonical(self.method)
        return {
            "method": method,
            "layer": self.layer,
            "init_kwargs": canonical(self.init_kwargs),
            "attribute_kwargs": canonical(self.attribute_kwargs),
            "seed": self.seed,
            "defaults": DEFAULTS_VERSION if isinstance(self.method, str) else None,
        }

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`config`: changes whenever the method, the layer or any kwarg changes."""
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()

    # -- maps -----------------------------------------------------------------------------------------------
    @overload
    def attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: Target = None, *, output_fn: OutputFn | None = None
    ) -> torch.Tensor: ...

    @overload
    def attribute(
        self,
        model: nn.Module,
        inputs: tuple[torch.Tensor],
        target: Target = None,
        *,
        output_fn: OutputFn | None = None,
    ) -> tuple[torch.Tensor]: ...

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor | tuple[torch.Tensor],
        target: Target = None,
        *,
        output_fn: OutputFn | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor]:
        """Attributions shaped like ``inputs`` (N, C, H, W); layer maps are upsampled and repeated over channels.

        Args:
            model: the classifier, left unchanged (mode, weights, gradients, hooks); a ``torch.compile``d,
                ``DataParallel`` or DDP-wrapped model is explained through the module it wraps. Autocast is off for
                the call: under mixed precision the maps are computed in the model's own dtype.
            inputs: (N, C, H, W) float tensor, finite, of the model's dtype and device, or Captum's tuple of that one
                tensor (as ``captum.metrics.sensitivity_max`` passes it).
            target: class index, per-sample indices (list or (N,) tensor), or None for the predicted class.
            output_fn: maps the model's output to (N, classes) scores. Default the package's output rule
                (:func:`captum_ext.model_output.logits`).

        Returns:
            Detached float tensor of ``inputs``' shape, in the form given (a tuple for a tuple, as Captum does).

        Raises:
            ValueError: malformed or non-finite ``inputs``; a ``target`` outside the model's classes; a model output
                or map that is not finite.
            TypeError: ``model`` not an ``nn.Module``, an output the rule cannot read, a non-integer ``target``.
            RuntimeError: out of memory, with the setting to lower.
        """
        single = not isinstance(inputs, tuple)
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise ValueError(
                    f"Expected argument `inputs` to be a tensor or Captum's tuple of one tensor, but got a tuple of "
                    f"{len(inputs)}."
                )
            inputs = inputs[0]
        _check_inputs(model, inputs)
        check_output_fn(output_fn)
        model = unwrap_model(model)  # torch.compile / DDP: the user's own module, eagerly, by its own layer names
        forward = _CheckedScores(model, output_fn)
        with gradients_enabled(), eval_mode(model), full_precision(inputs.device):
            x = inputs.detach().clone().requires_grad_()
            target = forward.targets(x, target)
            attribution = self._build(model, forward, x)
            kwargs = self._spec.defaults(x) if self._spec is not None else {}
            kwargs.update(self.attribute_kwargs)
            if self.method == "occlusion":
                kwargs["baselines"] = self._occlusion_baseline(kwargs["baselines"], x)
                _check_window(kwargs["sliding_window_shapes"], tuple(x.shape[1:]))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
                calls = self._calls
                try:
                    out = self._run(attribution, x, target, kwargs)
                except (ValueError, TypeError):  # refused in the pass (a target, the scores): no map was drawn,
                    self._calls = calls  # so the sequence of stochastic maps stays where it was
                    raise
            if forward.classes is None:  # the method never called the model (``"random"``): check the targets now
                with torch.no_grad():
                    forward(x[:1])
        out = out.detach().float()
        if self.uses_layer and out.shape[-2:] != x.shape[-2:]:
            out = maps.upsample(out, cast("tuple[int, int]", x.shape[-2:]))  # (N, C, H, W): two sizes
        if out.shape != x.shape:
            out = out.expand(x.shape[0], x.shape[1], *out.shape[-2:]).contiguous()
        check_finite(f"{self.name} maps", out, "The gradients overflowed or the model produces NaN for these inputs.")
        self._warn_constant(out)
        return out if single else (out,)

    def _warn_constant(self, out: torch.Tensor) -> None:
        """Warn when every map of the batch is constant: the attribution then says nothing about these inputs. (A few
        all-zero Grad-CAM maps among others are Grad-CAM's own answer, "no positive evidence at this layer".)"""
        flat = out.reshape(out.shape[0], -1)
        if self.method == "random" or not bool((flat.amax(1) == flat.amin(1)).all()):
            return
        zero = bool((flat == 0).all())
        cause = (
            "the target scores do not depend on the input: an untrained head initialised to zero (torchvision's ViT "
            "heads are), dead ReLUs, or a Grad-CAM layer with no positive evidence"
            if zero
            else "the attribution is blind to the input (a layer map of spatial size 1?)"
        )
        warnings.warn(
            f"Explainer {self.name!r}: all {len(flat)} maps are {'all zero' if zero else 'constant'}; likely cause: "
            f"{cause}. Metrics and verdicts on such maps mean nothing.",
            RuntimeWarning,
            stacklevel=3,
        )

    def _run(self, attribution: captum_attr.Attribution, x: torch.Tensor, target: Any, kwargs: dict) -> torch.Tensor:
        # Every method runs seeded inside fork_rng: a user-given Captum class may sample (Lime, KernelShap, ...)
        # and must neither read nor advance the global RNG.
        call_seed = derived_seed(self.seed, "call", self._calls)
        self._calls += 1
        if self.method == "random":
            return attribution.attribute(x, target=target, generator=torch.Generator().manual_seed(call_seed))
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(call_seed)
                return attribution.attribute(x, target=target, **kwargs)
        except RuntimeError as error:
            if "out of memory" not in str(error) and "can't allocate memory" not in str(error):
                raise
            setting = _CHUNK_SETTING.get(self.method) if isinstance(self.method, str) else None
            advice = (
                f"lower `{setting}=` (now {kwargs.get(setting)!r}) or the batch size"
                if setting
                else "explain fewer images per call"
            )
            raise type(error)(
                f"Explainer {self.name!r} ran out of memory on {tuple(x.shape)} inputs; {advice}. ({error})"
            ) from error

    @staticmethod
    def _occlusion_baseline(baselines: Any, x: torch.Tensor) -> Any:
        if isinstance(baselines, torch.Tensor) and baselines.dim() == 1:
            if baselines.numel() != x.shape[1]:
                raise ValueError(
                    f"Expected `baselines` to have one value per channel ({x.shape[1]}), but got {baselines.numel()}."
                )
            return baselines.to(x).reshape(1, -1, 1, 1).expand(1, *x.shape[1:]).contiguous()
        return baselines

    def saliency(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: Target = None,
        reduce: maps.Reduction = "sum_abs",
        *,
        output_fn: OutputFn | None = None,
    ) -> torch.Tensor:
        """The channel-reduced (N, H, W) map every metric uses (see :func:`captum_ext.maps.reduce_channels`)."""
        maps.check_reduction(reduce)  # before the attribution pass, not after it
        attributions = self.attribute(model, inputs, target, output_fn=output_fn)
        return maps.reduce_channels(attributions[0] if isinstance(attributions, tuple) else attributions, reduce)

    def __repr__(self) -> str:
        method = self.method if isinstance(self.method, str) else self.method.__name__
        extras = "".join(f", {k}={v!r}" for k, v in self.attribute_kwargs.items())
        layer = f", layer={self.layer!r}" if self.layer else ""
        return f"Explainer({method!r}{layer}, name={self.name!r}{extras})"


class _CheckedScores(LogitsModel):
    """The model as Captum sees it in one ``attribute`` call. Its first forward, inside the attribution pass itself,
    checks the scores (an (N, classes) tensor, finite) and the targets against the class count, so a given target
    costs no forward pass of its own."""

    def __init__(self, model: nn.Module, output_fn: OutputFn | None):
        super().__init__(model, output_fn)
        self.classes: int | None = None
        self._targets: torch.Tensor | None = None
        self._shape: tuple[int, ...] = ()

    def targets(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        """(N,) class indices: the prediction for None (a no-grad forward), else ``target`` (its form checked now,
        its range at the first forward)."""
        self._shape = tuple(x.shape)
        if target is None:
            with torch.no_grad():
                return self(x).argmax(dim=1)
        try:
            self._targets = class_targets(target, x.shape[0], None, x.device)
        except ValueError:  # a negative index: learn the class count first, so that the error can name the range
            with torch.no_grad():
                self(x[:1])
            class_targets(target, x.shape[0], self.classes, x.device)
            raise
        return self._targets

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.classes is not None:
            return super().forward(*args, **kwargs)
        try:
            scores = super().forward(*args, **kwargs)
        except RuntimeError as error:  # a shape mismatch deep inside the model: say which argument it came from
            if type(error) is not RuntimeError or "memory" in str(error):
                raise
            raise RuntimeError(
                f"The model's forward failed on `inputs` of shape {self._shape}: {str(error).strip().splitlines()[0]} "
                "(does the model expect another channel count or image size?)"
            ) from error
        if scores.dim() != 2:
            raise TypeError(
                f"Expected the model's scores to be an (N, classes) tensor, but got shape {tuple(scores.shape)}; pass "
                "`output_fn=` to select them."
            )
        check_finite(
            "model outputs",
            scores.detach(),
            "The model produces NaN or Inf for these finite inputs (or for the points the method evaluates near them).",
        )
        self.classes = scores.shape[1]
        if self._targets is not None:
            class_targets(self._targets, len(self._targets), self.classes, self._targets.device)
        return scores


def _check_inputs(model: nn.Module, inputs: object) -> None:
    """A float, finite (N >= 1, C, H, W) tensor with the model's dtype and device, else an error saying what to fix."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}.")
    if (
        not isinstance(inputs, torch.Tensor)
        or inputs.dim() != 4
        or not inputs.is_floating_point()
        or inputs.shape[0] == 0
    ):
        got = (
            f"shape {tuple(inputs.shape)}, dtype {inputs.dtype}"
            if isinstance(inputs, torch.Tensor)
            else type(inputs).__name__
        )
        raise ValueError(f"Expected argument `inputs` to be a float (N, C, H, W) tensor with N >= 1, but got {got}.")
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is not None and (parameter.dtype, parameter.device) != (inputs.dtype, inputs.device):
        raise ValueError(
            f"Expected argument `inputs` to have the model's dtype and device ({parameter.dtype}, {parameter.device}), "
            f"but got ({inputs.dtype}, {inputs.device}); convert with `inputs.to(model_parameter)`."
        )
    check_finite("inputs", inputs)


def _check_window(window: Any, image: tuple[int, ...]) -> None:
    """Occlusion's window: (C, h, w) ints, each between 1 and the image's size."""
    shape = tuple(window) if isinstance(window, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != len(image)
        or not all(isinstance(w, numbers.Integral) and 1 <= int(w) <= s for w, s in zip(shape, image))
    ):
        raise ValueError(
            f"Expected argument `sliding_window_shapes` to be a (C, h, w) tuple of ints within the image's {image}, "
            f"but got {window!r}."
        )


def _check_counts(kwargs: dict) -> None:
    """The sample counts and chunk sizes of the multi-sample methods are ints >= 1; noise scales finite and >= 0."""
    for key in ("n_steps", "nt_samples", "internal_batch_size", "nt_samples_batch_size", "perturbations_per_eval"):
        if kwargs.get(key) is not None:
            check_int(key, kwargs[key], 1)
    if isinstance(kwargs.get("stdevs"), numbers.Real):
        check_real("stdevs", kwargs["stdevs"], 0.0)


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
