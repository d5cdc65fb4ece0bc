"""The ``train:`` section of a recipe: optimiser, schedule, budget, protocol switches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tether.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """How one fine-tuning run trains and what it reports.

    The defaults are the MARS-PGM protocol (Gouk et al. 2021): Adam with AMSGrad at 1e-4,
    halved every 20 epochs, 30 epochs, batch 128, last-epoch model, no weight decay (every
    reference implementation turns it off when anchoring to the pretrained weights).

    ``select``: ``last`` (the paper) or ``best-val`` (the epoch with the best validation
    accuracy, as in RSL). ``refit``: train on train+val and report the test accuracy, the
    paper's final protocol (no validation curve then, so ``select`` must be ``last``).
    ``test``: also evaluate the test split at the end (a search turns it off).
    ``amp`` and ``channels_last`` act on CUDA only.

    Noisy labels, RSL (Li & Zhang, NeurIPS 2021; :mod:`tether.finetune.training.relabel`), both off
    by default (epoch 0). ``correct_epoch``: from this (1-based) epoch on, a training label is
    overwritten by the model's prediction when that prediction's probability is above
    ``correct_threshold`` (in (0, 1]); corrections persist across epochs. ``reweight_epoch``:
    from this epoch on, each batch loss is ``sum_i w_i l_i`` with ``w = softmax(-l / T)``,
    where ``T`` starts at ``reweight_temperature`` and decays to half of it. The paper's
    ResNet-18 settings: reweight epoch 5, temperature 2.0, correct epoch 10, threshold 0.9.
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-4
    amsgrad: bool = True
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_step: int = 20
    lr_gamma: float = 0.5
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 256
    select: Literal["last", "best-val"] = "last"
    refit: bool = False
    test: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    correct_epoch: int = 0
    correct_threshold: float = 0.9
    reweight_epoch: int = 0
    reweight_temperature: float = 1.0

    def __post_init__(self) -> None:
        positive = {
            "lr": self.lr,
            "lr_gamma": self.lr_gamma,
            "reweight_temperature": self.reweight_temperature,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"train.{key} must be > 0, got {value!r}")
        at_least_one = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
        }
        for key, number in at_least_one.items():
            if number < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {number!r}")
        if self.lr_step < 0:
            raise ConfigError(
                f"train.lr_step must be >= 0 (0: constant rate), got {self.lr_step!r}"
            )
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"train.momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay!r}")
        rsl_epochs = {"correct_epoch": self.correct_epoch, "reweight_epoch": self.reweight_epoch}
        for key, number in rsl_epochs.items():
            if number < 0:
                raise ConfigError(f"train.{key} must be >= 0 (0: off), got {number!r}")
        if not 0 < self.correct_threshold <= 1:
            raise ConfigError(
                f"train.correct_threshold must be in (0, 1], got {self.correct_threshold!r}"
            )
        if self.refit and self.select != "last":
            raise ConfigError("train.refit trains on train+val, so train.select must be 'last'")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(
                f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )
