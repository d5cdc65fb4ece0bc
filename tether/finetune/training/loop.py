"""The training loop: one epoch of projected (or penalised) gradient steps, and evaluation.

Per batch, the same for every method (null objects keep it free of branches)::

    logits = model(x)
    correction.correct_(labels, index, logits)  # RSL label correction; a no-op when off
    loss = reweighting.loss(logits, labels[index]) + penalty(x)  # the mean CE when off
    loss.backward()
    optimizer.step()
    constraint.project_()
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
from dataclasses import dataclass
import time

import torch
from torch import nn
import torch.nn.functional as F

from tether.finetune.data import Split
from tether.finetune.regularizers import BasePenalty
from tether.finetune.regularizers import BaseProjection
from tether.finetune.training.config import TrainConfig
from tether.finetune.training.optim import build_optimizer
from tether.finetune.training.optim import build_scheduler
from tether.finetune.training.relabel import LabelCorrection
from tether.finetune.training.relabel import Reweighting


Transform = Callable[[torch.Tensor], torch.Tensor]


class Stopped(Exception):
    """The run was asked to stop (SIGTERM, a pruner); raised between two batches."""


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did: the payload of a worker's ``epoch`` event.

    ``corrected``: how many stored training labels differ from the given ones at the end of
    the epoch (``None`` without label correction). ``temperature``: the reweighting
    temperature of the epoch (``None`` when the epoch does not reweight).
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    corrected: int | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float


@dataclass(frozen=True)
class Device:
    """The training device and what it allows (mixed precision, channels-last)."""

    device: torch.device
    amp_dtype: torch.dtype | None

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> Device:
        name = cfg.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            from tether.errors import ConfigError

            raise ConfigError(f"train.device is {cfg.device!r} but CUDA is not available here")
        amp = None
        if device.type == "cuda" and cfg.amp:
            amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, amp)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def batches(n: int, batch_size: int, *, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches over ``n`` samples, shuffled if a generator is given.

    A last batch of a single sample is dropped when training (BatchNorm cannot normalise it).
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    out = list(order.split(batch_size))
    if generator is not None and len(out) > 1 and len(out[-1]) == 1:
        out.pop()
    return out


def _to_device(tensor: torch.Tensor, device: Device) -> torch.Tensor:
    if device.device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device.device, non_blocking=True)


def _load(split: Split, index: torch.Tensor, device: Device) -> tuple[torch.Tensor, torch.Tensor]:
    return _to_device(split.images[index], device), _to_device(split.labels[index], device)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, *, transform: Transform, device: Device, batch_size: int
) -> Evaluation:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` (eval mode)."""
    model.eval()
    loss = torch.zeros((), device=device.device, dtype=torch.float64)
    correct = torch.zeros((), device=device.device, dtype=torch.long)
    for index in batches(len(split), batch_size, generator=None):
        images, labels = _load(split, index, device)
        with device.autocast():
            logits = model(transform(images))
        loss += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += (logits.argmax(dim=1) == labels).sum()
    n = max(len(split), 1)
    return Evaluation(float(loss) / n, float(correct) / n)


class Trainer:
    """Fine-tunes ``model`` with one projection and one penalty, epoch by epoch.

    The training labels are a copy of the split's, kept on ``device`` for the split trained on
    last; RSL label correction (``cfg.correct_epoch``) changes that copy in place, and the
    split itself is never modified (see :attr:`labels`).

    Args:
        model: the network, already on ``device``.
        cfg: the ``train:`` section.
        device: where to train.
        constraint: applied after every optimiser step.
        penalty: added to every batch loss.
        train_transform: uint8 batch -> input, with augmentation.
        eval_transform: uint8 batch -> input, without.
        should_stop: polled between batches; when it returns true the run raises
            :class:`Stopped`.
        optimizer: the optimiser (default: :func:`build_optimizer` of ``cfg``).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        *,
        device: Device,
        constraint: BaseProjection,
        penalty: BasePenalty,
        train_transform: Transform,
        eval_transform: Transform,
        should_stop: Callable[[], bool] = lambda: False,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.device = device
        self.constraint = constraint
        self.penalty = penalty
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.should_stop = should_stop
        self.optimizer = optimizer if optimizer is not None else build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(
            device.device.type, enabled=device.amp_dtype == torch.float16
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.correction = LabelCorrection(cfg.correct_epoch, cfg.correct_threshold)
        self.reweighting = Reweighting(cfg.reweight_epoch, cfg.reweight_temperature)
        self._split: Split | None = None
        self._labels: torch.Tensor | None = None

    @property
    def labels(self) -> torch.Tensor:
        """The training labels of the split trained on last, by dataset index, on the device.

        They equal the split's labels unless label correction changed some.

        Raises:
            RuntimeError: nothing was trained yet.
        """
        if self._labels is None:
            raise RuntimeError("Trainer.labels: no split has been trained on yet")
        return self._labels

    def _labels_of(self, split: Split) -> torch.Tensor:
        if self._split is not split or self._labels is None:
            self._split = split
            self._labels = split.labels.to(self.device.device, copy=True)
        return self._labels

    def train_epoch(self, split: Split, *, epoch: int) -> tuple[float, float]:
        """One pass over ``split`` as epoch ``epoch`` (1-based).

        Returns:
            The mean training loss, and the accuracy against the (possibly corrected) labels.
        """
        self.model.train(not self.cfg.bn_eval)
        stored = self._labels_of(split)
        total = torch.zeros((), device=self.device.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device.device, dtype=torch.long)
        seen = 0
        for index in batches(len(split), self.cfg.batch_size, generator=self.generator):
            if self.should_stop():
                raise Stopped
            inputs = self.train_transform(_to_device(split.images[index], self.device))
            index = index.to(self.device.device)
            with self.device.autocast():
                logits = self.model(inputs)
                self.correction.correct_(stored, index, logits.detach(), epoch=epoch)
                labels = stored[index]
                fit_loss = self.reweighting.loss(logits.float(), labels, epoch=epoch)
                loss = fit_loss + self.penalty(inputs)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.constraint.project_()
            total += loss.detach().double() * len(index)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += len(index)
        return float(total) / max(seen, 1), float(correct) / max(seen, 1)

    def fit(
        self, train: Split, val: Split | None, *, on_epoch: Callable[[EpochStats], None]
    ) -> int:
        """Train for ``cfg.epochs``; with ``select="best-val"`` restore the best epoch.

        Returns:
            The selected epoch (1-based).
        """
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        for epoch in range(1, self.cfg.epochs + 1):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_accuracy = self.train_epoch(train, epoch=epoch)
            self.scheduler.step()
            result = None
            if val is not None and len(val):
                result = evaluate(
                    self.model,
                    val,
                    transform=self.eval_transform,
                    device=self.device,
                    batch_size=self.cfg.eval_batch_size,
                )
                if self.cfg.select == "best-val" and (best is None or result.accuracy > best[0]):
                    best = (result.accuracy, epoch, _snapshot(self.model))
            on_epoch(
                EpochStats(
                    epoch=epoch,
                    train_loss=train_loss,
                    train_accuracy=train_accuracy,
                    val_loss=None if result is None else result.loss,
                    val_accuracy=None if result is None else result.accuracy,
                    lr=lr,
                    seconds=time.perf_counter() - start,
                    corrected=self.correction.changed(self.labels, train.labels),
                    temperature=self.reweighting.temperature_at(epoch),
                )
            )
        if best is None:
            return self.cfg.epochs
        self.model.load_state_dict(best[2])
        return best[1]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
