"""The recipe's ``constraint.learn`` for one run: which learner, and what it reports.

:class:`Learner` is the null object of the fixed-radius runs (``learn: none``) and the glue of
the learned ones: the FTP optimiser's options, the TPGM projection with its held-out batches,
the post-hoc TPGM after training, and the learned radii per layer group for the result.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib

import torch
from torch import nn

from tether.finetune.data import Split
from tether.finetune.layers import LayerGroups
from tether.finetune.regularizers._base import BaseProjection
from tether.finetune.regularizers._ftp import FTP
from tether.finetune.regularizers._ftp import FTPOptions
from tether.finetune.regularizers._learned import Constrained
from tether.finetune.regularizers._learned import constrained_tensors
from tether.finetune.regularizers._learned import group_radii
from tether.finetune.regularizers._rowset import Layout
from tether.finetune.regularizers._tpgm import TPGM
from tether.finetune.regularizers._tpgm import Batch
from tether.finetune.regularizers.config import ConstraintConfig


Transform = Callable[[torch.Tensor], torch.Tensor]


def heldout_batches(
    split: Split, *, size: int, transform: Transform, device: torch.device, seed: int
) -> Callable[[], Batch]:
    """Endless held-out batches: shuffled passes over ``split``, ready for the model."""
    generator = torch.Generator().manual_seed(seed)
    pending: list[torch.Tensor] = []

    def next_batch() -> Batch:
        if not pending:
            pending.extend(torch.randperm(len(split), generator=generator).split(size))
        index = pending.pop(0)
        return transform(split.images[index].to(device)), split.labels[index].to(device)

    return next_batch


class Learner:
    """What ``constraint.learn`` adds to a run (nothing for ``none``)."""

    def __init__(
        self,
        cfg: ConstraintConfig,
        tensors: list[Constrained],
        tpgm: TPGM | None = None,
    ) -> None:
        self.cfg = cfg
        self.tensors = tensors
        self.tpgm = tpgm
        self.ftp: FTP | None = None

    @classmethod
    def build(
        cls,
        cfg: ConstraintConfig,
        model: nn.Module,
        *,
        head: str,
        groups: LayerGroups,
        device: torch.device,
        heldout: Split | None,
        transform: Transform,
        seed: int,
        autocast: Callable[[], contextlib.AbstractContextManager[object]] = (
            contextlib.nullcontext
        ),
    ) -> Learner:
        """The learner of ``cfg`` for ``model`` (its current weights are W0)."""
        if not cfg.learned:
            return cls(cfg, [])
        tensors = constrained_tensors(model, groups, head=head, convention=cfg.tensors)
        tpgm = None
        if cfg.needs_holdout:
            assert heldout is not None, "TPGM needs a held-out split"
            tpgm = TPGM(
                model, [(t.param, t.layout) for t in tensors],
                heldout=heldout_batches(heldout, size=cfg.holdout_batch, transform=transform,
                                        device=device, seed=seed),
                norm=cfg.norm if cfg.norm != "none" else "mars", every=cfg.proj_freq,
                iters=cfg.iters, radius_lr=cfg.radius_lr, init=cfg.init, autocast=autocast,
                multipliers=[t.multiplier for t in tensors],
            )  # fmt: skip
        return cls(cfg, tensors, tpgm)

    @property
    def projection(self) -> BaseProjection | None:
        """The projection the training loop applies (TPGM during training), if any."""
        return self.tpgm if self.cfg.learn == "tpgm" else None

    def ftp_options(self) -> FTPOptions | None:
        """The FTP optimiser's options (``None`` unless FTP learns the radii)."""
        if self.cfg.learn != "ftp":
            return None
        pairs: list[tuple[torch.Tensor, Layout]] = [(t.param, t.layout) for t in self.tensors]
        return FTPOptions(
            pairs, k=self.cfg.k, radius_lr=self.cfg.radius_lr,
            multipliers=[t.multiplier for t in self.tensors],
        )  # fmt: skip

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep the FTP optimiser (to read its radii at the end)."""
        if isinstance(optimizer, FTP):
            self.ftp = optimizer

    def finish(self) -> None:
        """After training: the post-hoc TPGM's radius updates and projection."""
        if self.cfg.learn == "tpgm-posthoc" and self.tpgm is not None:
            self.tpgm.fit(self.cfg.posthoc_iters)

    def radii(self) -> dict[str, dict[str, float]] | None:
        """The learned radii per layer group (:func:`group_radii`), or ``None``."""
        source = self.ftp if self.ftp is not None else self.tpgm
        if source is None or source.radii is None:
            return None
        groups = [t.group for t in self.tensors]
        return group_radii(source.rows, source.radii, groups)

    def describe(self) -> str | None:
        """One line for the start event (``None`` for fixed radii)."""
        if not self.cfg.learned:
            return None
        c = self.cfg
        knobs = (
            f"k={c.k:g}" if c.learn == "ftp"
            else f"proj_freq={c.proj_freq}, holdout={c.holdout:g}, init={c.init}"
        )  # fmt: skip
        return (
            f"{c.learn.upper()}(norm={c.norm}, tensors={c.tensors}, {len(self.tensors)} tensors,"
            f" radius_lr={c.radius_lr:g}, {knobs})"
        )
