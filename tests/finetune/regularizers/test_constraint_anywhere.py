"""The constraint in any training loop: attached to an optimiser, following the model, wrapped."""

from __future__ import annotations

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torchvision.models import ResNet
from torchvision.models import VisionTransformer
from torchvision.models import resnet18

from tether.errors import ConfigError
from tether.finetune.regularizers import DistanceConstraint


def _model() -> ResNet:
    torch.manual_seed(0)
    return resnet18(num_classes=3)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)


def _constraint(model: nn.Module) -> DistanceConstraint:
    return DistanceConstraint(model, norm="mars", radius=0.05, head_radius=0.5, head="fc")


def _within(constraint: DistanceConstraint) -> bool:
    return all(d <= constraint.radii[g] * (1 + 1e-5) for g, d in constraint.distances().items())


def test_attach_projects_after_every_step_until_removed() -> None:
    model = _model()
    constraint = _constraint(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    handle = constraint.attach(optimizer)
    x, y = _batch()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        assert _within(constraint)
    handle.remove()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert not _within(constraint), "detached: a step of rate 1 leaves the ball"


def test_a_step_the_grad_scaler_skips_projects_nothing() -> None:
    model = _model()
    constraint = _constraint(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[int] = []
    constraint.project_ = lambda: calls.append(1)  # type: ignore[method-assign]
    constraint.attach(optimizer)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _batch()
    optimizer.zero_grad()
    scaler.scale(F.cross_entropy(model(x), y) * torch.inf).backward()
    scaler.step(optimizer)  # found inf: no optimizer.step(), so no projection
    scaler.update()
    assert calls == []
    optimizer.zero_grad()
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    scaler.step(optimizer)
    assert calls == [1]


def test_w0_follows_the_model_to_another_dtype() -> None:
    model = _model()
    constraint = _constraint(model)
    start = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    model.double()
    pretrained = {g: d for g, d in constraint.distances().items() if g != "head"}
    assert max(pretrained.values()) == 0, "W0 moved along, its values kept (head: from 0)"
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    constraint.project_()
    assert _within(constraint)
    assert next(model.parameters()).dtype == torch.float64
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in model.named_parameters())
    assert moved > 0


@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile], ids=["DataParallel", "compile"])
def test_a_wrapped_model_keeps_its_group_and_head_names(wrap: object) -> None:
    model = _model()
    wrapped = wrap(model)  # type: ignore[operator]
    constraint = _constraint(wrapped)
    assert list(constraint.radii) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    constraint.project_()
    assert constraint.distances()["head"] == pytest.approx(0.5, rel=1e-5)


def test_sharded_parameters_are_refused() -> None:
    model = _model()
    model.fc.weight.ds_id = 7  # how DeepSpeed ZeRO-3 marks a partitioned parameter
    with pytest.raises(ConfigError, match="sharded"):
        _constraint(model)


class _Tagger(nn.Module):
    """An embedding the rules do not cover, an RMSNorm they do, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)  # 60 of 60 + 6 + 42 + 7 = 115 parameters
        self.norm = nn.RMSNorm(6)
        self.fc = nn.Linear(6, 7)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.emb(tokens)).mean(1))


def test_parameters_no_rule_covers_are_named_once_with_their_share() -> None:
    model = _Tagger()
    with pytest.warns(UserWarning, match=r"1 parameter tensor\(s\) free, 52\.2 % .*: emb\.weight"):
        constraint = DistanceConstraint(model, norm="mars", radius=1.0, head_radius=1.0, head="fc")
    assert "norm.weight" in [t.name for t in constraint.targets], "RMSNorm: like LayerNorm"


def test_naming_them_free_silences_the_warning(recwarn: pytest.WarningsRecorder) -> None:
    model = _Tagger()
    DistanceConstraint(model, norm="mars", radius=1.0, head_radius=1.0, head="fc", free=["emb"])
    assert not [w for w in recwarn if "free" in str(w.message)]
    with pytest.raises(ConfigError, match="'embedding'"):
        DistanceConstraint(
            _Tagger(), norm="mars", radius=1.0, head_radius=1.0, head="fc", free=["embedding"]
        )


def test_models_the_rules_cover_raise_no_warning(recwarn: pytest.WarningsRecorder) -> None:
    vit = VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    for model, head in ((_model(), "fc"), (vit, "heads.head")):
        DistanceConstraint(model, norm="mars", radius=1.0, head_radius=1.0, head=head)
    assert not [w for w in recwarn if "free" in str(w.message)]
