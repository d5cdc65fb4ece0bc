"""Where trials run: device slots, one thread and one trial process each at a time."""

from __future__ import annotations

from dataclasses import dataclass

from tether.errors import ConfigError


@dataclass(frozen=True)
class Slot:
    """A place a trial can run: a device and the number of this slot on it."""

    device: str  # "cpu" or a CUDA index "0", "1", ...
    index: int

    @property
    def name(self) -> str:
        return "cpu" if self.device == "cpu" else f"cuda:{self.device}"

    @property
    def visible_devices(self) -> str:
        """``CUDA_VISIBLE_DEVICES`` for the trial: nothing for the CPU, one GPU otherwise."""
        return "" if self.device == "cpu" else self.device


def parse_devices(devices: str, trials_per_device: int) -> list[Slot]:
    """The slots of ``--devices`` (``auto``: every visible GPU, else the CPU; ``cpu``; or GPU
    indices ``0,1``) with ``--trials-per-device`` slots on each.

    Example:
        >>> [s.name for s in parse_devices("0,1", 2)]
        ['cuda:0', 'cuda:0', 'cuda:1', 'cuda:1']
    """
    if trials_per_device < 1:
        raise ConfigError(f"--trials-per-device must be >= 1, got {trials_per_device}")
    if devices == "auto":
        import torch  # only ``auto`` asks CUDA how many GPUs there are

        count = torch.cuda.device_count()
        names = [str(i) for i in range(count)] or ["cpu"]
    elif devices == "cpu":
        names = ["cpu"]
    else:
        names = [d.strip() for d in devices.split(",") if d.strip()]
        if not names or not all(n.isdigit() for n in names):
            raise ConfigError(
                f"--devices must be auto, cpu or GPU indices like 0,1; got {devices!r}"
            )
    return [Slot(name, k) for name in names for k in range(trials_per_device)]
