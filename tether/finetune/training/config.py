"""The ``train:`` section of a recipe: optimiser, schedule, budget, protocol switches."""

from __future__ import annotations

from dataclasses import dataclass
import math
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

    ``optimizer: spd`` is Adam with selective projection decay (Tian et al., NeurIPS 2024) of
    strength ``spd_lam`` towards the pretrained weights (``spd_anchor: zero``: towards 0, for
    adapters); the new head takes plain Adam.

    LP-FT (Kumar et al., ICLR 2022): ``linear_probe`` first fits the new head as a logistic
    regression on the frozen backbone's features, its inverse regularisation ``C`` chosen on
    the validation split from a path of 50 values (or fixed by ``probe_c``, as a refit must);
    then the whole network is fine-tuned from that head. ``bn_eval`` keeps every layer in
    eval mode while training (BatchNorm statistics frozen), as the LP-FT runs do.

    WiSE-FT (Wortsman et al., CVPR 2022): ``wise`` interpolates the pretrained layers between
    W0 and the fine-tuned weights after training, ``(1 - a) W0 + a W``, the new head kept
    fine-tuned; ``val`` chooses ``a`` in 0, 0.1, .., 1 on the validation split, a number
    fixes it (as a refit must).
    """

    optimizer: Literal["adam", "sgd", "spd"] = "adam"
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
    spd_lam: float = 1.0
    spd_anchor: Literal["pretrained", "zero"] = "pretrained"
    linear_probe: bool = False
    probe_c: float | None = None
    bn_eval: bool = False
    wise: float | Literal["val"] | None = None

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
        self._check_robust()
        if self.refit and self.select != "last":
            raise ConfigError("train.refit trains on train+val, so train.select must be 'last'")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(
                f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )

    def _check_robust(self) -> None:
        if not (self.spd_lam >= 0 and math.isfinite(self.spd_lam)):
            raise ConfigError(f"train.spd_lam must be >= 0, got {self.spd_lam!r}")
        if self.optimizer == "spd" and self.weight_decay:
            raise ConfigError(
                "train.optimizer spd replaces weight decay: set train.weight_decay 0"
            )
        if self.probe_c is not None and not (self.probe_c > 0 and math.isfinite(self.probe_c)):
            raise ConfigError(f"train.probe_c must be > 0, got {self.probe_c!r}")
        if isinstance(self.wise, float) and not 0 <= self.wise <= 1:
            raise ConfigError(f"train.wise must be val or a number in [0, 1], got {self.wise!r}")
        if self.refit and self.wise == "val":
            raise ConfigError(
                "train.wise 'val' chooses on the validation split, which a refit trains on; "
                "give the coefficient (train.wise: 0.5)"
            )
        if self.refit and self.linear_probe and self.probe_c is None:
            raise ConfigError(
                "train.linear_probe chooses C on the validation split, which a refit trains "
                "on; give train.probe_c"
            )
