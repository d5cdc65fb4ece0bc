"""DELTA: default layers, channel weights (probe + ablation + cache) and the penalty."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torchvision.models import VisionTransformer
from torchvision.models import resnet18
from torchvision.models import resnet50
from torchvision.models import resnet101

from tether.errors import ConfigError
from tether.finetune.layers import layer_groups
from tether.finetune.regularizers._context import PenaltyContext
from tether.finetune.regularizers._delta import DeltaPenalty
from tether.finetune.regularizers._delta import build_delta
from tether.finetune.regularizers._delta import default_delta_layers
from tether.finetune.regularizers._delta import delta_attention
from tether.finetune.regularizers._delta_scores import _ablation_scores
from tether.finetune.regularizers._delta_scores import delta_channel_weights


class TinyNet(nn.Module):
    """Three convs (the last with a bias, no BN after it), global pooling and an ``fc`` head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


class SignalNet(nn.Module):
    """Channel 0 of ``conv1`` copies the (centred) red plane; channels 1-3 are always zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[0, 0] = 10.0
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv1(x).mean((2, 3)))


def _context(
    model: nn.Module,
    cache_dir: Path,
    *,
    n: int = 24,
    size: int = 8,
    classes: int = 3,
    seed: int = 0,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    transform: Any = None,
) -> PenaltyContext:
    gen = torch.Generator().manual_seed(1234)
    if images is None:
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    if labels is None:
        labels = torch.randint(0, classes, (len(images),), generator=gen)
    return PenaltyContext(
        model=model,
        head="fc",
        groups=layer_groups(model, head="fc"),
        train_images=images,
        train_labels=labels,
        transform=transform or (lambda x: x.float() / 255),
        device=torch.device("cpu"),
        cache_dir=cache_dir,
        cache_key="test-network-and-data",
        seed=seed,
    )


def _inputs(batch: int = 5, size: int = 8) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(7))


def _penalty(model: nn.Module, *, alpha: float = 1.0, beta: float = 0.0) -> DeltaPenalty:
    scores = {"conv2": torch.linspace(0, 1, 6), "conv3": torch.randn(8)}
    return DeltaPenalty(
        model, head="fc", alpha=alpha, beta=beta, layers=["conv2", "conv3"], scores=scores
    )


# --------------------------------------------------------------------------- default layers


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (resnet18, ("layer1.1.conv2", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2")),
        (resnet50, ("layer1.2.conv3", "layer2.3.conv3", "layer3.5.conv3", "layer4.2.conv3")),
        (resnet101, ("layer1.2.conv3", "layer2.3.conv3", "layer3.22.conv3", "layer4.2.conv3")),
    ],
)
def test_default_layers_are_the_last_conv_of_each_stage(build: Any, expected: tuple[str]) -> None:
    model = build(weights=None)
    assert default_delta_layers(model, layer_groups(model, head="fc")) == expected


def test_default_layers_of_a_single_group_model_is_its_last_conv() -> None:
    model = TinyNet()
    assert default_delta_layers(model, layer_groups(model, head="fc")) == ("conv3",)


def test_default_layers_without_convs_asks_for_penalty_layers() -> None:
    vit = VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    with pytest.raises(ConfigError, match="penalty.layers"):
        default_delta_layers(vit, layer_groups(vit, head="heads.head"))


# --------------------------------------------------------------------------- the penalty


def test_feature_term_is_zero_at_w0_with_finite_gradients() -> None:
    model = TinyNet().eval()  # BN in train mode would differ from the eval-mode source
    penalty = _penalty(model)
    x = _inputs()
    model(x)
    value = penalty(x)
    assert value.item() == 0.0
    value.backward()
    for param in model.parameters():
        assert param.grad is None or torch.isfinite(param.grad).all()


def test_moving_an_earlier_conv_makes_the_penalty_positive() -> None:
    model = TinyNet().eval()
    penalty = _penalty(model)
    with torch.no_grad():
        model.conv1.weight.add_(0.3 * torch.randn_like(model.conv1.weight))
    x = _inputs()
    model(x)
    value = penalty(x)
    assert value.item() > 0
    value.backward()
    grad = model.conv1.weight.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_feature_term_matches_the_original_formula() -> None:
    model = TinyNet().eval()
    source = copy.deepcopy(model)
    scores = {"conv2": torch.randn(6), "conv3": torch.randn(8)}
    penalty = DeltaPenalty(
        model, head="fc", alpha=0.7, beta=0.0, layers=["conv2", "conv3"], scores=scores
    )
    with torch.no_grad():
        model.conv2.weight.mul_(1.5)
    x = _inputs()
    feats: dict[str, torch.Tensor] = {}
    for net, tag in ((model, "t"), (source, "s")):
        for name in ("conv2", "conv3"):
            net.get_submodule(name).register_forward_hook(
                lambda _m, _a, out, key=f"{tag}.{name}": feats.__setitem__(key, out.detach())
            )
    model(x)
    source(x)
    expected = 0.0
    for name in ("conv2", "conv3"):
        t, s = feats[f"t.{name}"], feats[f"s.{name}"]
        b, c, h, w = t.shape
        z = (scores[name] - scores[name].mean()) / scores[name].std(correction=0)
        weights = torch.softmax(z / 5, dim=0)
        for i in range(b):
            for j in range(c):
                dist = torch.linalg.vector_norm(t[i, j] - s[i, j]) ** 2
                expected += 0.5 * c * weights[j].item() * dist.item() / (h * w)
    assert penalty(x).item() == pytest.approx(0.7 * expected, rel=1e-5)


def test_beta_term_is_half_the_squared_head_norm() -> None:
    model = TinyNet().eval()
    penalty = _penalty(model, alpha=0.5, beta=0.3)
    x = _inputs()
    model(x)
    head = 0.5 * (model.fc.weight.pow(2).sum() + model.fc.bias.pow(2).sum())
    torch.testing.assert_close(penalty(x), 0.3 * head.detach())


def test_alpha_zero_needs_no_scores_and_no_forward() -> None:
    model = TinyNet()
    penalty = DeltaPenalty(model, head="fc", alpha=0.0, beta=2.0, layers=["conv3"], scores={})
    head = 0.5 * (model.fc.weight.pow(2).sum() + model.fc.bias.pow(2).sum())
    torch.testing.assert_close(penalty(_inputs()), 2.0 * head.detach())


def test_penalty_before_forward_or_after_remove_raises() -> None:
    model = TinyNet().eval()
    penalty = _penalty(model)
    x = _inputs()
    with pytest.raises(RuntimeError, match="model\\(inputs\\) before"):
        penalty(x)
    model(x)
    penalty(x)
    with pytest.raises(RuntimeError, match="model\\(inputs\\) before"):
        penalty(x)  # each forward's features are used once
    penalty.remove()
    model(x)
    with pytest.raises(RuntimeError, match="model\\(inputs\\) before"):
        penalty(x)


def test_source_is_frozen_at_construction() -> None:
    model = TinyNet().eval()
    penalty = _penalty(model)
    x = _inputs()
    bias = model.conv3.bias
    assert bias is not None
    with torch.no_grad():
        bias.add_(1.0)
    model(x)
    first = penalty(x).item()
    assert first > 0
    model(x)
    assert penalty(x).item() == pytest.approx(first)  # the source did not follow the model


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=40))
def test_attention_weights_sum_to_one_and_follow_the_scores(values: list[float]) -> None:
    scores = torch.tensor(values, dtype=torch.float64)
    weights = delta_attention(scores)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (weights > 0).all()
    order = torch.argsort(scores, stable=True)
    assert (weights[order].diff() >= -1e-7).all()


def test_attention_weights_are_the_tempered_softmax_of_z_scores() -> None:
    scores = torch.tensor([0.1, -0.2, 0.5, 0.0])
    z = (scores - scores.mean()) / scores.std(correction=0)
    torch.testing.assert_close(delta_attention(scores), torch.softmax(z / 5, dim=0))
    torch.testing.assert_close(delta_attention(torch.full((4,), 3.0)), torch.full((4,), 0.25))


# --------------------------------------------------------------------------- channel weights


def test_hooked_ablation_equals_zeroing_each_filter() -> None:
    model = TinyNet().eval()
    bias = model.conv3.bias
    assert bias is not None
    with torch.no_grad():
        bias.normal_()
    x, y = _inputs(4), torch.tensor([0, 1, 2, 0])
    scores = _ablation_scores(
        model, [(x, y)], channels={"conv3": 8, "conv2": 6}, max_images=12
    )  # k = 3 copies per forward: chunks of 3, 3, 2 channels
    with torch.no_grad():
        loss0 = F.cross_entropy(model(x), y)
        for name, n in (("conv3", 8), ("conv2", 6)):
            layer = model.get_submodule(name)
            assert isinstance(layer, nn.Conv2d)
            weight = layer.weight
            for j in range(n):
                saved = weight[j].clone()
                weight[j] = 0
                expected = F.cross_entropy(model(x), y) - loss0
                weight[j] = saved
                assert scores[name][j].item() == pytest.approx(expected.item(), abs=1e-5)


def test_the_channel_that_carries_the_signal_scores_highest(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    red = torch.randint(0, 256, (64,), generator=gen, dtype=torch.uint8)
    images = torch.randint(0, 256, (64, 3, 4, 4), generator=gen, dtype=torch.uint8)
    images[:, 0] = red.view(-1, 1, 1)
    labels = (red >= 128).long()
    ctx = _context(
        SignalNet(), tmp_path, images=images, labels=labels, transform=lambda x: x / 255 - 0.5
    )
    scores = delta_channel_weights(
        ctx, layers=["conv1"], probe_epochs=10, ablation_batches=2, batch_size=16
    )["conv1"]
    assert scores[0] > 0.01
    assert scores[1:].abs().max() < 1e-5
    weights = delta_attention(scores)
    assert weights[0] > weights[1:].max()


def test_channel_weights_leave_the_model_untouched(tmp_path: Path) -> None:
    model = TinyNet().train()
    before = copy.deepcopy(model.state_dict())
    scores = delta_channel_weights(
        _context(model, tmp_path), layers=["conv2", "conv3"], probe_epochs=2, batch_size=8
    )
    assert {k: v.shape for k, v in scores.items()} == {
        "conv2": torch.Size([6]),
        "conv3": torch.Size([8]),
    }
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_channel_weights_are_cached_and_keyed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = TinyNet()
    kwargs: dict[str, Any] = {"probe_epochs": 1, "ablation_batches": 2, "batch_size": 8}
    first = delta_channel_weights(_context(model, tmp_path), layers=["conv3"], **kwargs)
    assert "computing channel weights for 1 layers (8 channels)" in capsys.readouterr().err
    files = list((tmp_path / "delta").glob("*.json"))
    assert len(files) == 1

    def no_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the cached channel weights were recomputed")

    with monkeypatch.context() as patch:
        patch.setattr(TinyNet, "forward", no_forward)
        again = delta_channel_weights(_context(model, tmp_path), layers=["conv3"], **kwargs)
    assert "reusing cached channel weights" in capsys.readouterr().err
    torch.testing.assert_close(again, first)

    delta_channel_weights(_context(model, tmp_path, seed=1), layers=["conv3"], **kwargs)
    delta_channel_weights(_context(model, tmp_path), layers=["conv2", "conv3"], **kwargs)
    assert len(list((tmp_path / "delta").glob("*.json"))) == 3
    assert not list((tmp_path / "delta").glob("*.tmp"))


def test_build_delta_uses_the_default_layers(tmp_path: Path) -> None:
    model = TinyNet().eval()
    penalty = build_delta(
        _context(model, tmp_path), alpha=0.1, beta=0.01, probe_epochs=1, ablation_batches=1
    )
    assert penalty.layers == ("conv3",)
    assert penalty.weights["conv3"].sum().item() == pytest.approx(1.0)
    x = _inputs()
    model(x)
    assert torch.isfinite(penalty(x))


# --------------------------------------------------------------------------- bad input


def test_unknown_layer_is_a_config_error_listing_conv_layers(tmp_path: Path) -> None:
    model = TinyNet()
    with pytest.raises(ConfigError, match="'layer9'.*conv1, conv2, conv3"):
        _penalty_with(model, layers=["layer9"])
    with pytest.raises(ConfigError, match="'layer9'"):
        build_delta(_context(model, tmp_path), alpha=0.1, beta=0.1, layers=["layer9"])
    assert not (tmp_path / "delta").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -0.1}, "penalty.alpha"),
        ({"beta": -1.0}, "penalty.beta"),
        ({"alpha": float("nan")}, "penalty.alpha"),
        ({"layers": []}, "penalty.layers"),
        ({"layers": ["conv3", "conv3"]}, "more than once"),
        ({"scores": {"conv3": torch.zeros(5)}}, "5 channel scores"),
    ],
)
def test_bad_penalty_arguments_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _penalty_with(TinyNet(), **kwargs)


def test_bad_probe_settings_are_config_errors(tmp_path: Path) -> None:
    ctx = _context(TinyNet(), tmp_path)
    with pytest.raises(ConfigError, match="penalty.probe_epochs"):
        delta_channel_weights(ctx, layers=["conv3"], probe_epochs=-1)
    with pytest.raises(ConfigError, match="penalty.ablation_batches"):
        delta_channel_weights(ctx, layers=["conv3"], ablation_batches=0)


def _penalty_with(model: nn.Module, **kwargs: Any) -> DeltaPenalty:
    args: dict[str, Any] = {
        "head": "fc",
        "alpha": 0.1,
        "beta": 0.1,
        "layers": ["conv3"],
        "scores": {"conv3": torch.zeros(8)},
        **kwargs,
    }
    return DeltaPenalty(model, **args)
