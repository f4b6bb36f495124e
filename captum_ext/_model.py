"""What the package asks of a model, in one place: its device, its predictions and accuracy, a layer by name, the
order a forward pass enters its modules, the default layers of the layer methods, and one layer's output captured
during a forward pass. Every probe forward runs in eval mode without gradients, and every hook is removed after it.

Example::

    >>> import torch
    >>> from captum_ext.models import SmallCNN
    >>> model = SmallCNN()
    >>> last_conv_layer(model, torch.zeros(1, 1, 32, 32))
    'features.conv3'
    >>> with capture_output(model, "features.relu3") as outputs:
    ...     _ = model(torch.zeros(2, 1, 32, 32))
    >>> outputs[0].shape[0]
    2
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from captum_ext._context import eval_mode, full_precision
from captum_ext.batches import Unpack, unpack_batch
from captum_ext.model_output import OutputFn, logits

__all__ = [
    "unwrap_model",
    "model_device",
    "predict",
    "accuracy",
    "resolve_layer",
    "forward_order",
    "last_conv_layer",
    "default_cam_layer",
    "capture_output",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's own module inside the wrappers that hide it: ``torch.compile``'s ``OptimizedModule`` (its
    ``_orig_mod``), ``DataParallel`` and ``DistributedDataParallel`` (their ``module``), any nesting of them. The
    package explains and hooks that module, eagerly, by the layer names the user wrote.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None)
        if type(model).__name__ != "OptimizedModule" or not isinstance(inner, nn.Module):
            return model
        model = inner


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def predict(model: nn.Module, inputs: torch.Tensor, output_fn: OutputFn | None = None) -> torch.Tensor:
    """(N,) argmax class of the model's scores (read by the package's output rule, autocast off); call it under
    ``no_grad``."""
    with full_precision(inputs.device):
        return logits(model(inputs), output_fn).argmax(dim=1)


def accuracy(
    model: nn.Module, batches: Iterable, output_fn: OutputFn | None = None, unpack: Unpack | None = None
) -> float:
    """Share of the batches' images (read by :func:`captum_ext.batches.unpack_batch`) whose argmax prediction equals
    the label; eval mode, no grad."""
    device = model_device(model)
    correct = total = 0
    with torch.no_grad(), eval_mode(model):
        for batch in batches:
            x, y = unpack_batch(batch, unpack)
            x, y = x.to(device), torch.as_tensor(y).to(device)
            correct += int((predict(model, x, output_fn) == y).sum())
            total += int(y.numel())
    return correct / total if total else float("nan")


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return ``model``'s submodule called ``name`` (dotted), or raise a ``ValueError`` listing the names."""
    if not isinstance(name, str):
        raise TypeError(f"Expected argument `layer` to be a dotted module name (str), but got {type(name).__name__}.")
    for candidate in (model, unwrap_model(model)):  # names of the user's module work through torch.compile and DDP
        with contextlib.suppress(AttributeError):
            return candidate.get_submodule(name)
    names = [n for n, _ in unwrap_model(model).named_modules() if n]
    shown = ", ".join(repr(n) for n in names[:40]) + (", ..." if len(names) > 40 else "")
    raise ValueError(f"Expected argument `layer` to name a submodule of the model; {name!r} is not one of {shown}.")


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

    _probe_forward(model, inputs, [m.register_forward_pre_hook for m in model.modules() if id(m) in names], record)
    return order


def _probe_forward(model: nn.Module, inputs: torch.Tensor, registrations: list[Callable], hook: Callable) -> None:
    """A one-sample forward in eval mode without gradients with ``hook`` registered by each of ``registrations``
    (bound ``register_forward_(pre_)hook`` methods); every hook is removed afterwards, also on error."""
    handles = [register(hook) for register in registrations]
    try:
        with torch.no_grad(), eval_mode(model):
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()


def last_conv_layer(model: nn.Module, inputs: torch.Tensor) -> str:
    """Dotted name of the last ``nn.Conv2d`` in forward-execution order (found by a one-sample probe forward)."""
    order = forward_order(model, inputs, lambda module: isinstance(module, nn.Conv2d))
    if not order:
        raise ValueError("Expected the model to contain an nn.Conv2d for this layer method; pass `layer=` explicitly.")
    return order[-1]


_NOT_BLOCKS = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)


def default_cam_layer(model: nn.Module, inputs: torch.Tensor) -> str:
    """Grad-CAM's default layer: the module whose (N, C, h, w) output, with ``h * w > 1``, is the last one a forward
    pass completes (pooling, identity and dropout modules skipped). That is the block output users and
    pytorch-grad-cam take: ``layer4`` of a torchvision ResNet (after the residual add and the ReLU, not
    ``layer4.1.conv2``), ``features`` of a VGG, DenseNet or EfficientNet.

    Found by a one-sample probe forward (hooks removed afterwards, also on error).

    Raises:
        ValueError: the model has no spatial feature map, or its last one is a patch embedding followed by tokens
            (a ViT: Grad-CAM would explain the patch projection; use ``"gradient_rollout"`` or ``"rollout"``, or pass
            ``layer=`` with a ``reshape_transform`` of your own).

    Example::

        >>> import torch, torchvision
        >>> default_cam_layer(torchvision.models.resnet18(weights=None), torch.zeros(1, 3, 64, 64))
        'layer4'
    """
    names = {id(module): name for name, module in model.named_modules() if name}
    finished: list[tuple[str, int, bool]] = []  # (name, output rank, spatial) in completion order

    def record(module: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            finished.append((names[id(module)], out.dim(), out.dim() == 4 and out.shape[-2] * out.shape[-1] > 1))

    blocks = [m.register_forward_hook for m in model.modules() if id(m) in names and not isinstance(m, _NOT_BLOCKS)]
    _probe_forward(model, inputs, blocks, record)
    last = max((i for i, (_, _, spatial) in enumerate(finished) if spatial), default=None)
    if last is None:
        raise ValueError(
            "Expected the model to have a spatial (N, C, h, w) feature map for Grad-CAM; pass `layer=` explicitly."
        )
    if any(rank == 3 for _, rank, _ in finished[last + 1 :]):
        raise ValueError(
            f"The model's last spatial feature map ({finished[last][0]!r}) is followed by token sequences: it is a patch "
            "embedding (a ViT), and Grad-CAM there explains the patch projection, not the model. Use "
            "Explainer('gradient_rollout') or Explainer('rollout'), or pass `layer=` and a `reshape_transform` yourself."
        )
    return finished[last][0]


@contextlib.contextmanager
def capture_output(model: nn.Module, layer: str, use_input: bool = False) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives ``layer``'s output (a tensor) at every forward, or its first input when
    ``use_input``; the hook is removed on exit, also when the forward raises."""
    module = resolve_layer(model, layer)
    outputs: list[torch.Tensor] = []

    def record(value: object, what: str) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Expected layer {layer!r} to {what} a tensor, but it {what}s {type(value).__name__}.")
        outputs.append(value)

    if use_input:
        handle = module.register_forward_pre_hook(lambda mod, args: record(args[0] if args else None, "take"))
    else:
        handle = module.register_forward_hook(lambda mod, args, output: record(output, "output"))
    try:
        yield outputs
    finally:
        handle.remove()
