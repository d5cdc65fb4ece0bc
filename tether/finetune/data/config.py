"""The data section of a fine-tuning recipe (``data:`` in configs/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Literal

from tether.errors import ConfigError


DATA_KINDS = ("digits", "folder")
NOISE_KINDS = ("none", "symmetric", "pair")
DIGIT_CLASSES = range(10)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, how they are split and prepared, and any label noise.

    Two kinds of task:

    - ``digits``: the built-in offline transfer task made from scikit-learn's handwritten digits
      (:mod:`tether.finetune.data.digits`). A source network is pretrained on ``source_classes``;
      the target task is ``shots`` training and ``val_shots`` validation images per target class,
      every other target image being the test split.
    - ``folder``: an ImageFolder ``root`` with ``train/ val/ test/`` subfolders (the MARS-PGM
      format, Gouk et al., ICLR 2021), or a single class-per-subfolder tree split per class by
      ``val_fraction`` and ``test_fraction`` with ``seed`` (:mod:`tether.finetune.data.folder`).

    Images are stored as uint8 at ``image_size`` x ``image_size``; the float conversion,
    augmentation and normalisation happen per batch (:class:`tether.finetune.data.BatchTransform`).
    Label noise (``symmetric`` or ``pair``) is injected into the train split only.

    Example:
        >>> DataConfig(kind="digits", shots=10, noise="symmetric", noise_rate=0.4).shots
        10
    """

    kind: Literal["digits", "folder"] = "digits"
    root: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int = 16
    resize: int | None = None
    normalize: bool = False
    augment: bool = False
    seed: int = 0
    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    target_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    shots: int = 5
    val_shots: int = 5
    noise: Literal["none", "symmetric", "pair"] = "none"
    noise_rate: float = 0.0

    def __post_init__(self) -> None:
        """Validate every field; the message of each error starts with the dotted key."""
        if self.kind not in DATA_KINDS:
            raise ConfigError(f"data.kind must be one of {_names(DATA_KINDS)}, got {self.kind!r}")
        if self.root is not None and not isinstance(self.root, str):
            raise ConfigError(f"data.root must be a path string, got {self.root!r}")
        if self.kind == "folder" and not self.root:
            raise ConfigError("data.root is required when data.kind is 'folder'")
        _fraction("val_fraction", self.val_fraction)
        _fraction("test_fraction", self.test_fraction)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "data.val_fraction + data.test_fraction must be < 1 to leave training images, "
                f"got {self.val_fraction!r} + {self.test_fraction!r}"
            )
        _integer("image_size", self.image_size, minimum=1)
        if self.resize is not None:
            _integer("resize", self.resize, minimum=1)
            if self.resize < self.image_size:
                raise ConfigError(
                    f"data.resize must be >= data.image_size ({self.image_size}) so that the "
                    f"centre crop fits, got {self.resize}"
                )
        for key in ("normalize", "augment"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"data.{key} must be true or false, got {getattr(self, key)!r}")
        _integer("seed", self.seed, minimum=0)
        self._validate_classes()
        _integer("shots", self.shots, minimum=1)
        _integer("val_shots", self.val_shots, minimum=0)
        if self.noise not in NOISE_KINDS:
            raise ConfigError(
                f"data.noise must be one of {_names(NOISE_KINDS)}, got {self.noise!r}"
            )
        _fraction("noise_rate", self.noise_rate)
        if self.noise == "none" and self.noise_rate > 0:
            raise ConfigError(
                f"data.noise_rate is {self.noise_rate!r} but data.noise is 'none'; "
                "set data.noise to 'symmetric' or 'pair'"
            )

    def _validate_classes(self) -> None:
        for key in ("source_classes", "target_classes"):
            value = getattr(self, key)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, key, value)
            if not isinstance(value, tuple):
                raise ConfigError(f"data.{key} must be a list of digits, got {value!r}")
            for c in value:
                if isinstance(c, bool) or not isinstance(c, int) or c not in DIGIT_CLASSES:
                    raise ConfigError(f"data.{key} must hold digits 0..9, got {c!r}")
            if len(value) < 2:
                raise ConfigError(f"data.{key} needs at least 2 classes, got {list(value)}")
            if len(set(value)) != len(value):
                raise ConfigError(f"data.{key} has repeated classes: {list(value)}")
        overlap = sorted(set(self.source_classes) & set(self.target_classes))
        if overlap:
            raise ConfigError(
                "data.source_classes and data.target_classes must not overlap, "
                f"both hold {overlap}"
            )


def _names(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


def _integer(key: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"data.{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"data.{key} must be >= {minimum}, got {value}")


def _fraction(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"data.{key} must be a number, got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ConfigError(f"data.{key} must be in [0, 1), got {value!r}")
