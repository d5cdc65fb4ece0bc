"""The one entry point to a run's data: the task a data config describes, noise included."""

from __future__ import annotations

from pathlib import Path

from tether.finetune.data.config import DataConfig
from tether.finetune.data.digits import load_digits_task
from tether.finetune.data.folder import load_folder
from tether.finetune.data.noise import apply_label_noise
from tether.finetune.data.types import TaskData


def load_task(cfg: DataConfig, *, cache_dir: Path) -> TaskData:
    """Load the task ``cfg`` describes, then inject its label noise into the train split.

    Args:
        cfg: the data config.
        cache_dir: the on-disk cache (decoded folder images live under ``images/``).

    Raises:
        ConfigError: (kind ``data``) anything wrong with the data; see :func:`load_folder` and
            :func:`load_digits_task`.

    Example:
        >>> import tempfile
        >>> task = load_task(
        ...     DataConfig(kind="digits", shots=5), cache_dir=Path(tempfile.mkdtemp())
        ... )
        >>> task.train.images.shape
        torch.Size([25, 3, 16, 16])
    """
    task = load_folder(cfg, cache_dir=cache_dir) if cfg.kind == "folder" else load_digits_task(cfg)
    return apply_label_noise(task, kind=cfg.noise, rate=cfg.noise_rate, seed=cfg.seed)
