"""The failure-mode gallery (issue #16): the misclassified images, with maps for the true and the predicted class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ext.failures import failure_modes


class Linear(nn.Module):
    """Scores W x: the saliency map of class c is W[c] itself (the oracle), whatever the image."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def test_the_gallery_holds_the_misclassified_images_with_both_maps(model_guard):
    model = model_guard(Linear())
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        predictions = model(x).argmax(1)
    labels = predictions.clone()
    labels[[1, 4, 7]] = (predictions[[1, 4, 7]] + 1) % 3  # three failures, at known places
    failures = failure_modes(model, "saliency", x, labels, limit=2)
    assert failures.indices.tolist() == [1, 4]  # the first two, in order
    assert (
        failures.labels.tolist() == labels[[1, 4]].tolist()
        and failures.predictions.tolist() == predictions[[1, 4]].tolist()
    )
    weights = model.weight.detach().reshape(3, 4, 4).abs()
    torch.testing.assert_close(failures.true_maps, weights[labels[[1, 4]]])
    torch.testing.assert_close(failures.predicted_maps, weights[predictions[[1, 4]]])
    figure = failures.plot()
    assert len(figure.axes) == 3 * 2 and figure.axes[0].get_title().startswith("label ")

    none = failure_modes(model, "saliency", x, predictions)
    normed = model_guard(nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(16, 3)).train())
    failure_modes(normed, "saliency", x, labels)  # predicted in eval mode: no running statistic moves
    assert len(none.indices) == 0 and none.true_maps.shape == (0, 4, 4)
    with pytest.raises(ValueError, match="one class per image"):
        failure_modes(model, "saliency", x, labels[:3])
