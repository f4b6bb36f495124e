"""Model-parameter randomisation test: does the map change when the learned weights are destroyed?

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3.1. The layers of a deep copy of the
model are re-initialised top-down (cascading: the logits layer first, then progressively deeper, keeping the
earlier ones random; independent: one layer at a time, the others trained) and the maps of the randomised
models are compared with the original maps by Spearman rank correlation (of |map| and signed), SSIM and HOG
similarity (:mod:`captum_ext.metrics.similarity`).

What counts as a layer: every module that owns parameters directly (``module.parameters(recurse=False)`` is not
empty) and runs in a probe forward, ordered by when its forward starts. So norm layers (BatchNorm, LayerNorm,
GroupNorm with affine parameters) are layers of their own; a ViT's class token (owned by the model itself,
shown as ``"<model>"``) and position embedding (owned by the encoder) are layers too, placed where their owner's
forward begins. An ``nn.MultiheadAttention`` is one layer including its ``out_proj``. Modules that do not run
in the probe forward are left out.

How a layer is randomised: with its module's own ``reset_parameters()`` (Conv, Linear, norm layers, ...).
``nn.MultiheadAttention`` gets Xavier-uniform projection weights, ``out_proj.reset_parameters()``, and its
biases drawn like ``nn.Linear``'s (U(+-1/sqrt(embed_dim))) because torch's own initialiser zeroes them and a zero
bias would survive; so every parameter of the layer changes. Parameters of a module with no initialiser
(class tokens, position embeddings) are drawn from N(0, s^2), s their own standard deviation (0.02 when that
is 0). Layer *i* in forward order is always drawn with seed ``(seed, i)`` inside ``torch.random.fork_rng``:
the cascading and the independent test give a layer the same random values, and the global RNG stream is
untouched. BatchNorm running statistics are kept unless ``reset_running_stats=True``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from captum_ext._checks import Target, check_bool, check_choice, check_finite, check_seed
from captum_ext._context import eval_mode
from captum_ext._model import forward_order, predict, unwrap_model
from captum_ext._seeds import derived_seed
from captum_ext.explainer import Explainer, as_explainer
from captum_ext.metrics.similarity import (
    SIMILARITIES,
    SimilarityName,
    average_ranks,
    check_similarities,
    map_similarity,
    pearson_rows,
)
from captum_ext.model_output import OutputFn, check_output_fn
from captum_ext.sanity.result import SanityResult

__all__ = ["model_randomization_test", "parameter_layers", "randomize_layer"]

Mode = Literal["cascading", "independent"]


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def parameter_layers(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Names of the modules that own parameters directly, in forward-execution order (bottom-up).

    Found by a one-sample probe forward in eval mode without gradients; hooks are removed afterwards, also on
    error. An ``nn.MultiheadAttention`` counts once (its ``out_proj`` is part of it); the model's own parameters
    are named ``""``.

    Args:
        model: the network (left unchanged).
        inputs: a probe batch (N, ...); only its first sample is used.

    Returns:
        list of dotted module names, first-run first.

    Raises:
        ValueError: no module with parameters ran in the forward.

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> parameter_layers(SmallCNN(), torch.zeros(1, 1, 32, 32))
        ['features.conv1', 'features.conv2', 'features.conv3', 'classifier']
    """
    inside_attention = {
        id(sub)
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
        for sub in module.modules()
        if sub is not module
    }
    order = forward_order(
        model,
        inputs,
        lambda m: id(m) not in inside_attention and (_owns_parameters(m) or isinstance(m, nn.MultiheadAttention)),
    )
    if not order:
        raise ValueError("Expected the model to run at least one module with parameters in its forward, but none ran.")
    return order


def _randomize_attention(module: nn.MultiheadAttention) -> None:
    if module.in_proj_weight is not None:
        nn.init.xavier_uniform_(module.in_proj_weight)
    else:
        for weight in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight):
            nn.init.xavier_uniform_(weight)
    module.out_proj.reset_parameters()
    bound = 1.0 / math.sqrt(module.embed_dim)
    if module.in_proj_bias is not None:
        nn.init.uniform_(module.in_proj_bias, -bound, bound)
    for extra in (module.bias_k, module.bias_v):
        if extra is not None:
            nn.init.xavier_normal_(extra)


