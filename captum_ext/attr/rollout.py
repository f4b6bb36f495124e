"""Where does a ViT look? Attention rollout, gradient rollout and raw attention as Captum attributions.

* :class:`AttentionRollout` (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  per block fuse the heads (mean, max or min) into A, optionally zero each sample's smallest entries,
  Â = row-normalised(0.5·A + 0.5·I), and roll out R = Â_L ··· Â_1; the map is the CLS row of R over the patch
  tokens. Class-agnostic.
* :class:`GradientRollout` (Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting
  Bi-Modal and Encoder-Decoder Transformers", ICCV 2021, the self-attention rule): Ā_l = mean over heads of
  relu(∂y_t/∂A_l ⊙ A_l), R ← R + Ā_l R from R = I, gradients of the target logit y_t.
* :class:`RawAttention`: one block's (default the last) attention row of one token (default CLS) over the patch
  tokens, for one head or the mean of the heads, or the mean over blocks.

All return maps shaped like the inputs: the (gh, gw) token grid upsampled bilinearly to (H, W) and repeated over
channels, so every Captum tool accepts them; ``return_grid=True`` gives the raw (N, gh, gw) grid. The values are
not normalised (a display concern, see :mod:`captum_ext.maps`). Attention is captured by
:mod:`captum_ext.attr.attention` (torchvision, timm, Hugging Face ViTs and ``nn.MultiheadAttention`` models).

Example::

    >>> import torch
    >>> from captum_ext.models import TinyViT
    >>> model, x = TinyViT().eval(), torch.rand(2, 1, 32, 32)
    >>> AttentionRollout(model).attribute(x).shape
    torch.Size([2, 1, 32, 32])
    >>> AttentionRollout(model, head_fusion="max").attribute(x, return_grid=True).shape
    torch.Size([2, 8, 8])
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal, cast, overload

import torch
from captum.attr import Attribution
from torch import nn

from captum_ext import maps
from captum_ext._checks import Target, check_choice, check_finite, class_targets
from captum_ext._context import gradients_enabled
from captum_ext.attr.attention import capture_attention
from captum_ext.model_output import logits

__all__ = [
    "AttentionRollout",
    "GradientRollout",
    "RawAttention",
    "HeadFusion",
    "fuse_heads",
    "discard_smallest",
    "attention_rollout",
    "gradient_rollout",
]

HeadFusion = Literal["mean", "max", "min"]
_FUSIONS = ("mean", "max", "min")
Inputs = torch.Tensor | tuple[torch.Tensor, ...]


# -- functional core ---------------------------------------------------------------------------------------------
def fuse_heads(attention: torch.Tensor, head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """Fuse (B, heads, T, T) attention over the heads into (B, T, T) float32 by ``"mean"``, ``"max"`` or ``"min"``."""
    attention = attention.float()
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    if head_fusion == "min":
        return attention.amin(1)
    raise ValueError(f"Expected argument `head_fusion` to be one of 'mean', 'max', 'min', but got {head_fusion!r}.")


def discard_smallest(attention: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the ``int(T*T*ratio)`` smallest entries of each sample's (T, T) matrix, never the CLS-CLS entry [0, 0].

    Args:
        attention: (B, T, T) fused attention (not changed in place).
        ratio: share of entries to drop, in [0, 1).

    Returns:
        A (B, T, T) copy with the entries zeroed.
    """
    batch, tokens = attention.shape[0], attention.shape[-1]
    k = int(tokens * tokens * ratio)
    if k == 0:
        return attention
    flat = attention.reshape(batch, -1)
    ranked = flat.clone()
    ranked[:, 0] = torch.inf
    drop = ranked.topk(k, dim=1, largest=False).indices
    return flat.scatter(1, drop, 0.0).reshape(attention.shape)


def _normalised(fused: torch.Tensor) -> torch.Tensor:
    """One block's Â = rownorm(0.5·A + 0.5·I) = rownorm(A + I) (the factor cancels). Overwrites ``fused``."""
    fused.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return fused.div_(fused.sum(dim=-1, keepdim=True))


def _rollout_step(rollout: torch.Tensor | None, fused: torch.Tensor) -> torch.Tensor:
    """One block: Â @ R. Overwrites ``fused``."""
    step = _normalised(fused)
    return step if rollout is None else torch.bmm(step, rollout)


