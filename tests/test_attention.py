"""Attention capture (captum_ext.attr.attention) against attention recomputed in float64 from each block's weights.

The float64 references below are written from the architectures' formulas, not from our code; test_rollout.py
imports them.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from conftest import assert_unchanged, snapshot
from torch import nn
from torch.nn import functional as F

from captum_ext.attr.attention import (
    ADAPTERS,
    AttentionAdapter,
    attention_maps,
    capture_attention,
    explicit_multihead_attention,
    find_adapter,
    register_adapter,
)
from captum_ext.models import SmallCNN, TinyViT

TOL = 1e-5


# -- models and float64 references (shared with test_rollout.py) --------------------------------------------------
def seeded(build, seed: int = 0) -> nn.Module:
    """Build a model with seeded random weights without touching the caller's RNG stream; eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def random_tiny_vit(seed: int = 0, **kwargs) -> TinyViT:
    """A 4-block, 4-head TinyViT with random weights, including the (normally zero-initialised) head, so gradients flow."""
    kwargs = {"num_layers": 4, "num_heads": 4, "hidden_dim": 64, "mlp_dim": 128, **kwargs}

    def build() -> TinyViT:
        model = TinyViT(**kwargs)
        nn.init.normal_(model.heads.head.weight, std=0.5)
        return model

    return seeded(build, seed)


