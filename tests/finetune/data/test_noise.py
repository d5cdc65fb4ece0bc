"""Label noise: the realised flip rate, the flip rules, determinism."""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest
import torch

from tether.finetune.data import inject_label_noise


def _labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    rate=st.floats(0.0, 1.0),
    num_classes=st.integers(2, 12),
    seed=st.integers(0, 2**31),
)
def test_symmetric_flips_exactly_the_requested_count(
    n: int, rate: float, num_classes: int, seed: int
) -> None:
    clean = _labels(n, num_classes, seed)
    noisy = inject_label_noise(
        clean, kind="symmetric", rate=rate, num_classes=num_classes, seed=seed
    )
    assert noisy.dtype == torch.int64
    assert noisy.shape == clean.shape
    assert int((noisy != clean).sum()) == round(rate * n)
    assert n == 0 or (int(noisy.min()) >= 0 and int(noisy.max()) < num_classes)
    assert torch.equal(clean, _labels(n, num_classes, seed))  # the input is not modified


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    rate=st.floats(0.0, 1.0),
    num_classes=st.integers(2, 12),
    seed=st.integers(0, 2**31),
)
def test_pair_moves_each_flipped_label_to_the_next_class(
    n: int, rate: float, num_classes: int, seed: int
) -> None:
    clean = _labels(n, num_classes, seed)
    noisy = inject_label_noise(clean, kind="pair", rate=rate, num_classes=num_classes, seed=seed)
    flipped = noisy != clean
    assert int(flipped.sum()) == round(rate * n)
    assert torch.equal(noisy[flipped], (clean[flipped] + 1) % num_classes)


def test_symmetric_targets_cover_the_other_classes() -> None:
    clean = torch.zeros(4000, dtype=torch.int64)
    noisy = inject_label_noise(clean, kind="symmetric", rate=0.5, num_classes=5, seed=0)
    counts = torch.bincount(noisy, minlength=5)
    assert counts[0] == 2000
    assert all(400 < int(c) < 600 for c in counts[1:])


def test_deterministic_for_a_seed() -> None:
    clean = _labels(200, 5, 0)
    a = inject_label_noise(clean, kind="symmetric", rate=0.3, num_classes=5, seed=11)
    b = inject_label_noise(clean, kind="symmetric", rate=0.3, num_classes=5, seed=11)
    c = inject_label_noise(clean, kind="symmetric", rate=0.3, num_classes=5, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_none_returns_a_copy() -> None:
    clean = _labels(20, 3, 0)
    noisy = inject_label_noise(clean, kind="none", rate=0.0, num_classes=3, seed=0)
    assert torch.equal(noisy, clean)
    assert noisy.data_ptr() != clean.data_ptr()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "uniform"}, "noise kind must be"),
        ({"rate": 1.5}, r"noise rate must be in \[0, 1\]"),
        ({"num_classes": 1}, "at least 2 classes"),
        ({"num_classes": 2}, r"labels must be in 0..1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"kind": "pair", "rate": 0.2, "num_classes": 3, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        inject_label_noise(torch.tensor([0, 1, 2]), **args)  # type: ignore[arg-type]