def _gradient_cam(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """One block's Ā = mean_h relu(∂y/∂A ⊙ A), (B, T, T) float32."""
    return (gradient.float() * attention.float()).clamp(min=0).mean(1)


def _gradient_step(rollout: torch.Tensor | None, attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    cam = _gradient_cam(attention, gradient)
    if rollout is None:
        rollout = torch.eye(cam.shape[-1], dtype=cam.dtype, device=cam.device).expand_as(cam)
    return rollout + cam @ rollout


def attention_rollout(
    attentions: Sequence[torch.Tensor], head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Roll out (B, heads, T, T) attentions given in forward order: R = Â_L ··· Â_1, (B, T, T) float32.

    Abnar & Zuidema 2020; see the module docstring for Â. Identity attention rolls out to the identity.

    Example::

        >>> eye = torch.eye(3).expand(2, 4, 3, 3)
        >>> torch.equal(attention_rollout([eye, eye]), torch.eye(3).expand(2, 3, 3))
        True
    """
    _check_options(head_fusion, discard_ratio, 0)
    rollout = None
    for attention in attentions:
        rollout = _rollout_step(rollout, discard_smallest(fuse_heads(attention, head_fusion), discard_ratio))
    if rollout is None:
        raise ValueError("Expected argument `attentions` to hold at least one (B, heads, T, T) tensor, but got none.")
    return rollout


def gradient_rollout(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer et al. 2021's rule for (B, heads, T, T) attentions and their gradients paired by block, in forward
    order: R ← R + mean_h relu(∂y/∂A ⊙ A) R from R = I; (B, T, T) float32.

    Example::

        >>> a = torch.full((1, 2, 3, 3), 1 / 3)
        >>> gradient_rollout([a], [torch.zeros_like(a)])[0]
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    if len(attentions) != len(gradients) or not attentions:
        raise ValueError(
            f"Expected arguments `attentions` and `gradients` to pair up one tensor per block, but got "
            f"{len(attentions)} and {len(gradients)}."
        )
    rollout = None
    for attention, gradient in zip(attentions, gradients):
        rollout = _gradient_step(rollout, attention, gradient)
    return cast(torch.Tensor, rollout)  # at least one block: checked above


# -- argument checks and shaping ---------------------------------------------------------------------------------
def _check_options(head_fusion: Any, discard_ratio: Any, start_layer: Any) -> None:
    check_choice("head_fusion", head_fusion, _FUSIONS)
    if (
        isinstance(discard_ratio, bool)
        or not isinstance(discard_ratio, numbers.Real)
        or discard_ratio < 0
        or not discard_ratio < 1  # NaN included
    ):
        raise ValueError(f"Expected argument `discard_ratio` to be a real number in [0, 1), but got {discard_ratio!r}.")
    _check_start_layer(start_layer)


def _require_cls(grid: tuple[int, int], prefix: int) -> None:
    if prefix < 1:
        raise ValueError(f"Expected a CLS token before the {grid[0]}x{grid[1]} patch tokens, but found none.")


def _output_row(matrix: torch.Tensor, readout: str, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """(N, T) row of the token the classifier reads: the CLS token's (token 0), or for a model that averages its
    patch tokens (``readout == "mean"``: timm ``global_pool="avg"``, e.g. with registers and no CLS) the mean of the
    patch tokens' rows, since its output is the mean of those tokens."""
    if readout == "mean":
        return matrix[:, prefix:].mean(1)
    _require_cls(grid, prefix)
    return matrix[:, 0]


def _read_out(like: torch.Tensor, readout: str, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """(N, T) weights of the tokens the classifier reads (:func:`_output_row` of the identity), for (N, T, T) ``like``."""
    identity = torch.eye(like.shape[-1], dtype=like.dtype, device=like.device).expand_as(like)
    return _output_row(identity, readout, grid, prefix)


def _rolled_row(start: torch.Tensor, steps: Sequence[torch.Tensor], residual: bool) -> torch.Tensor:
    """(N, T) ``start`` times the product of the (N, T, T) ``steps`` given in forward order, from the last one down:
    the read-out row of ``Â_L ··· Â_1`` (or, with ``residual``, of ``(I + Ā_L) ··· (I + Ā_1)``) at T² a block
    instead of the whole product's T³."""
    row = start[:, None]
    for step in reversed(steps):
        row = row + torch.bmm(row, step) if residual else torch.bmm(row, step)
    return row[:, 0]


def _require_block(start_layer: int, blocks: int) -> None:
    if start_layer >= blocks:
        raise ValueError(
            f"Expected argument `start_layer` to be below the model's {blocks} blocks, but got {start_layer}."
        )


def _check_start_layer(start_layer: Any) -> None:
    if isinstance(start_layer, bool) or not isinstance(start_layer, numbers.Integral) or start_layer < 0:
        raise ValueError(f"Expected argument `start_layer` to be a non-negative int, but got {start_layer!r}.")


def _unpack(inputs: Inputs) -> tuple[torch.Tensor, bool]:
    single = isinstance(inputs, torch.Tensor)
    if not single and not (isinstance(inputs, tuple) and len(inputs) == 1 and isinstance(inputs[0], torch.Tensor)):
        raise TypeError(
            f"Expected argument `inputs` to be a tensor or a tuple of one tensor, but got {type(inputs).__name__}"
            + (f" of length {len(inputs)}." if isinstance(inputs, tuple) else ".")
        )
    x = inputs if isinstance(inputs, torch.Tensor) else inputs[0]
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"Expected argument `inputs` to be a float (N, C, H, W) tensor, but got shape {tuple(x.shape)}, "
            f"dtype {x.dtype}."
        )
    return x, single


def _shape_like(grid_values: torch.Tensor, x: torch.Tensor, single: bool, return_grid: bool) -> Inputs:
    if return_grid:
        out = grid_values
    else:
        out = maps.upsample(grid_values, cast("tuple[int, int]", tuple(x.shape[-2:])))[:, None]
        out = out.to(x.dtype).expand(-1, x.shape[1], -1, -1).contiguous()
    return out if single else (out,)


def _token_grid(rows: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, T) token rows -> (N, gh, gw) over the last gh*gw (patch) tokens."""
    return rows[:, rows.shape[1] - grid[0] * grid[1] :].reshape(rows.shape[0], *grid)


def _resolve_layer(layer: int, count: int, name: str) -> int:
    if not -count <= layer < count:
        raise ValueError(f"Expected argument `{name}` to index one of the model's {count} blocks, but got {layer}.")
    return layer % count


def _logits(output: Any) -> torch.Tensor:
    scores = logits(output)
    if scores.dim() != 2:
        raise TypeError(
            f"Expected the model's scores to be an (N, classes) tensor, but got shape {tuple(scores.shape)}."
        )
    return scores


def _target_index(target: Target, scores: torch.Tensor) -> torch.Tensor:
    if target is None:
        return scores.argmax(dim=1)
    return class_targets(target, scores.shape[0], scores.shape[1], scores.device)


# -- the attributions --------------------------------------------------------------------------------------------
class AttentionRollout(Attribution):
    """Where does the ViT's CLS token draw its information from, through all blocks? (class-agnostic)

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020. Heads are fused inside the capture
    and each block is multiplied into the running product as it comes, so only one (N, T, T) matrix is kept.

    Args:
        model: a ViT recognised by :mod:`captum_ext.attr.attention`; never changed (run it in eval mode).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads. Default ``"mean"``.
        discard_ratio: share of each sample's fused T x T entries to zero (the smallest; CLS-CLS exempt), in
            [0, 1). Default 0.0.
        start_layer: blocks before this index are left out of the product. Default 0.

    Raises:
        ValueError: an option out of range (here or, for ``start_layer``, at the first call).

    Example::

        >>> import torch
        >>> from captum_ext.models import TinyViT
        >>> rollout = AttentionRollout(TinyViT().eval(), discard_ratio=0.9)
        >>> rollout.attribute(torch.rand(3, 1, 32, 32), target=0).shape
        torch.Size([3, 1, 32, 32])
    """

    def __init__(
        self, model: nn.Module, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0, start_layer: int = 0
    ):
        _check_options(head_fusion, discard_ratio, start_layer)
        super().__init__(model)
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.start_layer = int(start_layer)

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @overload
    def attribute(self, inputs: torch.Tensor, target: Target = None, return_grid: bool = False) -> torch.Tensor: ...

    @overload
    def attribute(
        self, inputs: tuple[torch.Tensor, ...], target: Target = None, return_grid: bool = False
    ) -> tuple[torch.Tensor, ...]: ...

    def attribute(self, inputs: Inputs, target: Target = None, return_grid: bool = False) -> Inputs:
        """Rollout maps for a batch.

        Args:
            inputs: (N, C, H, W) images, or a tuple of that one tensor.
            target: accepted in any Captum form and ignored (rollout is class-agnostic). Default None.
            return_grid: return the raw (N, gh, gw) CLS-row values instead. Default False.

        Returns:
            (N, C, H, W) maps (the grid upsampled bilinearly, repeated over channels) in the form of ``inputs``,
            or (N, gh, gw) with ``return_grid``.

        Raises:
            ValueError: inputs not (N, C, H, W); no recognisable attention; ``start_layer`` beyond the blocks.
        """
        x, single = _unpack(inputs)
        steps: list[torch.Tensor] = []

        def sink(index: int, attention: torch.Tensor) -> None:
            if index >= self.start_layer:
                steps.append(_normalised(discard_smallest(fuse_heads(attention, self.head_fusion), self.discard_ratio)))

        with torch.no_grad(), capture_attention(self.forward_func, sink) as capture:
            self.forward_func(x)
        grid, prefix = capture.layout(x.shape[0])
        _require_block(self.start_layer, len(capture.shapes))
        row = _rolled_row(_read_out(steps[-1], capture.readout, grid, prefix), steps, residual=False)
        check_finite("rollout maps", row, "The model's attention holds NaN or Inf for these inputs.")
        return _shape_like(_token_grid(row, grid), x, single, return_grid)


class GradientRollout(Attribution):
    """Which tokens does the ViT use for the target class? Gradient-weighted attention rolled out through blocks.

    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers", ICCV 2021 (rule for self-attention): Ā_l = mean_h relu(∂y_t/∂A_l ⊙ A_l), R ← R + Ā_l R
    from R = I, the map is R's CLS row over the patch tokens. The gradients come from ``torch.autograd.grad``
    (no ``.grad`` is left on the parameters) and are paired with their attention by block index. Every block's
    attention is kept for the backward pass.

    Args:
        model: a ViT recognised by :mod:`captum_ext.attr.attention`, returning (N, classes) logits (or an output
            with ``.logits``); never changed. Run it in eval mode: the batch's samples must not interact.
        start_layer: blocks before this index are left out of the sum. Default 0.

    Raises:
        ValueError: ``start_layer`` negative (here) or beyond the blocks (at the call).

    Example::

        >>> import torch
        >>> from captum_ext.models import TinyViT
        >>> explain = GradientRollout(TinyViT().eval())
        >>> explain.attribute(torch.rand(2, 1, 32, 32), target=torch.tensor([3, 5])).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, model: nn.Module, start_layer: int = 0):
        _check_start_layer(start_layer)
        super().__init__(model)
        self.start_layer = int(start_layer)

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @overload
    def attribute(self, inputs: torch.Tensor, target: Target = None, return_grid: bool = False) -> torch.Tensor: ...

    @overload
    def attribute(
        self, inputs: tuple[torch.Tensor, ...], target: Target = None, return_grid: bool = False
    ) -> tuple[torch.Tensor, ...]: ...

    def attribute(self, inputs: Inputs, target: Target = None, return_grid: bool = False) -> Inputs:
        """Gradient-rollout maps for a batch.

        Args:
            inputs: (N, C, H, W) images, or a tuple of that one tensor.
            target: class index, one per input (sequence or (N,) tensor), or None for the predicted class.
            return_grid: return the raw (N, gh, gw) CLS-row values instead. Default False.

        Returns:
            (N, C, H, W) maps in the form of ``inputs``, or (N, gh, gw) with ``return_grid``.

        Raises:
            ValueError: bad inputs or target; no recognisable attention; ``start_layer`` beyond the blocks.
            TypeError: the model returns no (N, classes) logits.
        """
        x, single = _unpack(inputs)
        attentions: list[torch.Tensor] = []
        with gradients_enabled():
            x = x.detach().clone().requires_grad_()
            with capture_attention(self.forward_func, lambda index, attention: attentions.append(attention)) as capture:
                scores = _logits(self.forward_func(x))
            grid, prefix = capture.layout(x.shape[0])
            _require_block(self.start_layer, len(attentions))
            index = _target_index(target, scores)
            score = scores.gather(1, index[:, None]).sum()
            used = attentions[self.start_layer :]
            gradients = torch.autograd.grad(score, used, allow_unused=True, materialize_grads=True)
        cams = [_gradient_cam(a.detach(), g) for a, g in zip(used, gradients)]
        row = _rolled_row(_read_out(cams[-1], capture.readout, grid, prefix), cams, residual=True)
        check_finite("gradient rollout maps", row, "The model's attention or its gradient holds NaN or Inf.")
        return _shape_like(_token_grid(row, grid), x.detach(), single, return_grid)


class RawAttention(Attribution):
    """Where does one token look in one block? The raw attention row, for one head or the mean of the heads.

    Attention maps invite cherry-picking (blocks x heads x tokens): prefer the defaults or the means
    (``head=None``, ``layer=None``) unless you report all of them. Class-agnostic.

    Args:
        model: a ViT recognised by :mod:`captum_ext.attr.attention`; never changed.
        layer: block index in forward order (negative counts from the end), or None for the mean over blocks.
            Default -1 (the last block).
        head: head index, or None for the mean over heads. Default None.
        token: ``"cls"`` (the token the classifier reads: token 0, or the mean of the patch tokens' rows for a
            model that pools them) or the index of the attending token in the full sequence (prefix tokens
            first). Default ``"cls"``.

    Raises:
        ValueError / TypeError: an index of the wrong type (here) or out of range (at the call).

    Example::

        >>> import torch
        >>> from captum_ext.models import TinyViT
        >>> RawAttention(TinyViT().eval(), layer=0, head=1).attribute(torch.rand(2, 1, 32, 32), return_grid=True).shape
        torch.Size([2, 8, 8])
    """

    def __init__(
        self, model: nn.Module, layer: int | None = -1, head: int | None = None, token: int | Literal["cls"] = "cls"
    ):
        for name, value in (("layer", layer), ("head", head)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise TypeError(f"Expected argument `{name}` to be an int or None, but got {value!r}.")
        if token != "cls" and (isinstance(token, bool) or not isinstance(token, numbers.Integral)):
            raise TypeError(f"Expected argument `token` to be 'cls' or an int token index, but got {token!r}.")
        super().__init__(model)
        self.layer = layer
        self.head = head
        self.token = token

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @overload
    def attribute(self, inputs: torch.Tensor, target: Target = None, return_grid: bool = False) -> torch.Tensor: ...

    @overload
    def attribute(
        self, inputs: tuple[torch.Tensor, ...], target: Target = None, return_grid: bool = False
    ) -> tuple[torch.Tensor, ...]: ...

    def attribute(self, inputs: Inputs, target: Target = None, return_grid: bool = False) -> Inputs:
        """Raw attention maps for a batch.

        Args:
            inputs: (N, C, H, W) images, or a tuple of that one tensor.
            target: accepted in any Captum form and ignored. Default None.
            return_grid: return the raw (N, gh, gw) attention row instead. Default False.

        Returns:
            (N, C, H, W) maps in the form of ``inputs``, or (N, gh, gw) with ``return_grid``.

        Raises:
            ValueError: bad inputs; no recognisable attention; ``layer``, ``head`` or ``token`` out of range.
        """
        x, single = _unpack(inputs)
        blocks: list[torch.Tensor] = []  # (N, T, T) per block, heads averaged or one head selected

        def sink(index: int, attention: torch.Tensor) -> None:
            heads, tokens = attention.shape[1], attention.shape[-1]
            if self.head is not None and not -heads <= self.head < heads:
                raise ValueError(
                    f"Expected argument `head` to index one of the model's {heads} heads, but got {self.head}."
                )
            if self.token != "cls" and not -tokens <= int(self.token) < tokens:
                raise ValueError(
                    f"Expected argument `token` to index one of the {tokens} tokens, but got {self.token!r}."
                )
            blocks.append(attention.float().mean(1) if self.head is None else attention[:, self.head].float())

        with torch.no_grad(), capture_attention(self.forward_func, sink) as capture:
            self.forward_func(x)
        grid, prefix = capture.layout(x.shape[0])
        if self.layer is None:
            matrix = torch.stack(blocks).mean(0)
        else:
            matrix = blocks[_resolve_layer(int(self.layer), len(blocks), "layer")]
        row = _output_row(matrix, capture.readout, grid, prefix) if self.token == "cls" else matrix[:, int(self.token)]
        return _shape_like(_token_grid(row, grid), x, single, return_grid)
