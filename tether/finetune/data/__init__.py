"""Data for one fine-tuning run: image folders or the built-in digits task, noise, transforms.

The names below are imported on first use: :class:`DataConfig` alone needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether._lazy import lazy_exports


if TYPE_CHECKING:
    from tether.finetune.data.config import DataConfig as DataConfig
    from tether.finetune.data.digits import digits_source_split as digits_source_split
    from tether.finetune.data.digits import load_digits_task as load_digits_task
    from tether.finetune.data.folder import load_folder as load_folder
    from tether.finetune.data.load import load_task as load_task
    from tether.finetune.data.noise import apply_label_noise as apply_label_noise
    from tether.finetune.data.noise import inject_label_noise as inject_label_noise
    from tether.finetune.data.transforms import BatchTransform as BatchTransform
    from tether.finetune.data.types import Split as Split
    from tether.finetune.data.types import TaskData as TaskData

_EXPORTS = {
    "BatchTransform": "tether.finetune.data.transforms",
    "DataConfig": "tether.finetune.data.config",
    "Split": "tether.finetune.data.types",
    "TaskData": "tether.finetune.data.types",
    "apply_label_noise": "tether.finetune.data.noise",
    "digits_source_split": "tether.finetune.data.digits",
    "inject_label_noise": "tether.finetune.data.noise",
    "load_digits_task": "tether.finetune.data.digits",
    "load_folder": "tether.finetune.data.folder",
    "load_task": "tether.finetune.data.load",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