def reference_torchvision(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Float64 forward of a torchvision VisionTransformer written from its weights, attention explicit.

    Returns the logits and every block's (B, heads, T, T) probabilities, both on the autograd path of ``x``.
    """
    d64 = lambda t: t.detach().double()  # noqa: E731
    x = x.detach().double().requires_grad_()
    h = F.conv2d(x, d64(model.conv_proj.weight), d64(model.conv_proj.bias), stride=model.patch_size)
    n, dim = h.shape[:2]
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([d64(model.class_token).expand(n, -1, -1), h], dim=1) + d64(model.encoder.pos_embedding)
    attentions = []
    for block in model.encoder.layers:
        y = F.layer_norm(h, (dim,), d64(block.ln_1.weight), d64(block.ln_1.bias), block.ln_1.eps)
        mha = block.self_attention
        heads = mha.num_heads
        q, k, v = (y @ d64(mha.in_proj_weight).T + d64(mha.in_proj_bias)).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, -1, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        attentions.append(a)
        o = (a @ v).transpose(1, 2).reshape(n, -1, dim) @ d64(mha.out_proj.weight).T + d64(mha.out_proj.bias)
        h = h + o
        y = F.layer_norm(h, (dim,), d64(block.ln_2.weight), d64(block.ln_2.bias), block.ln_2.eps)
        y = F.gelu(y @ d64(block.mlp[0].weight).T + d64(block.mlp[0].bias))
        h = h + y @ d64(block.mlp[3].weight).T + d64(block.mlp[3].bias)
    ln = model.encoder.ln
    cls = F.layer_norm(h, (dim,), d64(ln.weight), d64(ln.bias), ln.eps)[:, 0]
    head = model.heads.head
    return cls @ d64(head.weight).T + d64(head.bias), attentions


class MHAViT(nn.Module):
    """A ViT made of plain nn.MultiheadAttention: conv patches, CLS + registers, non-square inputs."""

    def __init__(
        self,
        dim: int = 16,
        heads: int = 2,
        depth: int = 3,
        patch: int = 4,
        registers: int = 2,
        batch_first: bool = False,
        classes: int = 5,
    ):
        super().__init__()
        self.batch_first = batch_first
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        self.prefix = nn.Parameter(torch.randn(1, 1 + registers, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attns = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=batch_first) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(len(t), -1, -1), t], dim=1)
        for norm, attn in zip(self.norms, self.attns):
            y = norm(t) if self.batch_first else norm(t).transpose(0, 1)
            o, _ = attn(y, y, y, need_weights=False)
            t = t + (o if self.batch_first else o.transpose(0, 1))
        return self.head(t[:, 0])


def reference_mhavit(model: MHAViT, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Float64 forward of :class:`MHAViT` from its weights; logits and (B, heads, T, T) per block."""
    d64 = lambda t: t.detach().double()  # noqa: E731
    x = x.detach().double().requires_grad_()
    t = F.conv2d(x, d64(model.patch.weight), d64(model.patch.bias), stride=model.patch.stride)
    t = t.flatten(2).transpose(1, 2)
    n, _, dim = t.shape
    t = torch.cat([d64(model.prefix).expand(n, -1, -1), t], dim=1)
    attentions = []
    for norm, mha in zip(model.norms, model.attns):
        y = F.layer_norm(t, (dim,), d64(norm.weight), d64(norm.bias), norm.eps)
        heads = mha.num_heads
        q, k, v = (y @ d64(mha.in_proj_weight).T + d64(mha.in_proj_bias)).chunk(3, dim=-1)
        q, k, v = (u.reshape(n, -1, heads, dim // heads).transpose(1, 2) for u in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        attentions.append(a)
        t = t + (a @ v).transpose(1, 2).reshape(n, -1, dim) @ d64(mha.out_proj.weight).T + d64(mha.out_proj.bias)
    return t[:, 0] @ d64(model.head.weight).T + d64(model.head.bias), attentions


def block_inputs(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """The first positional input of each of ``modules`` during a float64 forward of a deep copy of ``model``."""
    twin = copy.deepcopy(model).double()
    names = {id(m): n for n, m in model.named_modules()}
    twin_modules = dict(twin.named_modules())
    seen: list[torch.Tensor] = []
    handles = [
        twin_modules[names[id(m)]].register_forward_pre_hook(lambda mod, args: seen.append(args[0])) for m in modules
    ]
    try:
        with torch.no_grad():
            twin(x.double())
    finally:
        for handle in handles:
            handle.remove()
    return seen


# -- torchvision ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit() -> TinyViT:
    return random_tiny_vit()


def test_torchvision_capture_matches_float64_reference(vit, model_guard):
    model_guard(vit)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    attn = attention_maps(vit, x)
    _, expected = reference_torchvision(vit, x)
    assert attn.grid == (8, 8) and attn.num_prefix_tokens == 1
    assert len(attn.maps) == len(expected) == 4
    for got, want in zip(attn.maps, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want.detach(), atol=TOL, rtol=0)


def test_capture_keeps_outputs_and_restores_the_model(vit):
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    before = snapshot(vit)
    with torch.no_grad():
        plain = vit(x)
        with capture_attention(vit, lambda i, a: None) as capture:
            during = vit(x)
            assert not torch.backends.mha.get_fastpath_enabled()
        after = vit(x)
    assert len(capture.shapes) == 4
    torch.testing.assert_close(during, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, plain)
    assert torch.backends.mha.get_fastpath_enabled()
    assert all("forward" not in m.__dict__ for m in vit.modules())
    assert_unchanged(vit, before)


def test_capture_restores_the_model_on_error(vit):
    before = snapshot(vit)

    def failing_sink(index: int, attention: torch.Tensor) -> None:
        raise RuntimeError("sink failed")

    with pytest.raises(RuntimeError, match="sink failed"), capture_attention(vit, failing_sink):
        vit(torch.rand(1, 1, 32, 32))
    assert torch.backends.mha.get_fastpath_enabled()
    assert all("forward" not in m.__dict__ for m in vit.modules())
    assert_unchanged(vit, before)


def test_capture_passes_tensors_on_the_autograd_path(vit):
    """The sink gets the probabilities the block uses: d(logit)/dA equals the float64 reference's."""
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    captured: list[torch.Tensor] = []
    with capture_attention(vit, lambda i, a: captured.append(a)):
        logits = vit(x)
    grads = torch.autograd.grad(logits[:, 1].sum(), captured)
    ref_logits, ref_attn = reference_torchvision(vit, x)
    ref_grads = torch.autograd.grad(ref_logits[:, 1].sum(), ref_attn)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in vit.parameters())


# -- nn.MultiheadAttention, non-square, prefix tokens ------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_capture_non_square_with_registers(batch_first, model_guard):
    model = model_guard(seeded(lambda: MHAViT(batch_first=batch_first)))
    x = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(4))
    attn = attention_maps(model, x)
    assert find_adapter(model).name == "multihead"
    assert attn.grid == (8, 12) and attn.num_prefix_tokens == 3
    _, expected = reference_mhavit(model, x)
    for got, want in zip(attn.maps, expected, strict=True):
        torch.testing.assert_close(got.double(), want.detach(), atol=TOL, rtol=0)


class EncoderViT(nn.Module):
    """nn.TransformerEncoder, whose eval / no-grad fast path never calls MultiheadAttention.forward."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = self.encoder(torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1))
        return self.head(t[:, 0])


def test_fused_encoder_fast_path_is_switched_off_and_restored(model_guard):
    model = model_guard(seeded(EncoderViT))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    attn = attention_maps(model, x)
    assert len(attn.maps) == 2 and attn.num_prefix_tokens == 1
    inputs = block_inputs(model, [layer.self_attn for layer in model.encoder.layers], x)
    for got, layer, h in zip(attn.maps, model.encoder.layers, inputs):
        twin = copy.deepcopy(layer.self_attn).double()
        with torch.no_grad():
            _, want = twin(h, h, h, need_weights=True, average_attn_weights=False)
        torch.testing.assert_close(got.double(), want, atol=TOL, rtol=0)
    assert torch.backends.mha.get_fastpath_enabled()


# -- errors ---------------------------------------------------------------------------------------------------------
def test_unrecognisable_model_says_how_to_register():
    with pytest.raises(ValueError, match=r"recognisable attention.*SmallCNN.*register_adapter"):
        attention_maps(SmallCNN(), torch.rand(1, 1, 32, 32))
    with pytest.raises(TypeError, match="Expected argument `model` to be an nn.Module"):
        find_adapter(lambda x: x)


class MergingViT(MHAViT):
    """Swin-like: the token set shrinks between blocks (patch merging)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        for i, (norm, attn) in enumerate(zip(self.norms, self.attns)):
            y = norm(t).transpose(0, 1)
            t = t + attn(y, y, y, need_weights=False)[0].transpose(0, 1)
            if i == 0:
                t = t[:, ::2]
        return self.head(t[:, 0])


def test_token_count_change_is_refused(model_guard):
    model = model_guard(seeded(MergingViT))
    with pytest.raises(ValueError, match=r"token set changes between blocks.*Swin.*register_adapter"):
        attention_maps(model, torch.rand(2, 1, 32, 32))


@pytest.mark.parametrize("batch_first, kdim", [(False, None), (True, 6)])
def test_explicit_multihead_attention_equals_torch(batch_first, kdim):
    """Packed self-attention and separate q/k/v projections (kdim/vdim) against PyTorch's own forward."""
    mha = seeded(lambda: nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim))
    gen = torch.Generator().manual_seed(8)
    shape = (3, 5) if batch_first else (5, 3)
    q = torch.randn(*shape, 8, generator=gen)
    kv = torch.randn(*shape, kdim, generator=gen) if kdim else q
    captured: list[torch.Tensor] = []
    with torch.no_grad():
        want_out, want_w = mha(q, kv, kv, need_weights=True, average_attn_weights=False)
        got_out, got_w = explicit_multihead_attention(mha, captured.append, q, kv, kv, average_attn_weights=False)
        _, got_mean = explicit_multihead_attention(mha, captured.append, q, kv, kv)
        _, no_w = explicit_multihead_attention(mha, captured.append, q, kv, kv, need_weights=False)
    torch.testing.assert_close(got_out, want_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_mean, want_w.mean(1), atol=1e-6, rtol=1e-5)
    assert no_w is None and captured[0] is got_w


def test_explicit_path_refuses_masks(model_guard):
    mha = model_guard(seeded(lambda: nn.MultiheadAttention(8, 2)))
    holder = nn.ModuleDict({"patch": nn.Conv2d(1, 8, 4, stride=4), "attn": mha})
    y = torch.rand(5, 1, 8)
    with (
        pytest.raises(ValueError, match=r"without `attn_mask`.*register_adapter"),
        capture_attention(holder, lambda i, a: None),
    ):
        mha(y, y, y, attn_mask=torch.zeros(5, 5))
    assert "forward" not in mha.__dict__


# -- the registry ---------------------------------------------------------------------------------------------------
class ToyAttention(nn.Module):
    """A home-made attention block that only ever returns its output."""

    def __init__(self, dim: int):
        super().__init__()
        self.qk = nn.Linear(dim, 2 * dim)
        self.last: torch.Tensor | None = None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        q, k = self.qk(t).chunk(2, dim=-1)
        probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        self.last = probs
        return probs @ t


class ToyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.block = ToyAttention(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.block(torch.cat([self.cls.expand(len(t), -1, -1), t], 1))[:, 0]


@contextlib.contextmanager
def toy_explicit(model: nn.Module, sink):
    handle = model.block.register_forward_hook(lambda mod, args, out: sink(mod.last[:, None]))
    try:
        yield
    finally:
        handle.remove()


def test_register_adapter_for_a_custom_architecture(model_guard):
    model = model_guard(seeded(ToyViT))
    with pytest.raises(ValueError, match="register_adapter"):
        find_adapter(model)
    adapter = AttentionAdapter("toy", lambda m: isinstance(m, ToyViT), lambda m: m.patch, toy_explicit)
    register_adapter(adapter)
    try:
        with pytest.raises(ValueError, match="adapter named 'toy' is registered"):
            register_adapter(adapter)
        x = torch.rand(2, 1, 8, 12)
        attn = attention_maps(model, x)
        assert attn.grid == (2, 3) and attn.num_prefix_tokens == 1
        t = model.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([model.cls.expand(2, -1, -1), t], 1).double()
        q, k = F.linear(t, model.block.qk.weight.double(), model.block.qk.bias.double()).chunk(2, dim=-1)
        torch.testing.assert_close(
            attn.maps[0][:, 0].double(), torch.softmax(q @ k.transpose(-1, -2), -1), atol=TOL, rtol=0
        )
    finally:
        ADAPTERS.remove(adapter)
    with pytest.raises(TypeError, match="Expected argument `adapter` to be an AttentionAdapter"):
        register_adapter("toy")


# -- timm ------------------------------------------------------------------------------------------------------------
def timm_vit(seed: int = 0) -> nn.Module:
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    return seeded(
        lambda: vision_transformer.VisionTransformer(
            img_size=(32, 48),
            patch_size=8,
            in_chans=1,
            num_classes=5,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            reg_tokens=2,
            dynamic_img_size=True,
        ),
        seed,
    )


def reference_timm_attention(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention from its qkv weights in float64, on the block inputs of a float64 copy."""
    attns = [block.attn for block in model.blocks]
    out = []
    for attn, h in zip(attns, block_inputs(model, attns, x)):
        n, t, dim = h.shape
        heads = attn.num_heads
        qkv = F.linear(h, attn.qkv.weight.double(), None if attn.qkv.bias is None else attn.qkv.bias.double())
        q, k, _ = qkv.reshape(n, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        out.append(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1))
    return out


def test_timm_dynamic_size_non_square(model_guard):
    model = model_guard(timm_vit())
    fused = [block.attn.fused_attn for block in model.blocks]
    x = torch.rand(2, 1, 40, 56, generator=torch.Generator().manual_seed(6))  # not even the configured size
    attn = attention_maps(model, x)
    assert find_adapter(model).name == "timm"
    assert attn.grid == (5, 7) and attn.num_prefix_tokens == 3
    for got, want in zip(attn.maps, reference_timm_attention(model, x), strict=True):
        torch.testing.assert_close(got.double(), want, atol=TOL, rtol=0)
    assert [block.attn.fused_attn for block in model.blocks] == fused


def test_timm_swin_is_refused_with_the_reason():
    swin = pytest.importorskip("timm.models.swin_transformer")
    model = seeded(
        lambda: swin.SwinTransformer(
            img_size=32,
            patch_size=2,
            in_chans=1,
            window_size=4,
            embed_dim=16,
            depths=(1, 1),
            num_heads=(1, 2),
            num_classes=3,
        )
    )
    with pytest.raises(
        ValueError, match=r"does not apply to SwinTransformer.*local \(shifted\) windows and merge patches"
    ):
        attention_maps(model, torch.rand(1, 1, 32, 32))


# -- Hugging Face transformers -------------------------------------------------------------------------------
def hf_vit(seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
    )
    return seeded(lambda: transformers.ViTForImageClassification(config), seed)


def test_transformers_vit_eager_capture(model_guard):
    model = model_guard(hf_vit())
    implementation = model.config._attn_implementation
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    attn = attention_maps(model, x)
    assert find_adapter(model).name == "transformers"
    assert attn.grid == (4, 4) and attn.num_prefix_tokens == 1
    modules = [layer.attention for layer in model.vit.layers]
    for got, module, h in zip(attn.maps, modules, block_inputs(model, modules, x), strict=True):
        n, t, _ = h.shape
        q = F.linear(h, module.q_proj.weight.double(), module.q_proj.bias.double()).reshape(n, t, 2, -1).transpose(1, 2)
        k = F.linear(h, module.k_proj.weight.double(), module.k_proj.bias.double()).reshape(n, t, 2, -1).transpose(1, 2)
        want = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        torch.testing.assert_close(got.double(), want, atol=TOL, rtol=0)
    assert model.config._attn_implementation == implementation
