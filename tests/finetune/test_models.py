"""Tests for tether.finetune.models: names and weights, head adapters, checkpoints, downloads.

Nothing here touches the network: pretrained weights are faked by patching the weights enum's
``get_state_dict``, which is what torchvision calls to download them.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from pathlib import Path
import pickle
import typing
from typing import Any
import urllib.error

import pytest
import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models import resnet18

from tests.finetune.conftest import config_error
from tether.finetune.models import HEADS
from tether.finetune.models import BuiltModel
from tether.finetune.models import HeadAdapter
from tether.finetune.models import LocalModel
from tether.finetune.models import ModelConfig
from tether.finetune.models import build_model
from tether.finetune.models import list_head_families
from tether.finetune.models import list_models
from tether.finetune.models import register_head_adapter
from tether.finetune.models import register_local_model
from tether.finetune.models import weights_choices
from tether.finetune.models.digits_cnn import DigitsCNN
from tether.finetune.models.heads import head_adapter
from tether.finetune.models.zoo import check_model
from tether.finetune.models.zoo import create_model
from tether.finetune.models.zoo import model_class


# One small model per head family, with a working resolution it accepts. A new family must add
# an entry (test_every_family_is_tested), and is then tested by every parametrised test below.
FAMILY_MODELS: dict[str, tuple[str, int]] = {
    "convnext": ("convnext_tiny", 64),
    "digits-cnn": ("digits-cnn", 16),
    "efficientnet": ("efficientnet_b0", 64),
    "mobilenet_v3": ("mobilenet_v3_small", 64),
    "resnet": ("resnet18", 64),
    "vit": ("vit_b_16", 224),
}
FLATTEN_FAMILIES = [f for f in FAMILY_MODELS if f != "vit"]


def _build(name: str, image_size: int, head: str = "gap", **kwargs: Any) -> BuiltModel:
    cfg = ModelConfig(name=name, weights="none", head=head)  # type: ignore[arg-type]
    return build_model(cfg, num_classes=7, image_size=image_size, **kwargs)


def _feature_map_shape(name: str, image_size: int) -> tuple[int, ...]:
    """[C, h, w] entering the global pooling of an untouched model."""
    model, _ = create_model(name, "none")
    pool = head_adapter(type(model), name=name).pool
    assert pool is not None
    shapes: list[tuple[int, ...]] = []
    model.get_submodule(pool).register_forward_pre_hook(
        lambda _m, args: shapes.append(tuple(args[0].shape[1:]))
    )
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return shapes[0]


# --- head families ------------------------------------------------------------------------


def test_every_family_is_tested() -> None:
    assert sorted(FAMILY_MODELS) == list_head_families()


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_gap_head(family: str) -> None:
    name, size = FAMILY_MODELS[family]
    built = _build(name, size)
    linear = built.model.get_submodule(built.head)
    assert isinstance(linear, nn.Linear)
    assert linear.out_features == 7
    assert (built.name, built.weights) == (name, "none")
    assert built.model.training
    built.model.eval()
    with torch.no_grad():
        assert built.model(torch.randn(2, 3, size, size)).shape == (2, 7)


@pytest.mark.parametrize("family", FLATTEN_FAMILIES)
def test_flatten_head(family: str) -> None:
    name, size = FAMILY_MODELS[family]
    c, h, w = _feature_map_shape(name, size)
    assert h * w > 1  # the test would not tell flatten from gap otherwise
    built = _build(name, size, head="flatten")
    linear = built.model.get_submodule(built.head)
    assert isinstance(linear, nn.Linear)
    assert (linear.in_features, linear.out_features) == (c * h * w, 7)
    pool = head_adapter(type(built.model), name=name).pool
    assert pool is not None
    assert isinstance(built.model.get_submodule(pool), nn.Identity)
    assert built.model.training
    built.model.eval()
    with torch.no_grad():
        assert built.model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_head_names() -> None:
    assert _build("efficientnet_b0", 32).head == "classifier.1"
    assert _build("mobilenet_v3_small", 32).head == "classifier.3"
    # The MLP's first layer expects pooled features, so flatten replaces the whole classifier.
    assert _build("mobilenet_v3_small", 32, head="flatten").head == "classifier"
    convnext = _build("convnext_tiny", 32, head="flatten")
    assert convnext.head == "classifier.2"
    # The pretrained LayerNorm2d stays and normalises each position of the unpooled map.
    assert type(convnext.model.get_submodule("classifier.0")).__name__ == "LayerNorm2d"


def test_flatten_is_not_defined_for_vit() -> None:
    message = config_error(
        lambda: check_model(ModelConfig(name="vit_b_16", weights="none", head="flatten")), "model"
    )
    assert message.startswith("model.head 'flatten' is not defined for vit_b_16")


def test_model_that_does_not_run_at_the_image_size() -> None:
    message = config_error(lambda: _build("digits-cnn", 1), "model")
    assert message.startswith("model.name 'digits-cnn' does not run on 1x1 images")


@pytest.mark.parametrize(("key", "value"), [("num_classes", 0), ("image_size", -3)])
def test_bad_sizes(key: str, value: int) -> None:
    sizes = {"num_classes": 7, "image_size": 16, key: value}
    cfg = ModelConfig(name="digits-cnn", weights="none")
    message = config_error(
        lambda: build_model(cfg, num_classes=sizes["num_classes"], image_size=sizes["image_size"]),
        "config",
    )
    assert message == f"{key} must be an integer >= 1, got {value}"


def test_build_does_not_touch_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    built = _build("digits-cnn", 16, head="flatten")
    bn = built.model.get_submodule("block1.1")
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.running_mean is not None
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert bn.num_batches_tracked is not None
    assert int(bn.num_batches_tracked) == 0


def test_registries_refuse_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_head_adapter(HeadAdapter("resnet-again", type(resnet18()), linear="fc"))
    with pytest.raises(ValueError, match="already registered"):
        register_local_model(LocalModel("resnet18", DigitsCNN, lambda: DigitsCNN(3)))


# --- names and weights ---------------------------------------------------------------------


def test_list_models() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"resnet50", "efficientnet_b0", "vit_b_16", "digits-cnn"} <= set(names)
    assert "densenet121" not in names  # a torchvision model with no head adapter


def test_config_fields_resolve_at_runtime() -> None:
    hints = typing.get_type_hints(ModelConfig)
    assert hints["head"] == typing.Literal["gap", "flatten"]
    assert hints["checkpoint"] == str | None
    assert set(typing.get_args(hints["head"])) == set(HEADS)


def test_default_config() -> None:
    cfg = ModelConfig()
    assert (cfg.name, cfg.weights, cfg.checkpoint, cfg.head) == (
        "resnet50",
        "DEFAULT",
        None,
        "gap",
    )


def test_unknown_name_lists_the_choices() -> None:
    message = config_error(lambda: check_model(ModelConfig(name="resnet5")), "model")
    assert message.startswith("model.name 'resnet5' is not a known model; choose from ")
    assert f"choose from {', '.join(list_models())}" in message


def test_unsupported_family_lists_the_families() -> None:
    message = config_error(lambda: check_model(ModelConfig(name="densenet121")), "model")
    assert message == (
        "model.name 'densenet121' is a DenseNet, a family with no head adapter; supported "
        f"families: {', '.join(list_head_families())}"
    )


@pytest.mark.parametrize("weights", ["DEFAULT", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V1"])
def test_weights_accepted(weights: str) -> None:
    assert ModelConfig(name="resnet50", weights=weights).weights == weights


def test_unknown_weights_lists_the_enum() -> None:
    message = config_error(lambda: check_model(ModelConfig(name="resnet50", weights="FOO")))
    assert message == (
        "model.weights 'FOO' is not a weights of resnet50; "
        "choose from DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2, none"
    )
    assert weights_choices("resnet50") == ["DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2", "none"]


def test_weights_of_another_enum_are_refused() -> None:
    message = config_error(
        lambda: check_model(
            ModelConfig(name="resnet50", weights="ResNet18_Weights.IMAGENET1K_V1")
        ),
        "model",
    )
    assert message.startswith("model.weights 'ResNet18_Weights.IMAGENET1K_V1' is not a weights")


def test_digits_source_is_only_for_digits_cnn() -> None:
    message = config_error(
        lambda: check_model(ModelConfig(name="resnet50", weights="digits-source")), "model"
    )
    assert message.startswith(
        "model.weights 'digits-source' is not a weights of resnet50 (it belongs to digits-cnn)"
    )
    assert ModelConfig(name="digits-cnn", weights="digits-source").weights == "digits-source"


def test_digits_cnn_takes_no_torchvision_weights() -> None:
    message = config_error(lambda: check_model(ModelConfig(name="digits-cnn")), "model")
    assert message == (
        "model.weights 'DEFAULT' is not a weights of digits-cnn; choose from digits-source, none"
    )
    # With a checkpoint, weights are ignored.
    assert ModelConfig(name="digits-cnn", checkpoint="source.pt").checkpoint == "source.pt"


def test_digits_source_needs_the_checkpoint() -> None:
    cfg = ModelConfig(name="digits-cnn", weights="digits-source")
    message = config_error(lambda: build_model(cfg, num_classes=7, image_size=16), "model")
    assert "model.checkpoint=PATH" in message


def test_unknown_head() -> None:
    message = config_error(lambda: ModelConfig(name="resnet18", head="max"), "config")  # type: ignore[arg-type]
    assert message == "model.head 'max' is not a head; choose from flatten, gap"


def test_model_class_without_building() -> None:
    assert model_class("wide_resnet50_2") is type(resnet18())
    assert model_class("digits-cnn") is DigitsCNN


# --- pretrained weights (download faked) ----------------------------------------------------


def test_pretrained_weights_through_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    source = resnet18().state_dict()

    def fake_download(self: ResNet18_Weights, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return source

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", fake_download)
    built = build_model(ModelConfig(name="resnet18"), num_classes=7, image_size=32)
    assert built.weights == "IMAGENET1K_V1"  # DEFAULT, resolved
    state = built.model.state_dict()
    assert torch.equal(state["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    assert built.model.get_submodule(built.head).out_features == 7


def test_download_failure_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_internet(self: ResNet18_Weights, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", no_internet)
    cfg = ModelConfig(name="resnet18", weights="IMAGENET1K_V1")
    message = config_error(lambda: build_model(cfg, num_classes=7, image_size=32), "model")
    assert message.startswith(
        "model.weights: could not fetch ResNet18_Weights.IMAGENET1K_V1 for resnet18 from https://"
    )
    assert "Temporary failure in name resolution" in message
    assert message.endswith("set model.checkpoint=PATH to load a local file instead")


# --- checkpoints ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return resnet18().state_dict()


def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: ResNet18_Weights, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("a checkpoint build must not download")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", fail)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    ],
    ids=["raw", "data-parallel", "state_dict", "model"],
)
def test_checkpoint_round_trip(
    wrap: Callable[[dict[str, torch.Tensor]], object],
    r18_state: dict[str, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_download(monkeypatch)
    path = tmp_path / "ck.pt"
    torch.save(wrap(r18_state), path)
    cfg = ModelConfig(name="resnet18", checkpoint=str(path))  # weights DEFAULT is ignored
    built = build_model(cfg, num_classes=7, image_size=32)
    assert built.weights == "checkpoint:ck.pt"
    state = built.model.state_dict()
    backbone = [k for k in r18_state if not k.startswith("fc.")]
    assert backbone
    for key in backbone:
        assert torch.equal(state[key], r18_state[key]), key
    assert state["fc.weight"].shape == (7, 512)


def test_checkpoint_argument_overrides_config(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = DigitsCNN(5).state_dict()  # a source network with another class count
    path = tmp_path / "source.pt"
    torch.save(source, path)
    cfg = ModelConfig(name="digits-cnn", weights="digits-source", checkpoint="elsewhere.pt")
    built = build_model(cfg, num_classes=7, image_size=16, checkpoint=path)
    assert built.weights == "checkpoint:source.pt"
    assert torch.equal(built.model.state_dict()["block3.0.weight"], source["block3.0.weight"])
    assert built.model.get_submodule("fc").out_features == 7


def _build_from(path: Path, name: str = "resnet18") -> Callable[[], BuiltModel]:
    cfg = ModelConfig(name=name, weights="none", checkpoint=str(path))
    return lambda: build_model(cfg, num_classes=7, image_size=32)


def test_checkpoint_shape_mismatch(r18_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    state = dict(r18_state)
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(state, tmp_path / "ck.pt")
    message = config_error(_build_from(tmp_path / "ck.pt"), "checkpoint")
    assert message == (
        "checkpoint ck.pt does not fit resnet18: layer1.0.conv1.weight is [32, 64, 3, 3] in the "
        "file, [64, 64, 3, 3] in the model"
    )


def test_checkpoint_missing_and_unexpected_keys(
    r18_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = dict(r18_state)
    del state["layer4.1.bn2.weight"], state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "ck.pt")
    message = config_error(_build_from(tmp_path / "ck.pt"), "checkpoint")
    assert message == (
        "checkpoint ck.pt does not fit resnet18: 2 keys missing from the file "
        "(layer4.1.bn2.weight, layer4.1.bn2.bias), 1 unexpected key (extra.weight)"
    )


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    torch.save(DigitsCNN(5).state_dict(), tmp_path / "ck.pt")
    message = config_error(_build_from(tmp_path / "ck.pt"), "checkpoint")
    assert "keys missing from the file (conv1.weight, bn1.weight, bn1.bias, ...)" in message
    assert "unexpected keys (block1.0.weight, block1.1.weight, block1.1.bias, ...)" in message


def test_checkpoint_missing_file(tmp_path: Path) -> None:
    message = config_error(_build_from(tmp_path / "nope.pt"), "checkpoint")
    assert message == f"model.checkpoint '{tmp_path / 'nope.pt'}' does not exist"


def test_checkpoint_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "ck.pt").write_bytes(b"this is not a torch file")
    message = config_error(_build_from(tmp_path / "ck.pt"), "checkpoint")
    assert message.startswith(f"checkpoint {tmp_path / 'ck.pt'} is not a file torch.load can read")


class Payload:
    """An arbitrary Python object: unpickling it could run code, so weights_only refuses."""


@pytest.mark.parametrize("save", [torch.save, functools.partial(pickle.dump, protocol=2)])
def test_checkpoint_with_python_objects_is_refused(
    save: Callable[[object, Any], None], tmp_path: Path
) -> None:
    with (tmp_path / "ck.pt").open("wb") as f:
        save({"state_dict": Payload()}, f)
    message = config_error(_build_from(tmp_path / "ck.pt"), "checkpoint")
    assert "cannot be loaded with weights_only=True" in message
    assert message.endswith("save model.state_dict() instead")


def test_checkpoint_without_a_state_dict(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "ck.pt")
    message = config_error(_build_from(tmp_path / "ck.pt"), "checkpoint")
    assert message.endswith(
        "holds no state dict: expected a dict of tensors, or one under 'state_dict' or "
        "'model'; found a dict with keys epoch, lr"
    )