def randomize_layer(module: nn.Module, seed: int, reset_running_stats: bool = False) -> None:
    """Re-initialise the parameters ``module`` owns (in place) from ``seed``, leaving the global RNG untouched.

    See the module docstring for which initialiser each kind of module gets.

    Args:
        module: the layer (a module of a copy; never pass the user's model).
        seed: seeds the draw (inside ``torch.random.fork_rng``).
        reset_running_stats: also reset buffers such as BatchNorm running statistics. Default False (kept).

    Example::

        >>> import torch
        >>> layer = torch.nn.Linear(3, 2)
        >>> before = layer.weight.clone()
        >>> randomize_layer(layer, seed=0)
        >>> bool((layer.weight != before).all())
        True
    """
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        if isinstance(module, nn.MultiheadAttention):
            _randomize_attention(module)
        elif callable(reset_parameters := getattr(module, "reset_parameters", None)):
            reset_parameters()
        else:
            for param in module.parameters(recurse=False):
                spread = float(param.std()) if param.numel() > 1 else 0.0
                param.normal_(0.0, spread if spread > 0 and math.isfinite(spread) else 0.02)
        if not reset_running_stats:
            for name, buffer in module.named_buffers():
                buffer.copy_(buffers[name])


@dataclass
class _Step:
    label: str
    units: list[int]  # indices into the forward-ordered layer list


def _steps(order: list[str], layers: Sequence[str] | None) -> list[_Step]:
    display = lambda name: name or "<model>"  # noqa: E731
    if layers is None:
        return [_Step(display(order[i]), [i]) for i in reversed(range(len(order)))]
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(
            f"Expected argument `layers` to be a non-empty sequence of module names or None, but got {layers!r}."
        )
    steps = []
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"Expected argument `layers` to hold module names (str), but got {name!r}.")
        units = [i for i, unit in enumerate(order) if name == "" or unit == name or unit.startswith(name + ".")]
        if not units:
            shown = ", ".join(repr(n) for n in reversed(order))
            raise ValueError(
                f"Expected each entry of `layers` to name a layer with parameters (or a module containing some), "
                f"one of {shown}, but got {name!r}."
            )
        steps.append(_Step(display(name), units))
    return steps


def _check_common(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    similarity: Sequence[str],
    threshold: float,
    seed: int,
    keep_maps: int,
    output_fn: OutputFn | None = None,
) -> tuple[tuple[SimilarityName, ...], Explainer]:
    """Validate the arguments both randomisation tests share; return the similarities (``"spearman_abs"``
    always included: the verdicts use it) and the caller's explainer as a private copy."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}.")
    metrics = check_similarities(similarity, "similarity")
    if "spearman_abs" not in metrics:
        metrics = ("spearman_abs", *metrics)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        got = (
            f"shape {tuple(inputs.shape)}, dtype {inputs.dtype}"
            if isinstance(inputs, torch.Tensor)
            else type(inputs).__name__
        )
        raise ValueError(f"Expected argument `inputs` to be a float (N, C, H, W) tensor, but got {got}.")
    check_finite("inputs", inputs)
    check_output_fn(output_fn)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not -1 <= threshold <= 1:
        raise ValueError(f"Expected argument `threshold` to be a real number in [-1, 1], but got {threshold!r}.")
    check_seed(seed)
    if isinstance(keep_maps, bool) or not isinstance(keep_maps, numbers.Integral) or keep_maps < 0:
        raise ValueError(f"Expected argument `keep_maps` to be a non-negative int, but got {keep_maps!r}.")
    return metrics, as_explainer(explainer)


class _Comparer:
    """Holds the original maps (and their ranks, computed once); scores other attributions against them."""

    def __init__(self, original: torch.Tensor, metrics: tuple[SimilarityName, ...]):
        self.metrics = metrics
        self.abs0 = original.abs().sum(1)
        self.sum0 = original.sum(1)
        self.image_metrics = tuple(m for m in metrics if m in ("ssim", "hog"))
        self.ranks0 = {"spearman_abs": average_ranks(self._flat(self.abs0, "original"))}
        if "spearman" in metrics:
            self.ranks0["spearman"] = average_ranks(self._flat(self.sum0, "original"))

    @staticmethod
    def _flat(maps: torch.Tensor, stage: str) -> torch.Tensor:
        if not torch.isfinite(maps).all():
            raise ValueError(f"The explainer returned non-finite maps ({stage}); the similarities are undefined.")
        return maps.reshape(maps.shape[0], -1)

    def per_image(self, attribution: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        """``{metric: (n,) similarity to the original}`` for an attribution of the first n probe images."""
        n = attribution.shape[0]
        new_abs = attribution.abs().sum(1)
        ranks = average_ranks(self._flat(new_abs, stage))
        values = {"spearman_abs": pearson_rows(self.ranks0["spearman_abs"][:n], ranks)}
        if "spearman" in self.metrics:
            values["spearman"] = pearson_rows(
                self.ranks0["spearman"][:n], average_ranks(self._flat(attribution.sum(1), stage))
            )
        if self.image_metrics:
            values.update(map_similarity(self.abs0[:n], new_abs, self.image_metrics))
        return {m: values[m] for m in self.metrics}


NOISE_FLOOR_IMAGES = 16


def _noise_floor(
    explainer: Explainer,
    model: nn.Module,
    inputs: torch.Tensor,
    target: Target,
    comparer: _Comparer,
    output_fn: OutputFn | None,
) -> dict[str, float]:
    """Mean similarity of a second explanation pass over the first :data:`NOISE_FLOOR_IMAGES` probe images to the
    first pass: what the explainer's own randomness leaves of a map when nothing in the model changed."""
    n = min(NOISE_FLOOR_IMAGES, inputs.shape[0])
    if isinstance(target, torch.Tensor) and target.dim() == 1:
        target = target[:n]
    elif isinstance(target, (list, tuple)):
        target = list(target)[:n]
    means, _ = _summaries(
        comparer.per_image(explainer.attribute(model, inputs[:n], target, output_fn=output_fn), "second pass")
    )
    return means


