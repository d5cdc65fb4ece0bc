"""Optimisers and schedules by name (the names are the ``train.optimizer`` choices)."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable

import torch
from torch import nn

from tether.finetune.training.config import TrainConfig


_Factory = Callable[[Iterable[nn.Parameter], TrainConfig], torch.optim.Optimizer]


def _adam(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, amsgrad=cfg.amsgrad, weight_decay=cfg.weight_decay)


def _sgd(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


OPTIMIZERS: dict[str, _Factory] = {"adam": _adam, "sgd": _sgd}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser over every trainable parameter."""
    return OPTIMIZERS[cfg.optimizer]((p for p in model.parameters() if p.requires_grad), cfg)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Step decay per epoch: ``lr * lr_gamma ** (epoch // lr_step)`` (``lr_step`` 0: constant)."""
    if cfg.lr_step == 0:
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
