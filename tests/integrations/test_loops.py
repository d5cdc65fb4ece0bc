"""``constraint.attach(optimizer)`` in plain loops: mixed precision, float64, DDP.

A step the GradScaler skips, and a projection after ``.double()``, are tested in
tests/finetune/regularizers/test_constraint_anywhere.py; here a few whole training steps run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import distributed
from torch import nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torchvision.models import ResNet
from torchvision.models import resnet18

from tether.finetune.regularizers import DistanceConstraint


GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def _model() -> ResNet:
    torch.manual_seed(0)
    return resnet18(num_classes=3)


def _batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g).to(dtype), torch.randint(0, 3, (4,), generator=g)


def _constraint(model: nn.Module) -> DistanceConstraint:
    return DistanceConstraint(model, norm="mars", radius=0.05, head_radius=0.5, head="fc")


def _train(
    model: nn.Module, constraint: DistanceConstraint, step: Callable[[torch.optim.Optimizer], None]
) -> None:
    """Three steps of SGD at rate 0.5 (enough to leave the ball), the constraint attached."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    constraint.attach(optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        step(optimizer)


def _inside_and_on_the_boundary(constraint: DistanceConstraint) -> None:
    distances = constraint.distances()
    radii = constraint.radii
    assert all(d <= radii[g] * (1 + 1e-5) for g, d in distances.items())
    assert any(d == pytest.approx(radii[g], rel=1e-5) for g, d in distances.items()), (
        "some group reached its radius: the projection acted"
    )


def test_a_mixed_precision_loop_stays_inside_the_ball() -> None:
    model = _model()
    constraint = _constraint(model)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _batch()

    def step(optimizer: torch.optim.Optimizer) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    _train(model, constraint, step)
    _inside_and_on_the_boundary(constraint)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_loop_in_float64_after_the_constraint_was_built_stays_inside() -> None:
    model = _model()
    constraint = _constraint(model)
    model.to(torch.float64)
    x, y = _batch(torch.float64)

    def step(optimizer: torch.optim.Optimizer) -> None:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    _train(model, constraint, step)
    _inside_and_on_the_boundary(constraint)
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_a_distributed_data_parallel_loop_stays_inside_with_the_inner_names(
    tmp_path: Path,
) -> None:
    distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1
    )
    try:
        ddp = DistributedDataParallel(_model())
        constraint = _constraint(ddp)
        assert list(constraint.radii) == GROUPS
        assert [t.name for t in constraint.targets][-1] == "fc.weight"
        x, y = _batch()

        def step(optimizer: torch.optim.Optimizer) -> None:
            F.cross_entropy(ddp(x), y).backward()
            optimizer.step()

        _train(ddp, constraint, step)
        _inside_and_on_the_boundary(constraint)
    finally:
        distributed.destroy_process_group()