def _same_state(modules: list[nn.Module], units: list[int], saved: list[dict[str, torch.Tensor]]) -> bool:
    """Whether every parameter and buffer of the step's layers equals its value before the step, bit for bit."""
    return all(
        torch.equal(value, state[name])
        for i, state in zip(units, saved)
        for name, value in modules[i].state_dict().items()
    )


def _summaries(values: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    means = {m: float(v.mean()) for m, v in values.items()}
    stds = {m: float(v.std(unbiased=False)) for m, v in values.items()}
    return means, stds


def model_randomization_test(
    model: nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    target: Target = None,
    *,
    mode: Mode = "cascading",
    similarity: Sequence[SimilarityName] = SIMILARITIES,
    layers: Sequence[str] | None = None,
    threshold: float = 0.6,
    seed: int = 0,
    recompute_target: bool = False,
    reset_running_stats: bool = False,
    keep_maps: int = 4,
    output_fn: OutputFn | None = None,
) -> SanityResult:
    """Does the explanation depend on the learned weights? (Adebayo et al., NeurIPS 2018, model-parameter test.)

    Randomises the layers of a deep copy top-down (see the module docstring for what a layer is and how it is
    randomised), explains ``inputs`` after each step, and compares each map with the original map. Costs
    L + 1 attribution passes for L steps (the original and one per step), one more pass over the first 16
    images for the noise floor (a second explanation of the unchanged model: a deterministic method scores 1,
    a noise "explainer" about 0), plus the batched similarity. For a deterministic method, a step whose
    re-initialisation changes nothing (a BatchNorm of a freshly initialised model: weight 1, bias 0, and its running
    statistics kept) makes no pass: its map is the previous one; such steps are listed in the result's
    ``unchanged``.

    ``threshold`` = 0.6: Adebayo et al. report rank correlations of about 0.2-0.5 after randomisation for the
    methods that pass and of 0.8-1.0 for those that fail; 0.6 lies between, and a map whose pixel ranking keeps
    a correlation of 0.6 with the trained model's still shows mostly the same pixels. ``passed`` needs
    Spearman(|map|) below it both after the first step (the top layer alone must matter) and after the last.

    Args:
        model: the trained classifier (N, C, H, W) -> (N, classes). Never changed: every step runs on a copy.
        explainer: an :class:`~captum_ext.Explainer` or a short name such as ``"guided_backprop"``.
        inputs: the probe batch, a float (N, C, H, W) tensor.
        target: class per image (int, sequence or (N,) tensor) or None (default) for the original model's
            prediction, kept fixed across steps.
        mode: ``"cascading"`` (default: layers stay randomised, top-down) or ``"independent"`` (one at a time).
        similarity: metrics to report, from ``"spearman_abs"``, ``"spearman"``, ``"ssim"``, ``"hog"`` (default all;
            ``"spearman_abs"`` is always added, the verdict uses it). ``"spearman"`` compares the channel-summed
            signed maps, the others the summed |attribution| (``reduce="sum_abs"``).
        layers: None (default: every layer, top-down), or module names to randomise in the order given; a name
            of a container randomises every layer inside it in one step.
        threshold: the Spearman(|map|) level below which a map counts as changed. Default 0.6 (see above).
        seed: seeds every layer's re-initialisation. Default 0.
        recompute_target: explain each randomised model's own prediction instead of the fixed target (as
            Adebayo's reference code does). Default False.
        reset_running_stats: also reset BatchNorm running statistics when randomising. Default False.
        keep_maps: how many probe images' maps to keep in the result for the map grid. Default 4.
        output_fn: maps the model's output to (N, classes) scores. Default the package's output rule.

    Returns:
        :class:`SanityResult` with ``layers`` (one per step), ``similarity`` (L entries per metric),
        ``noise_floor``, ``passed``, ``reproducible`` and ``maps`` ((L + 1, K, H, W)).

    Raises:
        ValueError: bad ``inputs``, ``mode``, ``similarity``, ``threshold``, ``keep_maps`` or a ``layers`` name
            that holds no parameters.
        TypeError: ``model`` not an ``nn.Module``, bad ``explainer``, ``layers`` or ``seed`` types.

    Example::

        >>> import torch
        >>> from captum_ext.models import SmallCNN
        >>> x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> result = model_randomization_test(SmallCNN(), "saliency", x, similarity=("spearman_abs",))
        >>> result.layers
        ['classifier', 'features.conv3', 'features.conv2', 'features.conv1']
        >>> len(result.similarity["spearman_abs"]), result.reproducible
        (4, True)
    """
    metrics, explainer = _check_common(model, explainer, inputs, similarity, threshold, seed, keep_maps, output_fn)
    check_choice("mode", mode, ("cascading", "independent"))
    check_bool("recompute_target", recompute_target)
    check_bool("reset_running_stats", reset_running_stats)

    work = copy.deepcopy(unwrap_model(model))  # torch.compile / DDP: the user's module and its own layer names
    for param in work.parameters():
        param.grad = None
    order = parameter_layers(work, inputs)
    steps = _steps(order, layers)
    modules = [work.get_submodule(name) for name in order]

    fixed_target = target
    if target is None:
        with torch.no_grad(), eval_mode(work):
            fixed_target = predict(work, inputs, output_fn)

    original = explainer.attribute(work, inputs, fixed_target, output_fn=output_fn)
    comparer = _Comparer(original, metrics)
    noise_floor = _noise_floor(explainer, work, inputs, fixed_target, comparer, output_fn)

    k = min(int(keep_maps), inputs.shape[0])
    kept = [comparer.abs0[:k]]
    similarity_mean: dict[str, list[float]] = {m: [] for m in metrics}
    similarity_std: dict[str, list[float]] = {m: [] for m in metrics}
    unchanged: list[str] = []
    attribution, summary, original_summary = original, None, None
    deterministic = isinstance(explainer.method, str) and not explainer.stochastic
    for step in steps:
        saved = [{k_: v.detach().clone() for k_, v in modules[i].state_dict().items()} for i in step.units]
        for i in step.units:
            randomize_layer(modules[i], derived_seed(seed, "layer", i), reset_running_stats)
        # the model is what it was: a deterministic method's map is too, so it is not computed again (a stochastic
        # method, or a Captum class whose randomness we cannot know, draws a new map, as a real pass would)
        if deterministic and _same_state(modules, step.units, saved):
            unchanged.append(step.label)
            if mode == "independent" or summary is None:  # the map is the original's
                if original_summary is None:
                    original_summary = _summaries(comparer.per_image(original, "original"))
                attribution, summary = original, original_summary
        else:
            step_target = fixed_target
            if recompute_target:
                with torch.no_grad(), eval_mode(work):
                    step_target = predict(work, inputs, output_fn)
            attribution = explainer.attribute(work, inputs, step_target, output_fn=output_fn)
            summary = _summaries(comparer.per_image(attribution, f"after randomising {step.label}"))
        means, stds = summary
        for m in metrics:
            similarity_mean[m].append(means[m])
            similarity_std[m].append(stds[m])
        kept.append(attribution[:k].abs().sum(1))
        if mode == "independent":
            for i, state in zip(step.units, saved):
                modules[i].load_state_dict(state)

    first, last = similarity_mean["spearman_abs"][0], similarity_mean["spearman_abs"][-1]
    return SanityResult(
        test="model",
        mode=mode,
        explainer=explainer.name,
        layers=[step.label for step in steps],
        similarity=similarity_mean,
        similarity_std=similarity_std,
        noise_floor=noise_floor,
        threshold=float(threshold),
        passed=bool(first < threshold and last < threshold),
        reproducible=bool(noise_floor["spearman_abs"] >= threshold),
        maps=torch.stack(kept).cpu() if k else None,
        images=inputs[:k].detach().cpu().clone() if k else None,
        unchanged=unchanged,
        passes=1 + len(steps) - len(unchanged),
    )
