"""Small models for the demo, examples and tests: ``SmallCNN``, ``TinyViT`` and ``ClassifierModule``.

Both networks train on :class:`captum_ext.data.CleverHansDigits` in seconds on two CPU cores.

Example::

    >>> import torch
    >>> from captum_ext.models import SmallCNN, TinyViT
    >>> SmallCNN()(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    >>> TinyViT()(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import cast

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["SmallCNN", "TinyViT", "ClassifierModule", "fit_classifier", "small_cnn_module", "QUIET_TRAINER_KWARGS"]

#: The ``Trainer`` settings of every fit the package runs for you (no logger, checkpoints, bars or summaries);
#: ``fit_classifier``, ``train_on_random_labels`` and ROAR's defaults start from them.
QUIET_TRAINER_KWARGS: dict = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class SmallCNN(nn.Sequential):
    """Three conv blocks and a linear classifier, with named layers for Captum's layer methods.

    Layers: ``features.conv1`` .. ``features.conv3`` (each followed by its own non-inplace ReLU, so guided
    backprop can hook every one), ``pool`` and ``classifier`` (a single ``nn.Linear``).

    Args:
        in_channels: 1 (grey) or 3 (RGB). Default 1.
        num_classes: Default 10.
        image_size: Side of the square input, divisible by 8. Default 32.
        width: Channels of the first convolution (doubled twice). Default 16.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 32, width: int = 16):
        if image_size % 8:
            raise ValueError(f"Expected argument `image_size` to be divisible by 8, but got {image_size}.")
        w = width
        features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, w, 3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(w, 2 * w, 3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                conv3=nn.Conv2d(2 * w, 4 * w, 3, padding=1),
                relu3=nn.ReLU(),
            )
        )
        side = image_size // 8
        super().__init__(
            OrderedDict(
                features=features,
                pool=nn.AdaptiveAvgPool2d(side),
                flatten=nn.Flatten(),
                classifier=nn.Linear(4 * w * side * side, num_classes),
            )
        )


class TinyViT(VisionTransformer):
    """A small torchvision ``VisionTransformer`` (image 32, patch 4, 2 layers, 2 heads, width 16).

    The size is chosen for the noisy digits: a wider ViT (4 layers, width 64) memorises the training images
    (train 1.00, test ~0.2); this one reads the digits (test ~0.45 after 40 epochs at lr 3e-3, ~10 s on two cores).

    It *is* a ``torchvision.models.VisionTransformer``, so everything that handles torchvision's ViT handles
    it; only the patch projection accepts ``in_channels`` (torchvision's is fixed to 3). As in torchvision the
    head is zero-initialised: an untrained TinyViT has zero input gradients.

    Args:
        in_channels: Default 1.
        num_classes: Default 10.
        image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim: as in torchvision.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 32,
        patch_size: int = 4,
        num_layers: int = 2,
        num_heads: int = 2,
        hidden_dim: int = 16,
        mlp_dim: int = 32,
    ):
        super().__init__(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            num_classes=num_classes,
        )
        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(cast(torch.Tensor, self.conv_proj.bias))  # a Conv2d with bias=True


class ClassifierModule(pl.LightningModule):
    """Wrap any image classifier for Lightning: cross-entropy, Adam, accuracy via torchmetrics.

    Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` and ``test_acc``.

    Args:
        model: an ``nn.Module`` mapping (N, C, H, W) to (N, num_classes) logits.
        lr: Adam's learning rate. Default 1e-3.
        num_classes: Default 10.
        weight_decay: Default 0.

    Example::

        >>> import pytorch_lightning as pl
        >>> from captum_ext.data import CleverHansDigits
        >>> module = ClassifierModule(SmallCNN())
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, datamodule=CleverHansDigits())
        >>> trainer.global_step
        2
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, num_classes: int = 10, weight_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, metric: torchmetrics.Metric, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        metric(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test")
        self.log(f"{stage}_acc", metric, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_acc, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, self.test_acc, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def fit_classifier(
    model: nn.Module,
    datamodule: pl.LightningDataModule,
    max_epochs: int = 15,
    lr: float = 1e-3,
    seed: int = 0,
    **trainer_kwargs,
) -> nn.Module:
    """Train ``model`` in place with :class:`ClassifierModule` and a quiet Lightning ``Trainer``; return it in eval mode.

    The global RNG streams are forked, so calling this changes no other random sequence.

    Example::

        >>> from captum_ext.data import CleverHansDigits
        >>> model = fit_classifier(SmallCNN(), CleverHansDigits(), max_epochs=1, limit_train_batches=2)
        >>> model.training
        False
    """
    settings = {**QUIET_TRAINER_KWARGS, "max_epochs": max_epochs, "accelerator": "cpu", **trainer_kwargs}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pl.Trainer(**settings).fit(ClassifierModule(model, lr=lr), datamodule=datamodule)
    return model.eval()


def small_cnn_module(in_channels: int = 1, num_classes: int = 10, lr: float = 1e-3) -> ClassifierModule:
    """A fresh ``ClassifierModule(SmallCNN(...))``: the ``module_factory`` for ROAR on the digits.

    Example::

        >>> type(small_cnn_module().model).__name__
        'SmallCNN'
    """
    return ClassifierModule(SmallCNN(in_channels=in_channels, num_classes=num_classes), lr=lr, num_classes=num_classes)
