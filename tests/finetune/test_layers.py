"""Layer groups: families, coverage of every parameter, longest-prefix lookup, radii."""

from __future__ import annotations

import functools
import math

import pytest
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models import resnet18

from tests.finetune.conftest import TinyNet
from tether.errors import ConfigError
from tether.finetune.layers import HEAD
from tether.finetune.layers import LayerGroups
from tether.finetune.layers import geometric_radii
from tether.finetune.layers import layer_groups
from tether.finetune.layers import parameter_groups
from tether.finetune.layers import register_groups
from tether.finetune.layers import summarize_groups
from tether.finetune.models import BuiltModel
from tether.finetune.models import ModelConfig
from tether.finetune.models import build_model
from tether.finetune.models.digits_cnn import DigitsCNN


@functools.cache
def _built(name: str) -> BuiltModel:
    return build_model(ModelConfig(name=name, weights="none"), num_classes=3, image_size=64)


def _vit(num_layers: int = 8) -> VisionTransformer:
    return VisionTransformer(
        image_size=32, patch_size=16, num_layers=num_layers, num_heads=2, hidden_dim=32,
        mlp_dim=64, num_classes=3,
    )  # fmt: skip


def _assert_every_parameter_is_owned(model: nn.Module, groups: LayerGroups) -> None:
    rows = summarize_groups(model, groups)
    assert [row.name for row in rows] == list(groups.names)  # no "-" row, every group non-empty
    assert all(row.n_tensors > 0 for row in rows)
    assert sum(row.n_params for row in rows) == sum(p.numel() for p in model.parameters())
    by_group = parameter_groups(model, groups)
    assert sum(len(v) for v in by_group.values()) == len(list(model.parameters()))
    for name, _ in model.named_parameters():
        assert groups.group_of(name) is not None, name


def test_resnet18_groups() -> None:
    model = resnet18(num_classes=3)
    groups = layer_groups(model, head="fc")
    assert groups.names == ("stem", "layer1", "layer2", "layer3", "layer4", "head")
    assert groups.extractor == groups.names[:-1]
    assert groups.prefixes["stem"] == ("conv1", "bn1")
    assert groups.prefixes["head"] == ("fc",)
    assert groups.group_of("conv1.weight") == "stem"
    assert groups.group_of("bn1.bias") == "stem"
    assert groups.group_of("layer2.0.downsample.1.weight") == "layer2"
    assert groups.group_of("layer4") == "layer4"
    assert groups.group_of("fc.weight") == HEAD
    assert groups.group_of("avgpool") is None
    assert groups.group_of("layer") is None
    _assert_every_parameter_is_owned(model, groups)
    rows = {row.name: row for row in summarize_groups(model, groups)}
    assert rows["stem"].n_tensors == 3  # conv1.weight, bn1.weight, bn1.bias
    assert rows["head"].n_params == 512 * 3 + 3


@pytest.mark.parametrize(
    ("name", "head", "neck"),
    [
        ("resnet18", "fc", None),
        ("mobilenet_v3_small", "classifier.3", "classifier.0.weight"),
        ("efficientnet_b0", "classifier.1", None),
        ("convnext_tiny", "classifier.2", "classifier.0.weight"),
    ],
)
def test_built_models_have_every_parameter_in_a_group(
    name: str, head: str, neck: str | None
) -> None:
    built = _built(name)
    assert built.head == head
    groups = layer_groups(built.model, head=built.head)
    assert groups.names[-1] == HEAD
    assert groups.prefixes[HEAD] == (head,)
    _assert_every_parameter_is_owned(built.model, groups)
    head_params = parameter_groups(built.model, groups)[HEAD]
    assert [p.shape[0] for p in head_params] == [3, 3]  # the new classifier's weight and bias
    if neck is None:
        assert "neck" not in groups.names
    else:
        assert groups.group_of(neck) == "neck"
    if name != "resnet18":
        n_features = len(list(built.model.get_submodule("features").children()))
        features = [g for g in groups.names if g.startswith("features.")]
        assert features == [f"features.{i}" for i in range(n_features)]


def test_features_groups_use_the_longest_prefix_not_a_string_prefix() -> None:
    model = _built("mobilenet_v3_small").model
    groups = layer_groups(model, head="classifier.3")
    assert groups.group_of("features.10.block.0.0.weight") == "features.10"
    assert groups.group_of("features.1.block.0.0.weight") == "features.1"
    assert groups.group_of("features.12.0.weight") == "features.12"


