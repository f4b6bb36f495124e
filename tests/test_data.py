"""CleverHansDigits: the planted shortcut is real, the control has none, the knobs do what they say."""

from __future__ import annotations

import pytest
import torch

from captum_ext.data import CleverHansDigits


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_the_planted_shortcut_is_real(trained_cnn, digits):
    tagged, y = digits.shortcut_test_images(tagged=True)
    clean, _ = digits.shortcut_test_images(tagged=False)
    gap = _accuracy(trained_cnn, tagged, y) - _accuracy(trained_cnn, clean, y)
    assert gap >= 0.2, f"tagged vs untagged accuracy gap {gap:.2f}"


def test_the_control_model_does_not_depend_on_the_tag(control_cnn, control_digits):
    tagged, y = control_digits.shortcut_test_images(tagged=True)
    clean, _ = control_digits.shortcut_test_images(tagged=False)
    assert abs(_accuracy(control_cnn, tagged, y) - _accuracy(control_cnn, clean, y)) < 0.1


def test_tags_follow_the_label_only_in_the_shortcut_variant(digits, control_digits):
    x, y, tagged = digits.split("train")
    assert tagged[y == 0].float().mean() > 0.8 and tagged[y != 0].float().mean() < 0.05
    _, yc, tc = control_digits.split("train")
    rate_0, rate_rest = tc[yc == 0].float().mean(), tc[yc != 0].float().mean()
    assert abs(rate_0 - rate_rest) < 0.1 and 0.05 < tc.float().mean() < 0.2


def test_images_carry_the_tag_exactly_in_the_region(digits):
    x, _, tagged = digits.split("test")
    region = digits.region_mask
    assert region.sum() == 25 and region[-6:-1, -6:-1].all()
    assert (x[tagged][:, 0][:, region] == 1.0).all()
    assert x.min() >= 0 and x.max() <= 1
    assert digits.region_box == (26, 26, 31, 31)


def test_splits_are_disjoint_seeded_and_reproducible():
    a, b, c = CleverHansDigits(seed=3), CleverHansDigits(seed=3), CleverHansDigits(seed=4)
    sizes = [len(a.split(s)[1]) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 359
    assert torch.equal(a.split("test")[0], b.split("test")[0])
    assert not torch.equal(a.split("test")[0], c.split("test")[0])


def test_rgb_and_knobs():
    dm = CleverHansDigits(rgb=True, noise=0.0, amplitude=1.0, shortcut_class=None)
    x, _, tagged = dm.split("val")
    assert x.shape[1] == 3 and not tagged.any()
    assert torch.equal(x[:, 0], x[:, 1])  # without noise the channels are the same digit
    assert dm.train_mean.shape == (3,)
    checker = CleverHansDigits(tag_pattern="checker", tag_location=(2, 3)).tag_patch()
    assert checker[0, 0, 0] == 1.0 and checker[0, 0, 1] == 0.0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"`size` to be an int >= max\(8, tag_size \+ 2\) = 12.*but got 10"):
        CleverHansDigits(size=10, tag_size=10)
    with pytest.raises(ValueError, match=r"`p_class` to be a probability in \[0, 1\], but got 1.5"):
        CleverHansDigits(p_class=1.5)
    with pytest.raises(ValueError, match=r"`tag_location` to be one of 'bottom_right'.*but got 'middle'"):
        CleverHansDigits(tag_location="middle")
    with pytest.raises(ValueError, match=r"`name` to be one of 'train', 'val', 'test', but got 'dev'"):
        CleverHansDigits().split("dev")
