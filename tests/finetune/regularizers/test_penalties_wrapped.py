"""The penalties look through DataParallel, DistributedDataParallel and torch.compile, as the
projection does: a penalty built from a wrapped model is the one built from the model inside."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from tests.finetune.conftest import perturb_
from tests.finetune.conftest import tiny_net
from tests.finetune.regularizers.conftest import penalty_context
from tether.finetune.regularizers import DistancePenalty
from tether.finetune.regularizers import PenaltyConfig
from tether.finetune.regularizers import build_penalty
from tether.finetune.regularizers._bss import BatchSpectralShrinkage
from tether.finetune.regularizers._bss import spectral_shrinkage
from tether.finetune.regularizers._delta import DeltaPenalty


Wrap = Callable[[nn.Module], nn.Module]
WRAPPERS = ["DataParallel", "DistributedDataParallel", "compile"]


@pytest.fixture(params=WRAPPERS)
def wrap(request: pytest.FixtureRequest) -> Wrap:
    if request.param == "DistributedDataParallel":
        request.getfixturevalue("process_group")
        return nn.parallel.DistributedDataParallel
    if request.param == "compile":
        return lambda model: torch.compile(model, backend="eager")  # type: ignore[return-value]
    return nn.DataParallel


@pytest.mark.parametrize("name", ["l2-sp", "frob-sp", "mars-sp", "l1-sp"])
@pytest.mark.parametrize("include", ["weights", "all"])
def test_a_distance_penalty_of_a_wrapped_model_is_the_inner_models(
    name: str, include: str, wrap: Wrap, tmp_path: Path
) -> None:
    model = tiny_net()
    cfg = PenaltyConfig(name=name, alpha=0.3, beta=0.07, include=include)  # type: ignore[arg-type]
    bare = build_penalty(cfg, penalty_context(model, tmp_path))
    wrapped = build_penalty(cfg, penalty_context(wrap(model), tmp_path))
    perturb_(model, scale=0.1)
    x = torch.zeros(2, 3, 8, 8)
    value = float(bare(x).detach())
    assert value > 0
    assert float(wrapped(x).detach()) == pytest.approx(value, rel=1e-6)


def test_default_groups_and_names_come_from_the_inner_model(wrap: Wrap) -> None:
    model = resnet18(num_classes=3)
    penalty = DistancePenalty(wrap(model), head="fc", distance="squared", alpha=0.1, beta=0.01)
    assert {t.group for t in penalty.extractor} == {"stem", "layer1", "layer2", "layer3", "layer4"}
    assert [t.name for t in penalty.head] == ["fc.weight"]
    assert penalty.reference.names[0] == "conv1.weight"


def _batch() -> torch.Tensor:
    return torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(4))


def test_bss_reads_the_head_input_through_a_wrapper(wrap: Wrap) -> None:
    model = tiny_net().eval()
    wrapped = wrap(model)
    penalty = BatchSpectralShrinkage(wrapped, head="fc", eta=1.0, k=2)
    x = _batch()
    out = wrapped(x)
    value = penalty(x)
    (out.sum() + value).backward()
    with torch.no_grad():
        features = model.neck(model.body(model.stem(x)).mean((2, 3)))
    torch.testing.assert_close(value.detach(), spectral_shrinkage(features, 2))
    assert model.neck[1].weight.grad is not None


def test_delta_hooks_the_inner_layers_through_a_wrapper(wrap: Wrap) -> None:
    model = tiny_net().eval()
    twin = tiny_net().eval()
    kwargs = {"head": "fc", "alpha": 0.5, "beta": 0.1, "layers": ["body.3"]}
    scores = {"body.3": torch.arange(8.0)}
    wrapped = wrap(model)
    penalties = [
        DeltaPenalty(net, scores=scores, **kwargs)  # type: ignore[arg-type]
        for net in (wrapped, twin)
    ]
    for m in (model, twin):
        perturb_(m, scale=0.1, seed=3)
    x = _batch()
    values = []
    for penalty, net in zip(penalties, (wrapped, twin), strict=True):
        net(x)
        values.append(float(penalty(x).detach()))
    assert values[0] > 0.1 * 0.5 * sum(p.pow(2).sum().item() for p in model.fc.parameters())
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_build_penalty_delta_finds_its_default_layers_in_the_inner_model(tmp_path: Path) -> None:
    model = tiny_net().eval()
    cfg = PenaltyConfig(name="delta", alpha=0.1, beta=0.01, probe_epochs=1, ablation_batches=1)
    penalty = build_penalty(cfg, penalty_context(nn.DataParallel(model), tmp_path))
    assert isinstance(penalty, DeltaPenalty)
    assert penalty.layers == ("body.3",)
    model(_batch())
    assert torch.isfinite(penalty(_batch()))
