"""BatchTransform: range, dtype, shape, normalisation, augmentation only on train."""

from __future__ import annotations

import pytest
import torch

from tether.finetune.data import BatchTransform
from tether.finetune.data import DataConfig
from tether.finetune.data.transforms import IMAGENET_MEAN
from tether.finetune.data.transforms import IMAGENET_STD
from tether.finetune.data.transforms import random_crop_boxes


def _batch(b: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("train", [True, False])
def test_plain_conversion(train: bool) -> None:
    x = _batch()
    out = BatchTransform(DataConfig(), train=train)(x)
    assert out.dtype == torch.float32
    assert out.shape == x.shape
    assert torch.equal(out, x.float() / 255)
    assert x.dtype == torch.uint8  # the input is untouched


def test_normalisation_values() -> None:
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[1] = 255
    out = BatchTransform(DataConfig(image_size=4, normalize=True), train=False)(x)
    mean = torch.tensor(IMAGENET_MEAN)
    std = torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[1, :, 2, 3], (1 - mean) / std)


def test_augment_only_on_train() -> None:
    x = _batch(32)
    cfg = DataConfig(augment=True)
    torch.manual_seed(0)
    evaluated = BatchTransform(cfg, train=False)(x)
    assert torch.equal(evaluated, x.float() / 255)
    augmented = BatchTransform(cfg, train=True)(x)
    assert augmented.shape == x.shape
    assert augmented.dtype == torch.float32
    assert float(augmented.min()) >= 0.0
    assert float(augmented.max()) <= 1.0
    assert not torch.equal(augmented, evaluated)


def test_augment_resizes_to_image_size_and_repeats_under_a_seed() -> None:
    x = _batch(6, size=20)
    transform = BatchTransform(DataConfig(image_size=12, augment=True, normalize=True), True)
    torch.manual_seed(5)
    a = transform(x)
    torch.manual_seed(5)
    b = transform(x)
    assert a.shape == (6, 3, 12, 12)
    assert torch.equal(a, b)


def test_full_crop_is_identity_or_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the crop forced to the whole image, each output is the input or its mirror."""
    x = _batch(64)
    full = torch.zeros(64), torch.zeros(64), torch.full((64,), 16.0), torch.full((64,), 16.0)
    monkeypatch.setattr("tether.finetune.data.transforms.random_crop_boxes", lambda *a: full)
    torch.manual_seed(1)
    out = BatchTransform(DataConfig(augment=True), train=True)(x)
    ref = x.float() / 255
    same = [torch.allclose(o, r, atol=1e-5) for o, r in zip(out, ref, strict=True)]
    mirrored = [torch.allclose(o, r.flip(-1), atol=1e-5) for o, r in zip(out, ref, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 16 < sum(mirrored) < 48


def test_crop_boxes_follow_the_sampling_ranges() -> None:
    torch.manual_seed(0)
    top, left, h, w = random_crop_boxes(2000, 32, 32)
    area = h * w / (32 * 32)
    ratio = w / h
    assert torch.all((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0))
    assert torch.all((top + h <= 32) & (left + w <= 32))
    assert float(area.min()) > 0.45
    assert float(area.max()) <= 1.0
    assert float(ratio.min()) > 0.7
    assert float(ratio.max()) < 1.4
    assert torch.equal(top, top.round())
    assert torch.equal(w, w.round())


def test_rejects_float_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        BatchTransform(DataConfig(), train=True)(torch.zeros(1, 3, 16, 16))


def test_crop_matches_resizing_the_cropped_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """Away from the crop's edge, grid sampling equals bilinear resizing of the crop."""
    x = _batch(1, size=32)
    box = torch.tensor([5.0]), torch.tensor([3.0]), torch.tensor([20.0]), torch.tensor([24.0])
    monkeypatch.setattr("tether.finetune.data.transforms.random_crop_boxes", lambda *a: box)
    monkeypatch.setattr("torch.rand", lambda *a, **k: torch.ones(*a))  # never flip
    out = BatchTransform(DataConfig(image_size=32, augment=True), train=True)(x)
    crop = x[:, :, 5:25, 3:27].float() / 255
    ref = torch.nn.functional.interpolate(
        crop, size=(32, 32), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
