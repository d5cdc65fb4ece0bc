"""Optimisers and schedules by name (the names are the ``train.optimizer`` choices).

``adam`` and ``sgd`` are PyTorch's; ``spd`` is Adam with selective projection decay
(:class:`~tether.finetune.regularizers._spd.SPD`). A run whose radii FTP learns gets the FTP
optimiser around ``adam`` or ``sgd`` (:class:`~tether.finetune.regularizers._ftp.FTP`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tether.finetune.regularizers._ftp import FTP
from tether.finetune.regularizers._ftp import BaseName
from tether.finetune.regularizers._ftp import FTPOptions
from tether.finetune.regularizers._spd import SPD
from tether.finetune.training.config import TrainConfig


def base_options(cfg: TrainConfig) -> dict[str, Any]:
    """The keyword arguments of ``cfg.optimizer``'s PyTorch optimiser (Adam for ``spd``)."""
    if cfg.optimizer == "sgd":
        return {
            "momentum": cfg.momentum,
            "nesterov": cfg.nesterov and cfg.momentum > 0,
            "weight_decay": cfg.weight_decay,
        }
    return {"amsgrad": cfg.amsgrad, "weight_decay": cfg.weight_decay}


def build_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    *,
    head: Sequence[nn.Parameter] = (),
    ftp: FTPOptions | None = None,
) -> torch.optim.Optimizer:
    """The recipe's optimiser over every trainable parameter.

    Args:
        head: the new head's parameters: SPD gives them the plain Adam step.
        ftp: set when FTP learns the radii: the FTP optimiser around adam or sgd.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    options = base_options(cfg)
    if ftp is not None:
        base: BaseName = "sgd" if cfg.optimizer == "sgd" else "adam"
        return FTP(params, base, lr=cfg.lr, **ftp.__dict__, **options)
    if cfg.optimizer == "spd":
        options.pop("weight_decay")
        return SPD(
            params, lr=cfg.lr, lam=cfg.spd_lam, exclude=head, anchor=cfg.spd_anchor, **options
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, **options)
    return torch.optim.Adam(params, lr=cfg.lr, **options)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Step decay per epoch: ``lr * lr_gamma ** (epoch // lr_step)`` (``lr_step`` 0: constant)."""
    if cfg.lr_step == 0:
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
