"""Helpers of the regulariser tests: a penalty's context on a small model, a two-layer net."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
import torch.distributed as dist

from tests.finetune.conftest import TINY_GROUPS
from tether.finetune.layers import LayerGroups
from tether.finetune.regularizers import BasePenalty
from tether.finetune.regularizers import PenaltyContext


def penalty_context(
    model: nn.Module,
    cache_dir: Path,
    *,
    head: str = "fc",
    groups: LayerGroups = TINY_GROUPS,
    source: Any = None,
) -> PenaltyContext:
    """What a penalty is built from, for ``model``: four blank training images."""
    return PenaltyContext(
        model=model,
        head=head,
        groups=groups,
        train_images=torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
        train_labels=torch.zeros(4, dtype=torch.long),
        transform=lambda x: x.float() / 255,
        device=torch.device("cpu"),
        cache_dir=cache_dir,
        cache_key="0" * 16,
        source=source,
    )


def two_linears() -> tuple[nn.Sequential, LayerGroups]:
    """Two bias-free 2x2 linear layers with known weights: ``0`` pretrained, ``1`` the head."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model.get_parameter("0.weight").copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model.get_parameter("1.weight").copy_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    return model, LayerGroups({"extractor": ("0",), "head": ("1",)})


def penalty_value(penalty: BasePenalty) -> float:
    """The penalty's value on a blank batch."""
    return float(penalty(torch.zeros(2, 3, 8, 8)).detach())


@pytest.fixture(scope="module")
def process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-process gloo group, for DistributedDataParallel on the CPU."""
    store = tmp_path_factory.mktemp("dist") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
