"""Capturing a ViT's post-softmax attention probabilities, (B, heads, T, T) per block, from the forward pass.

Which attention the captured tensors come from is decided by a small registry of :class:`AttentionAdapter` s,
tried in order (your own first, see :func:`register_adapter`):

==================  ==================================================================================
``"torchvision"``   ``torchvision.models.VisionTransformer`` (also inside a wrapper such as a
                    LightningModule); its ``nn.MultiheadAttention`` blocks are switched to an explicit path.
``"timm"``          timm ``VisionTransformer`` and ``Eva`` (EVA-02): ``fused_attn`` is switched off for the call
                    and restored. Models that average their patch tokens (``global_pool="avg"``, e.g. with
                    register tokens and no CLS) are read out as the mean of the patch rows.
``"transformers"``  Hugging Face ``ViTModel`` / ``DeiTModel`` and their ``...ForImageClassification`` heads
                    (DeiT's distillation token is a second prefix token): eager attention for the call.
``"multihead"``     any model built from ``nn.MultiheadAttention`` with an ``nn.Conv2d`` patch embedding
                    (kernel size = stride); PyTorch's fused encoder fast path is disabled for the call.
==================  ==================================================================================

Every adapter hands over the very probability tensor the block multiplies its values with, so gradients
with respect to it (gradient rollout) are the block's own. Nothing is assumed about the token layout: the patch
grid is the output size of the patch-embedding convolution during the forward, and the number of prefix tokens
(CLS, distillation, registers) is the token count minus the grid's size. Which token the classifier reads is the
adapter's ``readout``: ``"cls"`` (token 0) or ``"mean"`` (the mean over the patch tokens, for models that pool
them). A Swin-like model (windowed attention, patch merging between stages) is refused with an error saying why:
rollout multiplies T x T matrices over one token set that every block attends over, which Swin does not have.
Every switch and hook is undone when the ``with`` block ends, also on error.

Example::

    >>> import torch
    >>> from captum_ext.models import TinyViT
    >>> attn = attention_maps(TinyViT(), torch.rand(2, 1, 32, 32))
    >>> len(attn.maps), tuple(attn.maps[0].shape), attn.grid, attn.num_prefix_tokens
    (2, (2, 2, 65, 65), (8, 8), 1)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AttentionAdapter",
    "AttentionCapture",
    "Attentions",
    "ADAPTERS",
    "register_adapter",
    "find_adapter",
    "capture_attention",
    "attention_maps",
    "explicit_multihead_attention",
]

Sink = Callable[[torch.Tensor], None]

_HOW_TO_REGISTER = (
    "Register an adapter for this architecture with captum_ext.attr.attention.register_adapter("
    "AttentionAdapter(name, matches, patch_embedding, explicit_attention)); see the module docstring."
)


@dataclass(frozen=True)
class AttentionAdapter:
    """How to find and capture the attention of one family of models.

    Args:
        name: A short display name.
        matches: ``matches(model) -> bool``: whether this adapter handles ``model``.
        patch_embedding: ``patch_embedding(model) -> nn.Module``: the module whose output's last two dimensions
            are the patch grid (gh, gw) during the forward, typically the patch-embedding ``nn.Conv2d``.
        explicit_attention: ``explicit_attention(model, sink)``, a context manager under which every attention
            block of ``model`` computes its probabilities explicitly and passes the (B, heads, T, T) tensor it
            multiplies its values with to ``sink``, in forward order; everything is restored on exit.
        readout: ``readout(model) -> "cls" | "mean"``: whether the classifier reads the CLS token (token 0) or the
            mean of the patch tokens; may raise a ValueError for a pooling rollout cannot follow. Default CLS.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    patch_embedding: Callable[[nn.Module], nn.Module]
    explicit_attention: Callable[[nn.Module, Sink], contextlib.AbstractContextManager[None]]
    readout: Callable[[nn.Module], str] = lambda model: "cls"