def test_vit_groups_embed_and_four_bands() -> None:
    model = _vit(8)
    groups = layer_groups(model, head="heads.head")
    assert groups.names == ("embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head")
    assert groups.group_of("class_token") == "embed"
    assert groups.group_of("conv_proj.weight") == "embed"
    assert groups.group_of("encoder.pos_embedding") == "embed"
    for k in range(8):
        layer = f"encoder.layers.encoder_layer_{k}.mlp.0.weight"
        assert groups.group_of(layer) == f"blocks.{k // 2}", k
    assert groups.group_of("encoder.ln.weight") == "blocks.3"
    assert groups.group_of("heads.head.weight") == HEAD
    _assert_every_parameter_is_owned(model, groups)


def test_digits_cnn_and_unknown_families() -> None:
    digits = layer_groups(DigitsCNN(3, widths=(4, 6, 8)), head="fc")
    assert digits.names == ("block1", "block2", "block3", "head")
    _assert_every_parameter_is_owned(DigitsCNN(3, widths=(4, 6, 8)), digits)
    tiny = TinyNet()
    other = layer_groups(tiny, head="fc")
    assert other.names == ("extractor", "head")
    assert other.group_of("stem.0.weight") == "extractor"
    assert other.group_of("fc.weight") == HEAD  # the longer prefix wins over ""
    _assert_every_parameter_is_owned(tiny, other)


def test_group_of_is_longest_prefix_by_dotted_parts() -> None:
    groups = LayerGroups({"a": ("x",), "b": ("x.y",), "head": ("h",)})
    assert groups.group_of("x") == "a"
    assert groups.group_of("x.z.weight") == "a"
    assert groups.group_of("x.y") == "b"
    assert groups.group_of("x.y.z.weight") == "b"
    assert groups.group_of("x.yz.weight") == "a"  # "x.y" is not a prefix of part "yz"
    assert groups.group_of("xy.weight") is None
    assert groups.group_of("h.weight") == HEAD
    assert groups.group_of("hh") is None


def test_summarize_groups_reports_unowned_parameters() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    groups = LayerGroups({"first": ("0",), "head": ("2",)})
    rows = summarize_groups(model, groups)
    assert [(r.name, r.n_tensors, r.n_params) for r in rows] == [
        ("first", 2, 6),
        ("head", 2, 6),
        ("-", 2, 6),
    ]
    assert [len(v) for v in parameter_groups(model, groups).values()] == [2, 2]


def test_layer_groups_validation() -> None:
    with pytest.raises(ValueError, match="'head'"):
        LayerGroups({"a": ("x",), "b": ("y",)})
    with pytest.raises(ValueError, match="'x'"):
        LayerGroups({"a": ("x",), "b": ("x",), "head": ("h",)})
    groups = LayerGroups({"a": ("x",), "head": ("h",)})
    with pytest.raises(ConfigError, match="'b'"):
        groups.check_names(["a", "b"], what="radius")
    with pytest.raises(ConfigError, match="'head'"):
        groups.check_names(["head"], what="radius")
    groups.check_names(["a"], what="radius")


def test_unknown_head_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'classifier'"):
        layer_groups(resnet18(num_classes=3), head="classifier")
    with pytest.raises(ConfigError, match="'heads.fc'"):
        layer_groups(_vit(4), head="heads.fc")


def test_register_groups_refuses_a_duplicate_family() -> None:
    def rule(model: nn.Module) -> dict[str, tuple[str, ...]]:
        return {}

    with pytest.raises(ValueError, match="'resnet'"):
        register_groups("resnet", lambda model: False)(rule)


def test_geometric_radii_values() -> None:
    radii = geometric_radii(["stem", "layer1", "layer2", "layer3"], base=0.5, scale=2.0)
    assert list(radii) == ["stem", "layer1", "layer2", "layer3"]
    assert radii == pytest.approx({"stem": 0.5, "layer1": 1.0, "layer2": 2.0, "layer3": 4.0})
    shrinking = geometric_radii(["a", "b", "c"], base=1.0, scale=0.1)
    assert shrinking == pytest.approx({"a": 1.0, "b": 0.1, "c": 0.01})
    assert geometric_radii(["a", "b"], base=3.0, scale=1.0) == {"a": 3.0, "b": 3.0}
    assert geometric_radii([], base=1.0, scale=2.0) == {}


@pytest.mark.parametrize(
    ("base", "scale", "needle"),
    [(0.0, 2.0, "0.0"), (-1.0, 2.0, "-1.0"), (1.0, 0.0, "scale"), (1.0, math.nan, "nan")],
)
def test_geometric_radii_errors(base: float, scale: float, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        geometric_radii(["a"], base=base, scale=scale)
    assert needle in str(info.value)
