"""Image folders: the MARS-PGM ``train/ val/ test/`` layout, or one tree split by fractions.

Images are decoded once with PIL, resized (shorter side to ``resize or image_size``, bilinear
with antialiasing), centre-cropped to ``image_size`` and stored as uint8. The decoded tensors are
cached on disk, keyed by the file list with sizes and mtimes, so later epochs, trials and
processes never decode again.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
import os
from pathlib import Path
import sys
import threading
import time

import numpy as np
from PIL import Image
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from tether.errors import ConfigError
from tether.files import atomic_write
from tether.finetune.data.config import DataConfig
from tether.finetune.data.types import Split
from tether.finetune.data.types import TaskData
from tether.jsondata import json_digest


FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
PROGRESS_AFTER = 1.0  # seconds of decoding before progress is shown on stderr


def load_folder(cfg: DataConfig, *, cache_dir: Path, workers: int | None = None) -> TaskData:
    """Load an image folder task, decoding only what the cache does not already hold.

    Two layouts of ``cfg.root``:

    - ``train/ val/ test/``, each one class per subfolder (the MARS-PGM format, Gouk et al.,
      ICLR 2021); all three must be there and hold the same class names.
    - one class-per-subfolder tree, split per class with a seeded permutation
      (``torch.Generator`` seeded with ``cfg.seed``): ``round(test_fraction * n)`` test and
      ``round(val_fraction * n)`` val images (at least one each when the fraction is > 0), the
      rest train.

    Class names are the sorted subfolder names (torchvision's ImageFolder convention); images are
    found recursively by extension (torchvision's ``IMG_EXTENSIONS``, any case); hidden files and
    folders are skipped.

    Args:
        cfg: the data config; ``cfg.root`` must be set.
        cache_dir: where decoded images are cached, under ``images/<sha256>.pt``.
        workers: decoding threads (PIL releases the GIL); default ``min(8, cpu count)``.

    Returns:
        The task; its ``source`` is ``None``.

    Raises:
        ConfigError: (kind ``data``) a missing root, a partial ``train/ val/ test/`` layout,
            classes that differ between splits, an empty class folder, an unreadable image, or a
            class too small for the requested fractions.
    """
    root, split_folders = check_folder(cfg)
    n_workers = workers or min(8, os.cpu_count() or 1)
    if split_folders:
        return _load_split_folders(cfg, root, cache_dir=cache_dir, workers=n_workers)
    return _load_fraction_split(cfg, root, cache_dir=cache_dir, workers=n_workers)


def check_folder(cfg: DataConfig) -> tuple[Path, bool]:
    """The resolved ``data.root`` and whether it has the ``train/ val/ test/`` layout.

    Cheap (no image is opened): a search checks this before it writes anything.

    Raises:
        ConfigError: (kind ``data``) no root, a missing root, or a partial split layout.
    """
    if not cfg.root:
        raise ConfigError("data.root is required when data.kind is 'folder'")
    root = Path(cfg.root).expanduser().resolve()
    if not root.exists():
        raise ConfigError(f"data.root {root} does not exist", kind="data")
    if not root.is_dir():
        raise ConfigError(f"data.root {root} is not a directory", kind="data")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and len(present) < len(SPLITS):
        missing = ", ".join(f"{s}/" for s in SPLITS if s not in present)
        raise ConfigError(
            f"data.root {root} has {', '.join(f'{s}/' for s in present)} but is missing {missing}",
            kind="data",
        )
    return root, bool(present)


def read_image_folder(
    root: str, cfg: DataConfig, *, cache_dir: Path, key: str, workers: int | None = None
) -> tuple[torch.Tensor, str]:
    """Every image under ``root``, whatever the layout, decoded as the task's images are.

    Class subfolders, ``train/ val/ test/`` or a flat folder: images are found recursively
    by extension (hidden files and folders skipped), in sorted order, and labels are not
    read. Decoding (``cfg.image_size``, ``cfg.resize``) and its on-disk cache are those of
    :func:`load_folder`.

    Args:
        root: the folder.
        cfg: the data config (for the decoding settings).
        cache_dir: where decoded images are cached.
        key: the recipe key that named ``root``, for messages (``penalty.fisher_data``).
        workers: decoding threads; default ``min(8, cpu count)``.

    Returns:
        uint8 ``[N, 3, S, S]`` images and a sha256 hex digest of the file list (with sizes
        and mtimes) and the decoding settings.

    Raises:
        ConfigError: (kind ``data``) ``root`` is missing, not a folder, or holds no image.
    """
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(f"{key} {path} {what}", kind="data")
    files = [p.relative_to(path) for p in _images_under(path)]
    if not files:
        raise ConfigError(
            f"{key} {path} holds no images ({' '.join(IMG_EXTENSIONS)})", kind="data"
        )
    return _decoded(
        path, files, cfg, cache_dir=cache_dir, workers=workers or min(8, os.cpu_count() or 1)
    )


def _load_split_folders(cfg: DataConfig, root: Path, *, cache_dir: Path, workers: int) -> TaskData:
    trees = {s: _scan(root, root / s) for s in SPLITS}
    names = {s: set(trees[s][0]) for s in SPLITS}
    everything = set().union(*names.values())
    if any(n != everything for n in names.values()):
        lacks = "; ".join(
            f"{s}/ lacks {', '.join(sorted(everything - names[s]))}"
            for s in SPLITS
            if everything - names[s]
        )
        raise ConfigError(
            f"data.root {root}: class folders differ between splits: {lacks}", kind="data"
        )
    classes = trees["train"][0]
    splits: dict[str, Split] = {}
    keys: list[str] = []
    for s in SPLITS:
        _, files, labels = trees[s]
        images, key = _decoded(root, files, cfg, cache_dir=cache_dir, workers=workers)
        splits[s] = Split(images=images, labels=torch.tensor(labels, dtype=torch.int64))
        keys.append(key)
    fingerprint = json_digest({"version": FORMAT_VERSION, "layout": "splits", "images": keys})
    return TaskData(
        name=root.name,
        classes=classes,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        fingerprint=fingerprint,
    )


def _load_fraction_split(
    cfg: DataConfig, root: Path, *, cache_dir: Path, workers: int
) -> TaskData:
    classes, files, labels = _scan(root, root)
    for c, name in enumerate(classes):  # before decoding anything
        n = labels.count(c)
        if n - _count(cfg.test_fraction, n) - _count(cfg.val_fraction, n) < 1:
            raise ConfigError(
                f"data.root {root}: class {name!r} has only {n} images, too few for "
                f"data.val_fraction={cfg.val_fraction} and data.test_fraction={cfg.test_fraction}",
                kind="data",
            )
    images, key = _decoded(root, files, cfg, cache_dir=cache_dir, workers=workers)
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    generator = torch.Generator().manual_seed(cfg.seed)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in SPLITS}
    for c in range(len(classes)):
        members = torch.nonzero(label_tensor == c).flatten()
        n = members.numel()
        n_test = _count(cfg.test_fraction, n)
        n_val = _count(cfg.val_fraction, n)
        shuffled = members[torch.randperm(n, generator=generator)]
        parts["test"].append(shuffled[:n_test].sort().values)
        parts["val"].append(shuffled[n_test : n_test + n_val].sort().values)
        parts["train"].append(shuffled[n_test + n_val :].sort().values)
    splits = {}
    for s in SPLITS:
        index = torch.cat(parts[s])
        splits[s] = Split(images=images[index].contiguous(), labels=label_tensor[index])
    fingerprint = json_digest(
        {
            "version": FORMAT_VERSION,
            "layout": "fractions",
            "images": key,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "seed": cfg.seed,
        }
    )
    return TaskData(
        name=root.name,
        classes=classes,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        fingerprint=fingerprint,
    )


def _count(fraction: float, n: int) -> int:
    return max(1, round(fraction * n)) if fraction > 0 else 0


def _scan(root: Path, tree: Path) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """The sorted class folders of ``tree`` and their image files (relative to ``root``)."""
    class_dirs = sorted(
        (d for d in tree.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )
    if not class_dirs:
        raise ConfigError(f"data.root: {tree} has no class subfolders", kind="data")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        found = _images_under(class_dir)
        if not found:
            raise ConfigError(
                f"data.root: class folder {class_dir} holds no images "
                f"({' '.join(IMG_EXTENSIONS)})",
                kind="data",
            )
        files.extend(p.relative_to(root) for p in found)
        labels.extend([label] * len(found))
    return tuple(d.name for d in class_dirs), files, labels


def _images_under(folder: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath) / name
            for name in sorted(filenames)
            if not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)
        )
    return found


def _decoded(
    root: Path, files: Sequence[Path], cfg: DataConfig, *, cache_dir: Path, workers: int
) -> tuple[torch.Tensor, str]:
    """The uint8 ``[N, 3, S, S]`` images of ``files``, from the cache or decoded; and the key."""
    listing = []
    for rel in files:
        try:
            stat = (root / rel).stat()
        except OSError as exc:
            raise ConfigError(f"data.root: cannot read {root / rel}: {exc}", kind="data") from exc
        listing.append([rel.as_posix(), stat.st_size, stat.st_mtime_ns])
    key = json_digest(
        {
            "version": FORMAT_VERSION,
            "root": str(root),
            "files": listing,
            "image_size": cfg.image_size,
            "resize": cfg.resize,
        }
    )
    path = Path(cache_dir) / "images" / f"{key}.pt"
    shape = (len(files), 3, cfg.image_size, cfg.image_size)
    cached = _read_cache(path, shape)
    if cached is not None:
        return cached, key
    start = time.perf_counter()
    images = torch.empty(shape, dtype=torch.uint8)
    resize = cfg.resize or cfg.image_size

    def work(i: int) -> None:
        images[i] = _decode_image(root / files[i], resize=resize, size=cfg.image_size)

    # Progress only for a decode that takes a while: a quick one, and above all one that
    # fails on a bad image, leaves stderr to the one line that names the problem.
    announce = threading.Timer(
        PROGRESS_AFTER,
        _log,
        args=(f"decoding {len(files)} images under {root} at {cfg.image_size} px ...",),
    )
    announce.daemon = True
    announce.start()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(len(files))))
    finally:
        announce.cancel()
    _write_cache(path, images)
    seconds = time.perf_counter() - start
    if seconds >= PROGRESS_AFTER:
        _log(f"decoded {len(files)} images in {seconds:.1f} s; cached in {path}")
    return images, key


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _decode_image(path: Path, *, resize: int, size: int) -> torch.Tensor:
    """Decode one image: RGB, shorter side to ``resize`` (bilinear, antialiased), centre crop.

    The resize and crop follow torchvision's ``Resize(resize)`` + ``CenterCrop(size)``: the longer
    side becomes ``int(resize * long / short)``, the crop offset ``round((side - size) / 2)``.
    PIL's bilinear filter widens its support when downscaling, which is the antialiasing.

    Returns:
        uint8 ``[3, size, size]``.
    """
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"data.root: cannot decode image {path}: {reason}", kind="data") from exc
    w, h = rgb.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    if (new_w, new_h) != (w, h):
        rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    rgb = rgb.crop((left, top, left + size, top + size))
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _read_cache(path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: decode again and overwrite it
        print(f"ignoring unreadable image cache {path}: {exc}", file=sys.stderr, flush=True)
        return None
    images = payload.get("images") if isinstance(payload, dict) else None
    if (
        not isinstance(images, torch.Tensor)
        or images.dtype != torch.uint8
        or tuple(images.shape) != shape
    ):
        print(f"ignoring mismatched image cache {path}", file=sys.stderr, flush=True)
        return None
    return images.contiguous()


def _write_cache(path: Path, images: torch.Tensor) -> None:
    payload = {"version": FORMAT_VERSION, "images": images}
    atomic_write(path, lambda handle: torch.save(payload, handle))