# -- nn.MultiheadAttention: an explicit forward, swapped in for the call --------------------------------------
def explicit_multihead_attention(
    module: nn.MultiheadAttention,
    sink: Sink,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` computed step by step, handing the probabilities to ``sink``.

    Same signature and result as the module's own forward (for unmasked attention without ``bias_k`` or
    ``add_zero_attn``); the (B, heads, T, S) probabilities passed to ``sink`` are on the autograd path.

    Raises:
        ValueError: a mask, ``is_causal``, ``bias_k``/``bias_v`` or ``add_zero_attn`` (not supported).
    """
    if key_padding_mask is not None or attn_mask is not None or is_causal:
        raise ValueError(
            "Expected nn.MultiheadAttention to be called without `attn_mask`, `key_padding_mask` or `is_causal` "
            f"for attention capture, but got a mask or is_causal=True. {_HOW_TO_REGISTER}"
        )
    if module.bias_k is not None or module.add_zero_attn:
        raise ValueError(
            "Expected nn.MultiheadAttention without `add_bias_kv` or `add_zero_attn` for attention capture, "
            f"but got one of them set. {_HOW_TO_REGISTER}"
        )
    packed = module.in_proj_weight is not None and query is key and key is value  # self-attention: one matmul
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    batch, tokens, heads = query.shape[0], query.shape[1], module.num_heads

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2)

    if packed:
        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias)
        q, k, v = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    else:
        if module.in_proj_weight is not None:
            w_q, w_k, w_v = module.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        b_q, b_k, b_v = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
        q, k, v = (
            split_heads(F.linear(t, w, b)) for t, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v))
        )
    probs = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
    probs = F.dropout(probs, module.dropout, training=module.training)
    sink(probs)
    out = (probs @ v).transpose(1, 2).reshape(batch, tokens, -1)
    out = F.linear(out, module.out_proj.weight, module.out_proj.bias)
    if not module.batch_first:
        out = out.transpose(0, 1)
    weights = (probs.mean(1) if average_attn_weights else probs) if need_weights else None
    return out, weights


@contextlib.contextmanager
def _multihead_explicit(model: nn.Module, sink: Sink) -> Iterator[None]:
    modules = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    saved = [(m, m.__dict__.get("forward")) for m in modules]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for module in modules:
            # an instance attribute, where nn.Module.__setattr__ puts a function too (read and popped as such)
            module.__dict__["forward"] = lambda *args, _m=module, **kwargs: explicit_multihead_attention(
                _m, sink, *args, **kwargs
            )
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, own in saved:
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = own


def _first_patch_conv(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride:
            return module
    raise ValueError(
        f"Expected {type(model).__name__} to contain a patch-embedding nn.Conv2d (kernel size equal to its stride) "
        f"to read the patch grid from, but found none. {_HOW_TO_REGISTER}"
    )


def _torchvision_vit(model: nn.Module) -> nn.Module | None:
    from torchvision.models.vision_transformer import VisionTransformer

    return next((m for m in model.modules() if isinstance(m, VisionTransformer)), None)


# -- timm -----------------------------------------------------------------------------------------------------
def _timm_vit(model: nn.Module) -> nn.Module | None:
    try:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    return next((m for m in model.modules() if isinstance(m, (VisionTransformer, Eva))), None)


def _timm_readout(model: nn.Module) -> str:
    vit = _timm_vit(model)
    pool = getattr(vit, "global_pool", "token")
    if pool == "token" and getattr(vit, "cls_token", None) is not None:
        return "cls"
    if pool == "avg":
        return "mean"
    raise ValueError(
        f"Expected a timm ViT that reads its CLS token (global_pool='token') or averages its patch tokens "
        f"(global_pool='avg'), but this {type(vit).__name__} uses global_pool={pool!r}: rollout has no output token "
        "to follow there. Use a gradient method (Explainer('saliency'), 'integrated_gradients') instead."
    )


@contextlib.contextmanager
def _timm_explicit(model: nn.Module, sink: Sink) -> Iterator[None]:
    # timm's Attention and EvaAttention share the switch and the dropout module the probabilities pass through
    vit = cast(nn.Module, _timm_vit(model))  # the adapter matched: there is one
    modules = [
        m for m in vit.modules() if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]
    fused = [m.fused_attn for m in modules]
    handles = []
    try:
        for module in modules:
            module.fused_attn = False  # type: ignore[assignment]  # torch types Module.__setattr__ values too narrowly
            attn_drop = cast(nn.Module, module.attn_drop)  # a module: selected above
            handles.append(attn_drop.register_forward_hook(lambda mod, args, out: sink(out)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in zip(modules, fused):
            module.fused_attn = flag


# -- Hugging Face transformers -------------------------------------------------------------------------------
@functools.cache
def _hf_classes() -> tuple[tuple[type[nn.Module], ...], tuple[type[nn.Module], ...]]:
    """(backbone classes, attention classes) of the Hugging Face ViT family that imports: ViT, DeiT (CLS +
    distillation token); each family on its own, so a transformers without one still serves the other."""
    backbones: list[type[nn.Module]] = []
    attentions: list[type[nn.Module]] = []
    for module_name, backbone, attention in (
        ("transformers.models.vit.modeling_vit", "ViTModel", "ViTAttention"),
        ("transformers.models.deit.modeling_deit", "DeiTModel", "DeiTAttention"),
    ):
        try:
            module = importlib.import_module(module_name)
            backbones.append(getattr(module, backbone))
            attentions.append(getattr(module, attention))
        except (ImportError, AttributeError):
            continue
    return tuple(backbones), tuple(attentions)


def _hf_vit(model: nn.Module) -> nn.Module | None:
    backbones, _ = _hf_classes()
    return next((m for m in model.modules() if isinstance(m, backbones)), None) if backbones else None


@contextlib.contextmanager
def _hf_explicit(model: nn.Module, sink: Sink) -> Iterator[None]:
    vit: Any = _hf_vit(model)  # a transformers ViTModel / DeiTModel (the adapter matched): its own config and API
    previous = vit.config._attn_implementation
    handles = []
    try:
        vit.set_attn_implementation("eager")
        attention_classes = _hf_classes()[1]
        for module in vit.modules():
            if isinstance(module, attention_classes):
                handles.append(module.register_forward_hook(lambda mod, args, out: sink(out[1])))
        yield
    finally:
        for handle in handles:
            handle.remove()
        vit.set_attn_implementation(previous)


# The patch embeddings of the backbones found by the finders above (called once the adapter matched), reached by
# the libraries' own attribute names.
def _torchvision_patch_embedding(model: nn.Module) -> nn.Module:
    vit: Any = _torchvision_vit(model)
    return vit.conv_proj


def _timm_patch_embedding(model: nn.Module) -> nn.Module:
    vit: Any = _timm_vit(model)
    return vit.patch_embed.proj


def _hf_patch_embedding(model: nn.Module) -> nn.Module:
    vit: Any = _hf_vit(model)
    return vit.embeddings.patch_embeddings.projection


ADAPTERS: list[AttentionAdapter] = [
    AttentionAdapter(
        "torchvision",
        matches=lambda model: _torchvision_vit(model) is not None,
        patch_embedding=_torchvision_patch_embedding,
        explicit_attention=_multihead_explicit,
    ),
    AttentionAdapter(
        "timm",
        matches=lambda model: _timm_vit(model) is not None,
        patch_embedding=_timm_patch_embedding,
        explicit_attention=_timm_explicit,
        readout=_timm_readout,
    ),
    AttentionAdapter(
        "transformers",
        matches=lambda model: _hf_vit(model) is not None,
        patch_embedding=_hf_patch_embedding,
        explicit_attention=_hf_explicit,
    ),
    AttentionAdapter(
        "multihead",
        matches=lambda model: any(isinstance(m, nn.MultiheadAttention) for m in model.modules()),
        patch_embedding=_first_patch_conv,
        explicit_attention=_multihead_explicit,
    ),
]
"""The adapters tried in order; :func:`register_adapter` puts yours first."""


def register_adapter(adapter: AttentionAdapter) -> None:
    """Try ``adapter`` before the built-in ones for every later capture.

    Raises:
        TypeError: ``adapter`` is not an :class:`AttentionAdapter`.
        ValueError: an adapter of that name is already registered.

    Example::

        >>> import contextlib
        >>> adapter = AttentionAdapter(
        ...     "mine", matches=lambda m: False, patch_embedding=lambda m: m.patch,
        ...     explicit_attention=lambda m, sink: contextlib.nullcontext())
        >>> register_adapter(adapter)
        >>> ADAPTERS.remove(adapter)
    """
    if not isinstance(adapter, AttentionAdapter):
        raise TypeError(f"Expected argument `adapter` to be an AttentionAdapter, but got {type(adapter).__name__}.")
    if any(a.name == adapter.name for a in ADAPTERS):
        raise ValueError(
            f"Expected argument `adapter` to have a new name, but an adapter named {adapter.name!r} is registered; "
            "remove it from ADAPTERS first."
        )
    ADAPTERS.insert(0, adapter)


def find_adapter(model: nn.Module) -> AttentionAdapter:
    """The first registered adapter that handles ``model``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: no adapter recognises the model's attention.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}.")
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    windowed = next(
        (type(m).__name__ for m in model.modules() if "Swin" in type(m).__name__ or "Window" in type(m).__name__), None
    )
    if windowed is not None:
        raise ValueError(
            f"Attention rollout does not apply to {type(model).__name__} ({windowed}): its blocks attend within local "
            "(shifted) windows and merge patches between stages, so no token attends over the whole image and the "
            "token set changes, while rollout multiplies T x T attention matrices over one fixed token set. Use "
            "Explainer('gradcam', layer=<a stage>) with a reshape of its (N, H, W, C) output, or a gradient method."
        )
    raise ValueError(
        f"Expected a model with recognisable attention (torchvision, timm or Hugging Face ViT, or "
        f"nn.MultiheadAttention blocks), but got {type(model).__name__}, in which no adapter found any. "
        f"{_HOW_TO_REGISTER}"
    )


@dataclass
class AttentionCapture:
    """What one forward under :func:`capture_attention` revealed (filled in during the forward).

    Attributes:
        adapter: The adapter used.
        readout: ``"cls"`` or ``"mean"``: the token the classifier reads (see :class:`AttentionAdapter`).
        grid: (gh, gw), the patch grid seen at the patch embedding's output, or None before the forward.
        shapes: The (B, heads, T, T) shape of each captured block, in forward order.
    """

    adapter: AttentionAdapter
    readout: str = "cls"
    grid: tuple[int, int] | None = None
    shapes: list[torch.Size] = field(default_factory=list)

    def layout(self, batch: int) -> tuple[tuple[int, int], int]:
        """After the forward: ((gh, gw), number of prefix tokens), checked against the attention shapes.

        Raises:
            ValueError: no attention captured, no patch grid seen, or tokens that do not fit the grid.
        """
        if not self.shapes:
            raise ValueError(
                f"Expected the {self.adapter.name!r} adapter to capture attention during the forward, but it "
                f"captured none (is the attention fused or bypassed?). {_HOW_TO_REGISTER}"
            )
        if self.grid is None:
            raise ValueError(
                f"Expected the {self.adapter.name!r} adapter's patch embedding to run during the forward to give "
                f"the patch grid, but it did not. {_HOW_TO_REGISTER}"
            )
        b, _, tokens, _ = self.shapes[0]
        patches = self.grid[0] * self.grid[1]
        if b != batch or tokens < patches:
            raise ValueError(
                f"Expected attention of shape ({batch}, heads, T, T) with T >= {patches} tokens for the "
                f"{self.grid[0]}x{self.grid[1]} patch grid, but got {tuple(self.shapes[0])}. {_HOW_TO_REGISTER}"
            )
        return self.grid, tokens - patches

    def _check(self, attn: torch.Tensor) -> None:
        if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
            raise ValueError(
                f"Expected self-attention probabilities of shape (B, heads, T, T), but got {tuple(attn.shape)} "
                f"from block {len(self.shapes)}. {_HOW_TO_REGISTER}"
            )
        if self.shapes and (attn.shape[0] != self.shapes[0][0] or attn.shape[-1] != self.shapes[0][-1]):
            raise ValueError(
                f"Expected every block to attend over the same tokens, shape ({self.shapes[0][0]}, heads, "
                f"{self.shapes[0][-1]}, {self.shapes[0][-1]}), but block {len(self.shapes)} has "
                f"{tuple(attn.shape)}: the token set changes between blocks (windowed attention or token "
                f"merging, as in Swin), where rollout is not defined. {_HOW_TO_REGISTER}"
            )


@contextlib.contextmanager
def capture_attention(model: nn.Module, sink: Callable[[int, torch.Tensor], None]) -> Iterator[AttentionCapture]:
    """Within the block, every forward of ``model`` calls ``sink(layer_index, probabilities)`` for each block.

    ``probabilities`` is the (B, heads, T, T) tensor the block multiplies its values with (on the autograd path
    when gradients are enabled); ``sink`` may reduce it at once so that no block's full attention stays alive.
    Use one forward per ``with`` block; hooks and switched-off fused attention are restored on exit.

    Args:
        model: a ViT that some adapter recognises (see :func:`find_adapter`).
        sink: called with the block's index in forward order and its probabilities.

    Yields:
        An :class:`AttentionCapture` filled in by the forward.

    Raises:
        ValueError: no adapter recognises the model, or the token set changes between blocks.
    """
    adapter = find_adapter(model)
    capture = AttentionCapture(adapter, readout=adapter.readout(model))

    def on_attention(attn: torch.Tensor) -> None:
        capture._check(attn)
        capture.shapes.append(attn.shape)
        sink(len(capture.shapes) - 1, attn)

    def on_patches(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        capture.grid = (int(out.shape[-2]), int(out.shape[-1]))

    handle = adapter.patch_embedding(model).register_forward_hook(on_patches)
    try:
        with adapter.explicit_attention(model, on_attention):
            yield capture
    finally:
        handle.remove()


@dataclass
class Attentions:
    """Every block's attention for one batch.

    Attributes:
        maps: one (B, heads, T, T) float32 tensor per block, in forward order.
        grid: the patch grid (gh, gw).
        num_prefix_tokens: tokens before the patch tokens (CLS, distillation, registers).
    """

    maps: list[torch.Tensor]
    grid: tuple[int, int]
    num_prefix_tokens: int


def attention_maps(model: nn.Module, inputs: torch.Tensor) -> Attentions:
    """Every block's post-softmax attention probabilities for ``inputs`` (one forward, no gradients).

    Keeps L x B x heads x T x T floats alive; rollout itself reduces each block as it comes
    (:class:`captum_ext.attr.AttentionRollout`).

    Args:
        model: a ViT some adapter recognises; left unchanged.
        inputs: (N, C, H, W) images.

    Returns:
        :class:`Attentions` with one detached (N, heads, T, T) float32 tensor per block.

    Raises:
        ValueError: no adapter recognises the model, or the token set changes between blocks.
    """
    maps: list[torch.Tensor] = []
    with torch.no_grad(), capture_attention(model, lambda i, a: maps.append(a.detach().float())) as capture:
        model(inputs)
    grid, prefix = capture.layout(inputs.shape[0])
    return Attentions(maps, grid, prefix)
