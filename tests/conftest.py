"""Shared, session-scoped data and trained models: each is trained once per test run (seconds each)."""

from __future__ import annotations

import copy
import logging
import socket
import warnings

import pytest
import torch
from torch import nn

from captum_ext.data import CleverHansDigits
from captum_ext.models import SmallCNN, TinyViT, fit_classifier

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits() -> CleverHansDigits:
    """The default data: shortcut tag on 90% of class 0 and 2% of the rest."""
    return CleverHansDigits()


@pytest.fixture(scope="session")
def control_digits() -> CleverHansDigits:
    """The control: the same share of images tagged, independently of the label."""
    return CleverHansDigits(control=True)


@pytest.fixture(scope="session")
def trained_cnn(digits) -> nn.Module:
    """SmallCNN trained 15 epochs on the shortcut data (eval mode). Tests must not modify it."""
    torch.manual_seed(0)
    return fit_classifier(SmallCNN(), digits, max_epochs=15)


@pytest.fixture(scope="session")
def control_cnn(control_digits) -> nn.Module:
    """SmallCNN trained 15 epochs on the control data."""
    torch.manual_seed(0)
    return fit_classifier(SmallCNN(), control_digits, max_epochs=15)


@pytest.fixture(scope="session")
def trained_vit(digits) -> nn.Module:
    """TinyViT trained 40 epochs on the shortcut data: test ~0.48; tagged zeros ~0.95, the same zeros untagged ~0.16."""
    torch.manual_seed(0)
    return fit_classifier(TinyViT(), digits, max_epochs=40, lr=3e-3)


@pytest.fixture(scope="session")
def control_vit(control_digits) -> nn.Module:
    """The same TinyViT, trained the same way on the control data."""
    torch.manual_seed(0)
    return fit_classifier(TinyViT(), control_digits, max_epochs=40, lr=3e-3)


def snapshot(model: nn.Module) -> dict:
    """Everything the invariants promise to leave unchanged: weights and buffers (bitwise), per-module mode,
    per-parameter ``requires_grad`` and ``.grad``, and the number of hooks of every kind."""
    hooks = 0
    for module in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            hooks += len(getattr(module, attr, {}))
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": hooks,
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    """Assert ``model`` matches a :func:`snapshot` taken earlier."""
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    assert after["modes"] == before["modes"], "a module's training flag changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    for g_after, g_before in zip(after["grads"], before["grads"]):
        assert (g_after is None) == (g_before is None), ".grad appeared or vanished"
        if g_after is not None:
            assert torch.equal(g_after, g_before), ".grad changed"
    assert after["hooks"] == before["hooks"], "hooks were left on the model"


@pytest.fixture
def model_guard():
    """``model_guard(model)`` snapshots a model and asserts at teardown that it is unchanged."""
    guarded: list[tuple[nn.Module, dict]] = []

    def guard(model: nn.Module) -> nn.Module:
        guarded.append((model, snapshot(model)))
        return model

    yield guard
    for model, before in guarded:
        assert_unchanged(model, before)


__all__ = ["snapshot", "assert_unchanged", "copy"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for gloo rendezvous and the TensorBoard server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run best on one thread: two OpenMP threads on a busy 2-core machine were 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
