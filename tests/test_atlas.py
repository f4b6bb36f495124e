"""Activation atlas (issue #16; Carter et al. 2019) on an oracle: two known directions of a layer drive two classes,
so the atlas must keep them in separate cells, attribute each cell to its class, and point its direction there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ext.features import activation_atlas


class TwoDirections(nn.Module):
    """``embed`` copies the 2 input channels into 4 (directions d0 = (1, 0, 1, 0), d1 = (0, 1, 0, 1)); the head
    reads d0 as class 0 and d1 as class 1 (and nothing as class 2)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(2, 4, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]]).reshape(4, 2, 1, 1))
            self.head.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0]]))

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.embed(x))).flatten(1))


@pytest.fixture(scope="module")
def oracle():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 2
    images = 0.05 * torch.rand(60, 2, 8, 8, generator=gen)
    images[labels == 0, 0] += 1.0 + 0.2 * torch.rand(30, 8, 8, generator=gen)  # class 0: channel 0 everywhere
    images[labels == 1, 1] += 1.0 + 0.2 * torch.rand(30, 8, 8, generator=gen)  # class 1: channel 1
    return TwoDirections().eval(), images, labels


def test_the_two_directions_land_in_separate_cells_attributed_to_their_class(oracle, model_guard):
    model, images, labels = oracle
    model_guard(model)
    atlas = activation_atlas(model, "embed", images, labels, grid=4, min_count=2, steps=8)
    assert len(atlas.cells) >= 2 and int(atlas.counts.sum()) <= 60
    d0, d1 = torch.tensor([1.0, 0, 1, 0]), torch.tensor([0.0, 1, 0, 1])
    for k in range(len(atlas.cells)):
        members = labels[atlas.member_cell == k]
        assert len(members.unique()) == 1  # a cell never mixes the two directions
        cls = int(members[0])
        assert int(atlas.top_classes()[k]) == cls  # h . d logit / d h points at the members' class
        cosine = torch.nn.functional.cosine_similarity(atlas.directions[k], d0 if cls == 0 else d1, dim=0)
        assert cosine > 0.99
    assert set(atlas.top_classes().tolist()) == {0, 1}
    assert atlas.images.shape == (len(atlas.cells), 2, 8, 8)
    figure = atlas.plot()
    assert sum(bool(ax.images) for ax in figure.axes) == len(atlas.cells)


def test_a_class_activation_atlas_keeps_one_class(oracle):
    model, images, labels = oracle
    atlas = activation_atlas(model, "embed", images, labels, grid=3, min_count=1, class_filter=1, steps=2)
    assert atlas.labels.unique().tolist() == [1] and set(atlas.top_classes().tolist()) == {1}
    with pytest.raises(ValueError, match="`labels` with `class_filter`"):
        activation_atlas(model, "embed", images, class_filter=1)
    with pytest.raises(ValueError, match="'tsne' or 'umap'"):
        activation_atlas(model, "embed", images, method="pca")
