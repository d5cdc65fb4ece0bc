"""The Lightning callback: a ``fit`` moves the weights as a plain loop with ``attach`` does."""

from __future__ import annotations

import importlib
import sys

from lightning.pytorch import LightningModule
from lightning.pytorch import Trainer
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset
from torchvision.models import ResNet
from torchvision.models import resnet18

from tether.finetune.regularizers import DistanceConstraint
from tether.integrations.lightning import ConstraintCallback


LR = 0.5
STEPS, BATCH = 3, 4


def _network() -> ResNet:
    torch.manual_seed(0)
    return resnet18(num_classes=3)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = STEPS * BATCH
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)


def _constraint(model: nn.Module) -> DistanceConstraint:
    return DistanceConstraint(model, norm="mars", radius=0.05, head_radius=0.5, head="fc")


class _Classifier(LightningModule):
    """A LightningModule holding the network as ``model``, trained by plain SGD."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _network()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer


def _fit(module: _Classifier, callback: ConstraintCallback) -> Trainer:
    trainer = Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(module, DataLoader(TensorDataset(*_data()), batch_size=BATCH, shuffle=False))
    return trainer


def _plain_loop_distances() -> dict[str, float]:
    """Tether's own loop: the same network, batches and SGD, the constraint attached."""
    model = _network()
    constraint = _constraint(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    constraint.attach(optimizer)
    model.train()
    x, y = _data()
    for inputs, labels in zip(x.split(BATCH), y.split(BATCH), strict=True):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return constraint.distances()


def test_a_fit_moves_the_weights_as_the_plain_loop_does() -> None:
    module = _Classifier()
    callback = ConstraintCallback(lambda m: _constraint(m.get_submodule("model")))
    _fit(module, callback)
    distances = callback.constraint.distances()
    radii = callback.constraint.radii  # type: ignore[attr-defined]
    assert list(distances) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert all(d <= radii[g] * (1 + 1e-5) for g, d in distances.items())
    assert any(d == pytest.approx(radii[g], rel=1e-5) for g, d in distances.items()), (
        "a step of rate 0.5 reaches the boundary: the projection acted"
    )
    assert distances == pytest.approx(_plain_loop_distances(), abs=1e-6)


def test_a_ready_constraint_is_detached_when_training_ends() -> None:
    module = _Classifier()
    constraint = _constraint(module.model)
    callback = ConstraintCallback(constraint, log_distances=True)
    trainer = _fit(module, callback)
    assert callback.constraint is constraint
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged == pytest.approx({f"distance/{g}": d for g, d in constraint.distances().items()})
    x, y = _data()
    module.optimizer.zero_grad()
    F.cross_entropy(module.model(x), y).backward()
    module.optimizer.step()
    assert constraint.distances()["head"] > 0.5 * (1 + 1e-3), "no projection after fit"


def test_the_constraint_exists_once_training_starts() -> None:
    callback = ConstraintCallback(lambda m: _constraint(m.get_submodule("model")))
    with pytest.raises(RuntimeError, match="built when training starts"):
        _ = callback.constraint
    with pytest.raises(TypeError, match="BaseProjection or a function"):
        ConstraintCallback(0.05)  # type: ignore[arg-type]


def test_without_lightning_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lightning", "lightning.pytorch", "tether.integrations.lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "tether.integrations.lightning")
    with pytest.raises(ImportError, match=r"install tether\[lightning\]"):
        importlib.import_module("tether.integrations.lightning")
