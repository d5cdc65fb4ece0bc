"""Image folders: both layouts, the decoded cache, and one-line errors naming the bad path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image
import pytest
import torch

from tether.errors import ConfigError
from tether.finetune.data import DataConfig
from tether.finetune.data import folder as folder_module
from tether.finetune.data import load_folder
from tether.finetune.data import load_task


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _tree(root: Path, classes: dict[str, int], *, tag: int = 0) -> None:
    """``count`` solid images per class; colour (class, index, tag) identifies each image."""
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            _png(root / name / f"img{i:02d}.png", (40 * c, 10 * i, tag))


def _cfg(root: Path, **kw: Any) -> DataConfig:
    return DataConfig(kind="folder", root=str(root), **kw)


def _ids(images: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in img[:, 0, 0]) for img in images}


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    root = tmp_path / "mars"
    _tree(root / "train", {"ant": 3, "bee": 3}, tag=1)
    _tree(root / "val", {"ant": 2, "bee": 2}, tag=2)
    _tree(root / "test", {"ant": 2, "bee": 1}, tag=3)
    return root


def test_train_val_test_layout(split_root: Path, tmp_path: Path) -> None:
    task = load_folder(_cfg(split_root, image_size=16), cache_dir=tmp_path / "cache")
    assert task.name == "mars"
    assert task.classes == ("ant", "bee")
    assert task.source is None
    assert (len(task.train), len(task.val), len(task.test)) == (6, 4, 3)
    assert task.train.images.shape == (6, 3, 16, 16)
    assert task.train.images.dtype == torch.uint8
    assert task.train.images.is_contiguous()
    assert task.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert task.test.labels.tolist() == [0, 0, 1]
    assert task.train.clean_labels is None
    assert {i[2] for i in _ids(task.val.images)} == {2}
    assert task.train.images[4, :, 5, 5].tolist() == [40, 10, 1]
    assert len(task.fingerprint) == 64
    both = task.train_val()
    assert len(both) == 10
    assert torch.equal(both.labels, torch.cat([task.train.labels, task.val.labels]))


def test_resize_then_centre_crop(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste((0, 255, 0), (20, 0, 40, 20))
    img.paste((0, 0, 255), (40, 0, 60, 20))
    (tmp_path / "r" / "a").mkdir(parents=True)
    img.save(tmp_path / "r" / "a" / "x.png")
    _png(tmp_path / "r" / "b" / "y.png", (0, 0, 0))
    cfg = _cfg(tmp_path / "r", image_size=12, val_fraction=0.0, test_fraction=0.0)
    task = load_folder(cfg, cache_dir=tmp_path / "cache")
    green = task.train.images[0].to(torch.float32)
    assert green.shape == (3, 12, 12)
    assert green[1].mean() > 200
    assert green[0].mean() < 40
    assert green[2].mean() < 40


def test_resize_larger_than_image_size_crops_the_centre(tmp_path: Path) -> None:
    img = Image.new("RGB", (20, 20), (0, 0, 0))
    img.paste((255, 255, 255), (5, 5, 15, 15))
    (tmp_path / "r" / "a").mkdir(parents=True)
    img.save(tmp_path / "r" / "a" / "x.png")
    _png(tmp_path / "r" / "b" / "y.png", (0, 0, 0))
    cfg = _cfg(tmp_path / "r", image_size=16, resize=32, val_fraction=0.0, test_fraction=0.0)
    task = load_folder(cfg, cache_dir=tmp_path / "cache")
    assert task.train.images[0].to(torch.float32).mean() > 230


def test_fraction_split_sizes_disjoint_and_seeded(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _tree(root, {"a": 10, "b": 10, "c": 10})
    cfg = _cfg(root, val_fraction=0.2, test_fraction=0.3, seed=1)
    task = load_folder(cfg, cache_dir=tmp_path / "cache")
    assert task.classes == ("a", "b", "c")
    assert (len(task.train), len(task.val), len(task.test)) == (15, 6, 9)
    for split, per_class in ((task.train, 5), (task.val, 2), (task.test, 3)):
        assert torch.bincount(split.labels).tolist() == [per_class] * 3
    ids = [_ids(s.images) for s in (task.train, task.val, task.test)]
    assert sum(len(i) for i in ids) == 30
    assert ids[0].isdisjoint(ids[1])
    assert ids[0].isdisjoint(ids[2])
    assert ids[1].isdisjoint(ids[2])
    again = load_folder(cfg, cache_dir=tmp_path / "cache")
    assert torch.equal(again.train.images, task.train.images)
    assert again.fingerprint == task.fingerprint
    other = load_folder(
        _cfg(root, val_fraction=0.2, test_fraction=0.3, seed=2), cache_dir=tmp_path / "cache"
    )
    assert _ids(other.train.images) != ids[0]
    assert other.fingerprint != task.fingerprint


def test_small_classes_still_get_val_and_test(tmp_path: Path) -> None:
    _tree(tmp_path / "flat", {"a": 3, "b": 3})
    cfg = _cfg(tmp_path / "flat", val_fraction=0.1, test_fraction=0.1)
    task = load_folder(cfg, cache_dir=tmp_path / "cache")
    assert (len(task.train), len(task.val), len(task.test)) == (2, 2, 2)


def test_class_too_small_for_fractions(tmp_path: Path) -> None:
    _tree(tmp_path / "flat", {"a": 5, "tiny": 2})
    cfg = _cfg(tmp_path / "flat", val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(ConfigError, match="'tiny' has only 2 images"):
        load_folder(cfg, cache_dir=tmp_path / "cache")


def test_decoded_cache_is_reused(
    split_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_task(_cfg(split_root), cache_dir=cache)
    assert len(list((cache / "images").glob("*.pt"))) == 3
    assert not list((cache / "images").glob("*.tmp"))

    def no_decoding(path: Path, *, resize: int, size: int) -> torch.Tensor:
        raise AssertionError(f"decoded {path} although it was cached")

    monkeypatch.setattr(folder_module, "_decode_image", no_decoding)
    second = load_task(_cfg(split_root), cache_dir=cache)
    assert torch.equal(first.test.images, second.test.images)
    assert first.fingerprint == second.fingerprint
    payload = torch.load(next((cache / "images").glob("*.pt")), weights_only=True)
    assert payload["images"].dtype == torch.uint8


def test_changed_file_is_decoded_again(split_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_folder(_cfg(split_root), cache_dir=cache)
    changed = split_root / "test" / "bee" / "img00.png"
    _png(changed, (1, 2, 3))
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_folder(_cfg(split_root), cache_dir=cache)
    assert second.test.images[2, :, 0, 0].tolist() == [1, 2, 3]
    assert second.fingerprint != first.fingerprint
    assert torch.equal(first.train.images, second.train.images)


def test_corrupt_cache_file_is_rebuilt(split_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_folder(_cfg(split_root), cache_dir=cache)
    for path in (cache / "images").glob("*.pt"):
        path.write_bytes(b"not a torch file")
    second = load_folder(_cfg(split_root), cache_dir=cache)
    assert torch.equal(first.train.images, second.train.images)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.root .*nowhere does not exist") as info:
        load_folder(_cfg(tmp_path / "nowhere"), cache_dir=tmp_path)
    assert info.value.kind == "data"


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="file.txt is not a directory"):
        load_folder(_cfg(tmp_path / "file.txt"), cache_dir=tmp_path)


def test_partial_split_folders(tmp_path: Path) -> None:
    _tree(tmp_path / "r" / "train", {"a": 1, "b": 1})
    _tree(tmp_path / "r" / "val", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match=r"missing test/$"):
        load_folder(_cfg(tmp_path / "r"), cache_dir=tmp_path)


def test_classes_differ_between_splits(split_root: Path, tmp_path: Path) -> None:
    _tree(split_root / "train", {"ant": 1, "bee": 1, "cicada": 1})
    with pytest.raises(ConfigError, match="val/ lacks cicada; test/ lacks cicada") as info:
        load_folder(_cfg(split_root), cache_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_empty_class_folder(tmp_path: Path) -> None:
    _tree(tmp_path / "r", {"a": 2})
    (tmp_path / "r" / "empty").mkdir()
    (tmp_path / "r" / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="empty holds no images"):
        load_folder(_cfg(tmp_path / "r"), cache_dir=tmp_path)


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    _png(tmp_path / "r" / "loose.png", (0, 0, 0))
    with pytest.raises(ConfigError, match="has no class subfolders"):
        load_folder(_cfg(tmp_path / "r"), cache_dir=tmp_path)


def test_corrupt_image_names_the_file(split_root: Path, tmp_path: Path) -> None:
    (split_root / "val" / "bee" / "broken.png").write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(ConfigError, match=r"cannot decode image .*val/bee/broken\.png") as info:
        load_folder(_cfg(split_root), cache_dir=tmp_path / "cache")
    assert info.value.kind == "data"
    assert "\n" not in str(info.value)


def test_uppercase_extensions_and_hidden_files(tmp_path: Path) -> None:
    _png(tmp_path / "r" / "a" / "one.PNG", (0, 0, 0))
    _png(tmp_path / "r" / "a" / "nested" / "two.jpg", (0, 0, 0))
    (tmp_path / "r" / "a" / "._one.png").write_bytes(b"resource fork")
    _png(tmp_path / "r" / "b" / "three.png", (0, 0, 0))
    cfg = _cfg(tmp_path / "r", val_fraction=0.0, test_fraction=0.0)
    task = load_folder(cfg, cache_dir=tmp_path / "cache")
    assert task.train.labels.tolist() == [0, 0, 1]
