"""The digits transfer task, the data config, load_task and the digits source network."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import typing
from typing import Any

import pytest
import torch

from tether.errors import ConfigError
from tether.finetune.data import DataConfig
from tether.finetune.data import TaskData
from tether.finetune.data import load_digits_task
from tether.finetune.data import load_task
from tether.finetune.models import digits_cnn
from tether.finetune.models.digits_cnn import DigitsCNN
from tether.finetune.models.digits_cnn import pretrained_source_checkpoint


def _ids(images: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in images}


def test_shapes_dtypes_and_labels() -> None:
    task = load_digits_task(DataConfig(shots=5, val_shots=4))
    assert task.name == "digits"
    assert task.classes == ("5", "6", "7", "8", "9")
    for split in (task.train, task.val, task.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (3, 16, 16)
        assert split.images.is_contiguous()
        assert split.labels.dtype == torch.int64
        assert int(split.labels.min()) >= 0
        assert int(split.labels.max()) <= 4
        assert torch.equal(split.images[:, 0], split.images[:, 2])
    assert torch.bincount(task.train.labels).tolist() == [5] * 5
    assert torch.bincount(task.val.labels).tolist() == [4] * 5
    assert len(task.test) == (182 + 181 + 179 + 174 + 180) - 5 * 9
    assert int(task.train.images.max()) == 255
    assert int(task.train.images.min()) == 0
    assert task.source is not None
    assert len(task.source) == 178 + 182 + 177 + 183 + 181
    assert torch.bincount(task.source.labels).tolist() == [178, 182, 177, 183, 181]


def test_splits_are_disjoint_and_cover_the_target_classes() -> None:
    task = load_digits_task(DataConfig(shots=10, val_shots=10))
    assert task.source is not None
    ids = [_ids(s.images) for s in (task.train, task.val, task.test, task.source)]
    assert sum(len(i) for i in ids) == 1797
    assert len(set().union(*ids)) == 1797


def test_seeded_shots() -> None:
    first = load_digits_task(DataConfig(seed=3))
    again = load_digits_task(DataConfig(seed=3))
    other = load_digits_task(DataConfig(seed=4))
    assert torch.equal(first.train.images, again.train.images)
    assert first.fingerprint == again.fingerprint
    assert _ids(first.train.images) != _ids(other.train.images)
    assert first.fingerprint != other.fingerprint
    assert torch.equal(first.source.images, other.source.images)  # type: ignore[union-attr]


def test_other_classes_and_size() -> None:
    cfg = DataConfig(source_classes=(9, 1), target_classes=(0, 2, 3), image_size=24, shots=2)
    task = load_digits_task(cfg)
    assert task.classes == ("0", "2", "3")
    assert task.train.images.shape == (6, 3, 24, 24)
    assert task.source is not None
    assert torch.bincount(task.source.labels).tolist() == [180, 182]


def test_too_many_shots() -> None:
    with pytest.raises(ConfigError, match=r"data.shots \+ data.val_shots = 174 leaves no test"):
        load_digits_task(DataConfig(shots=170, val_shots=4))


def test_load_task_injects_noise_into_train_only(tmp_path: Path) -> None:
    clean = load_task(DataConfig(shots=30), cache_dir=tmp_path)
    noisy = load_task(DataConfig(shots=30, noise="symmetric", noise_rate=0.4), cache_dir=tmp_path)
    assert noisy.train.clean_labels is not None
    assert torch.equal(noisy.train.clean_labels, clean.train.labels)
    assert int((noisy.train.labels != clean.train.labels).sum()) == 60
    assert torch.equal(noisy.train.images, clean.train.images)
    assert torch.equal(noisy.val.labels, clean.val.labels)
    assert noisy.val.clean_labels is None
    assert noisy.fingerprint != clean.fingerprint
    refit = noisy.train_val()
    assert refit.clean_labels is not None
    assert torch.equal(refit.clean_labels, torch.cat([clean.train.labels, clean.val.labels]))


def test_config_type_hints_resolve() -> None:
    hints = typing.get_type_hints(DataConfig)
    assert hints["kind"] == typing.Literal["digits", "folder"]
    assert hints["source_classes"] == tuple[int, ...]


def test_config_lists_become_tuples() -> None:
    cfg = DataConfig(source_classes=[0, 1], target_classes=[2, 3])  # type: ignore[arg-type]
    assert cfg.source_classes == (0, 1)
    assert hash(cfg)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "imagenet"}, "data.kind must be one of 'digits', 'folder', got 'imagenet'"),
        ({"kind": "folder"}, "data.root is required when data.kind is 'folder'"),
        ({"shots": 0}, "data.shots must be >= 1, got 0"),
        ({"shots": 2.5}, "data.shots must be an integer, got 2.5"),
        ({"val_shots": -1}, "data.val_shots must be >= 0, got -1"),
        ({"image_size": 0}, "data.image_size must be >= 1, got 0"),
        ({"resize": 8}, r"data.resize must be >= data.image_size \(16\)"),
        ({"val_fraction": 1.0}, r"data.val_fraction must be in \[0, 1\), got 1.0"),
        ({"test_fraction": -0.1}, r"data.test_fraction must be in \[0, 1\), got -0.1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction \\+ data.test_fraction"),
        ({"source_classes": (0, 10)}, "data.source_classes must hold digits 0..9, got 10"),
        ({"target_classes": (5,)}, "data.target_classes needs at least 2 classes"),
        ({"target_classes": (5, 5, 6)}, "data.target_classes has repeated classes"),
        (
            {"target_classes": (4, 5)},
            r"data.source_classes and data.target_classes must not overlap",
        ),
        ({"noise": "flip"}, "data.noise must be one of 'none', 'symmetric', 'pair', got 'flip'"),
        ({"noise": "pair", "noise_rate": 1.0}, r"data.noise_rate must be in \[0, 1\)"),
        ({"noise_rate": 0.2}, "data.noise_rate is 0.2 but data.noise is 'none'"),
        ({"augment": "yes"}, "data.augment must be true or false, got 'yes'"),
        ({"seed": -1}, "data.seed must be >= 0, got -1"),
    ],
)
def test_config_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        DataConfig(**changes)


@pytest.fixture(scope="module")
def source_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_source_checkpoint_loads_and_is_accurate(
    source_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = DataConfig()
    before = torch.random.get_rng_state()
    path = pretrained_source_checkpoint(cfg, cache_dir=source_cache)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert path.parent == source_cache / "digits"
    assert path.name.startswith("source-")
    assert "pretraining the digits source network on classes 0-4 (10 epochs)" in (
        capsys.readouterr().err
    )
    model = DigitsCNN(len(cfg.source_classes))
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    task: TaskData = load_digits_task(cfg)
    assert task.source is not None
    with torch.no_grad():
        logits = model(task.source.images.float() / 255)
    assert (logits.argmax(1) == task.source.labels).float().mean() > 0.8


def test_source_checkpoint_is_reused(
    source_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = pretrained_source_checkpoint(DataConfig(), cache_dir=source_cache)
    capsys.readouterr()

    def no_training(*args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        raise AssertionError("retrained a cached source network")

    monkeypatch.setattr(digits_cnn, "_pretrain", no_training)
    other_seed = dataclasses.replace(DataConfig(), seed=7, shots=9)
    assert pretrained_source_checkpoint(other_seed, cache_dir=source_cache) == first
    assert capsys.readouterr().err == ""
    assert len(list((source_cache / "digits").iterdir())) == 1


def test_digits_cnn_layout() -> None:
    model = DigitsCNN(3, widths=(4, 8, 16))
    names = [name for name, _ in model.named_children()]
    assert names == ["block1", "block2", "block3", "avgpool", "fc"]
    assert isinstance(model.block1[3], torch.nn.MaxPool2d)
    assert len(model.block3) == 3
    assert model.fc.in_features == 16
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    model.avgpool = torch.nn.Identity()  # type: ignore[assignment]
    model.fc = torch.nn.Linear(16 * 4 * 4, 3)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
