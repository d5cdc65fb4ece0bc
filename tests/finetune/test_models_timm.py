"""timm models (``model.name: timm/<name>``): names, weights, heads, layer groups, checkpoints,
and ``tether finetune`` end to end. Nothing is downloaded: models are built without weights,
small, at 32 px; the pretrained path is exercised with ``timm.create_model`` patched."""

from __future__ import annotations

from collections.abc import Callable
import functools
import json
from pathlib import Path
import sys
from typing import Any

import pytest
from safetensors.torch import save_file
import timm
from timm.models import group_parameters
import torch
from torch import nn
import yaml

from tests.finetune.conftest import config_error
from tether.cli import main
from tether.finetune.layers import HEAD
from tether.finetune.layers import LayerGroups
from tether.finetune.layers import layer_groups
from tether.finetune.models import BuiltModel
from tether.finetune.models import ModelConfig
from tether.finetune.models import build_model
from tether.finetune.models import weights_choices
from tether.finetune.models.timm_models import timm_groups
from tether.finetune.models.zoo import check_model
from tether.finetune.models.zoo import classifier_name
from tether.finetune.models.zoo import create_model
from tether.testing.specs import tiny_digits_recipe


IMAGE_SIZE = 32
DIGITS_SIZE = 16  # the end-to-end runs: a ViT/16 sees one patch, a ResNet a 1x1 final map
CLASSES = 3

# One small model per family, its classifier, and the groups Tether names from timm's matcher.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "resnet": ("resnet18", "fc", ("stem", "layer1", "layer2", "layer3", "layer4")),
    "efficientnet": (
        "efficientnet_b0",
        "classifier",
        ("stem", *(f"blocks.{i}" for i in range(7))),
    ),
    "convnext": (
        "convnext_atto",
        "head.fc",
        ("stem", "stages.0", "stages.1", "stages.2", "stages.3", "neck"),
    ),
    "vit": ("vit_tiny_patch16_224", "head", ("stem", *(f"blocks.{i}" for i in range(12)))),
}


@functools.cache
def _built(name: str) -> BuiltModel:
    cfg = ModelConfig(name=f"timm/{name}", weights="none")
    return build_model(cfg, num_classes=CLASSES, image_size=IMAGE_SIZE)


# --- heads and layer groups, one small model per family -------------------------------------


@pytest.mark.parametrize(("name", "head", "groups"), FAMILIES.values(), ids=list(FAMILIES))
def test_the_head_is_the_reset_classifier(name: str, head: str, groups: tuple[str, ...]) -> None:
    built = _built(name)
    assert (built.name, built.head, built.weights) == (f"timm/{name}", head, "none")
    linear = built.model.get_submodule(head)
    assert isinstance(linear, nn.Linear)
    assert linear.out_features == CLASSES
    assert built.model.training
    out = built.model.eval()(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    built.model.train()
    assert out.shape == (2, CLASSES)


def _owner(groups: LayerGroups, model: nn.Module) -> dict[str, str | None]:
    return {name: groups.group_of(name) for name, _ in model.named_parameters()}


@pytest.mark.parametrize(("name", "head", "expected"), FAMILIES.values(), ids=list(FAMILIES))
def test_groups_follow_timms_grouping_stem_first_head_last(
    name: str, head: str, expected: tuple[str, ...]
) -> None:
    model = _built(name).model
    groups = layer_groups(model, head=head)
    assert groups.names == (*expected, HEAD)
    assert groups.prefixes[HEAD] == (head,)
    owner = _owner(groups, model)
    # Every trainable parameter is in exactly one group (group_of is a function of the name).
    assert all(owner[n] is not None for n, p in model.named_parameters() if p.requires_grad)
    head_params = [n for n, g in owner.items() if g == HEAD]
    assert head_params == [f"{head}.weight", f"{head}.bias"]
    # Tether's groups are timm's, in timm's order: every timm group lies in one Tether group,
    # and the Tether groups run through timm's group ids in increasing order.
    matcher = model.group_matcher(coarse=True)  # type: ignore[operator]
    timm_layer = group_parameters(model, matcher, reverse=True)
    rank = {g: i for i, g in enumerate(groups.names)}
    tether_of_timm: dict[int, set[str]] = {}
    for param, layer in timm_layer.items():
        group = owner[param]
        assert group is not None
        if group != HEAD:
            tether_of_timm.setdefault(layer, set()).add(group)
    assert all(len(owned) == 1 for owned in tether_of_timm.values())
    ranks = [rank[next(iter(tether_of_timm[layer]))] for layer in sorted(tether_of_timm)]
    assert ranks == sorted(ranks)
    assert set(ranks) == set(range(len(expected)))


@pytest.mark.parametrize(("name", "head", "expected"), FAMILIES.values(), ids=list(FAMILIES))
def test_group_prefixes_are_disjoint_modules(
    name: str, head: str, expected: tuple[str, ...]
) -> None:
    model = _built(name).model
    groups = layer_groups(model, head=head)
    prefixes = [(g, p) for g, owned in groups.prefixes.items() for p in owned]
    names = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    for group, prefix in prefixes:
        assert prefix in names, prefix
        for other, inside in prefixes:
            if other != group:
                assert not inside.startswith(prefix + "."), (prefix, inside)


def test_stage_groups_own_what_timm_puts_in_them() -> None:
    vit = layer_groups(_built("vit_tiny_patch16_224").model, head="head")
    assert vit.prefixes["stem"] == ("cls_token", "pos_embed", "patch_embed")
    assert vit.group_of("norm.weight") == "blocks.11"  # timm's MATCH_PREV_GROUP: the last block
    effnet = layer_groups(_built("efficientnet_b0").model, head="classifier")
    assert effnet.prefixes["blocks.6"] == ("blocks.6", "conv_head", "bn2")
    convnext = layer_groups(_built("convnext_atto").model, head="head.fc")
    assert convnext.prefixes["neck"] == ("head.norm",)  # matched by nothing, not the head
    assert convnext.group_of("stages.1.downsample.1.weight") == "stages.1"


def test_a_pre_logits_conv_is_the_neck() -> None:
    built = build_model(
        ModelConfig(name="timm/mobilenetv3_small_050", weights="none"),
        num_classes=CLASSES,
        image_size=IMAGE_SIZE,
    )
    groups = layer_groups(built.model, head=built.head)
    assert groups.names[0] == "stem"
    assert groups.names[-2:] == ("neck", HEAD)
    assert groups.prefixes["neck"] == ("conv_head",)


class _Matched(nn.Module):
    """timm-like: a stem, two stages, a classifier, and whatever matcher a test gives it."""

    pretrained_cfg = {"classifier": "fc"}

    def __init__(self, matcher: Any) -> None:
        super().__init__()
        self.a, self.s1, self.s2, self.fc = (nn.Linear(2, 2) for _ in range(4))
        self.matcher = matcher

    def group_matcher(self, coarse: bool = False) -> Any:
        return self.matcher


def test_stages_are_named_by_the_module_their_pattern_matched() -> None:
    model = _Matched({"stem": r"^a", "blocks": r"^s(\d+)"})
    assert timm_groups(model) == {"stem": ("a",), "s1": ("s1",), "s2": ("s2",)}


@pytest.mark.parametrize(
    ("matcher", "names"),
    [
        (
            {"stem": r"^a", "blocks": [(r"^s1\.w", (0,)), (r"^s1\.b", (0,)), (r"^s2", (1,))]},
            ["stem", "blocks.0", "blocks.1"],
        ),
        (
            lambda name: {"a": 0, "s1": 1, "s2": 2}.get(name.split(".")[0], 3),
            ["blocks.0", "blocks.1", "blocks.2"],
        ),
    ],
    ids=["not-a-module", "callable"],
)
def test_stage_names_fall_back_to_numbers_when_not_modules(matcher: Any, names: list[str]) -> None:
    groups = timm_groups(_Matched(matcher))
    assert list(groups.values()) == [("a",), ("s1",), ("s2",)]
    assert list(groups) == names


class _Tokens(_Matched):
    """A stem that is one bare parameter, as a ViT's class token is; a timm class to the
    layer-group rules (they go by the module a class comes from)."""

    __module__ = "timm.models.tokens"

    def __init__(self) -> None:
        super().__init__({"stem": r"^tok", "blocks": r"^s(\d+)"})
        self.tok = nn.Parameter(torch.zeros(2))


def test_a_group_of_bare_parameters_is_kept() -> None:
    groups = layer_groups(_Tokens(), head="fc")
    assert groups.names == ("stem", "s1", "s2", "neck", HEAD)
    assert groups.prefixes["stem"] == ("tok",)
    assert groups.prefixes["neck"] == ("a",)  # matched by no pattern, and not the head


def test_a_vit_is_built_at_the_working_resolution() -> None:
    model: Any = _built("vit_tiny_patch16_224").model
    assert tuple(model.patch_embed.img_size) == (IMAGE_SIZE, IMAGE_SIZE)
    assert model.pos_embed.shape[1] == 1 + (IMAGE_SIZE // 16) ** 2


# --- names, weights, errors -----------------------------------------------------------------


def test_weights_choices_and_classifier_name() -> None:
    assert weights_choices("timm/resnet18") == ["DEFAULT", "none", "pretrained"]
    model, loaded = create_model("timm/convnext_atto", "none")
    assert loaded == "none"
    assert classifier_name(model, name="timm/convnext_atto") == "head.fc"
    assert model.get_submodule("head.fc").out_features == 1000  # its own classifier, kept


def test_an_unknown_name_suggests_close_ones() -> None:
    message = config_error(lambda: check_model(ModelConfig(name="timm/resnet19")))
    assert message.startswith("model.name 'timm/resnet19' is not a timm model; did you mean ")
    assert "timm/resnet18" in message


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        (
            ModelConfig(name="timm/resnet18.bogus"),
            "no such pretrained tag for resnet18; its tags: ",
        ),
        (
            ModelConfig(name="timm/botnet50ts_256"),
            "timm has no pretrained weights for botnet50ts_256",
        ),
        (ModelConfig(name="timm/resnet18", weights="IMAGENET1K_V1"), "DEFAULT, none, pretrained"),
        (ModelConfig(name="timm/resnet18", head="flatten"), "not defined for timm models"),
        (
            ModelConfig(name="timm/deit_tiny_distilled_patch16_224"),
            "2 classifiers (head, head_dist)",
        ),
        (ModelConfig(name="timm/"), "names no model after timm/"),
    ],
    ids=["tag", "no-pretrained", "weights", "flatten", "two-classifiers", "empty"],
)
def test_bad_timm_configs_are_one_line(cfg: ModelConfig, needle: str) -> None:
    assert needle in config_error(lambda: check_model(cfg))


def test_a_checkpoint_replaces_the_weights_check() -> None:
    check_model(ModelConfig(name="timm/botnet50ts_256", checkpoint="x.pt"))


def test_missing_timm_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    message = config_error(lambda: check_model(ModelConfig(name="timm/resnet18")))
    assert message == "model.name 'timm/resnet18' needs the timm package: install tether[timm]"


def test_pretrained_asks_timm_for_them_and_names_the_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, bool, dict[str, Any]]] = []
    real = timm.create_model

    def fake(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        asked.append((name, pretrained, kwargs))
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake)
    built = build_model(ModelConfig(name="timm/resnet18"), num_classes=4, image_size=32)
    assert asked == [("resnet18", True, {})]
    assert built.weights == "resnet18.a1_in1k"
    vit = build_model(
        ModelConfig(name="timm/vit_tiny_patch16_224.augreg_in21k", weights="pretrained"),
        num_classes=4,
        image_size=32,
    )
    assert asked[-1] == ("vit_tiny_patch16_224.augreg_in21k", True, {"img_size": 32})
    assert vit.weights == "vit_tiny_patch16_224.augreg_in21k"


def test_a_failed_download_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(timm, "create_model", offline)
    message = config_error(lambda: build_model(ModelConfig(name="timm/resnet18"), num_classes=4,
                                         image_size=32))  # fmt: skip
    assert message == (
        "model.weights: could not fetch the pretrained weights of timm/resnet18 (OSError: "
        "Temporary failure in name resolution); set model.checkpoint=PATH to load a local file "
        "instead"
    )


def test_a_size_the_model_cannot_run_at_is_one_line() -> None:
    cfg = ModelConfig(name="timm/vit_tiny_patch16_224", weights="none")
    message = config_error(lambda: build_model(cfg, num_classes=3, image_size=8))
    assert message.startswith("model.name 'timm/vit_tiny_patch16_224' does not run on 8x8 images")


def test_a_size_the_model_cannot_be_built_for_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        raise AssertionError("img_size must be a multiple of the window")

    monkeypatch.setattr(timm, "create_model", refuse)
    cfg = ModelConfig(name="timm/vit_tiny_patch16_224", weights="none")
    message = config_error(lambda: build_model(cfg, num_classes=3, image_size=40))
    assert message == (
        "model.name 'timm/vit_tiny_patch16_224' cannot be built for 40x40 images "
        "(data.image_size): AssertionError: img_size must be a multiple of the window"
    )


# --- checkpoints ----------------------------------------------------------------------------


def test_a_checkpoint_for_other_classes_loads_all_but_the_classifier(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = timm.create_model("resnet18", num_classes=10).state_dict()
    save_file(state, tmp_path / "r18.safetensors")
    cfg = ModelConfig(name="timm/resnet18", checkpoint=str(tmp_path / "r18.safetensors"))
    built = build_model(cfg, num_classes=CLASSES, image_size=IMAGE_SIZE)
    assert built.weights == "checkpoint:r18.safetensors"
    loaded = built.model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert loaded["fc.weight"].shape == (CLASSES, 512)


def test_a_vit_checkpoint_at_another_size_is_resized_as_timm_does(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = timm.create_model("test_vit", img_size=64).state_dict()
    torch.save(state, tmp_path / "vit64.pt")
    cfg = ModelConfig(name="timm/test_vit", checkpoint=str(tmp_path / "vit64.pt"))
    built = build_model(cfg, num_classes=CLASSES, image_size=IMAGE_SIZE)
    loaded = built.model.state_dict()
    conv = built.model.get_submodule("patch_embed.proj")
    assert isinstance(conv, nn.Conv2d)
    patch = conv.kernel_size[0]
    tokens, width = 1 + (IMAGE_SIZE // patch) ** 2, state["pos_embed"].shape[-1]
    assert state["pos_embed"].shape[1] == 1 + (64 // patch) ** 2
    assert loaded["pos_embed"].shape == (1, tokens, width)
    assert torch.equal(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0])  # the class token's
    assert torch.equal(loaded["blocks.3.attn.qkv.weight"], state["blocks.3.attn.qkv.weight"])


def test_a_checkpoint_of_another_model_is_one_line(tmp_path: Path) -> None:
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "r10.pt")
    cfg = ModelConfig(name="timm/resnet18", checkpoint=str(tmp_path / "r10.pt"))
    message = config_error(lambda: build_model(cfg, num_classes=3, image_size=32), "checkpoint")
    assert message.startswith("checkpoint r10.pt does not fit timm/resnet18: ")


# --- tether finetune end to end -------------------------------------------------------------


def _finetune(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str], *overrides: str
) -> tuple[int, list[dict[str, Any]], str]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_digits_recipe(epochs=1, test=False)))
    args = ["finetune", str(recipe), "--json", "--cache-dir", str(cache_dir)]
    for override in overrides:
        args += ["--set", override]
    code = main(args)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


# timm's own test models (a ResNet, a ViT of a few hundred thousand parameters): the run is
# the same as for resnet18 or vit_tiny_patch16_224, in a fraction of the time.
@pytest.mark.parametrize(
    ("name", "head", "file", "save", "groups"),
    [
        ("test_resnet", "fc", "resnet.safetensors", save_file,
         ["stem", "layer1", "layer2", "layer3", "layer4"]),
        ("test_vit", "head", "vit.pt", torch.save, ["stem", *(f"blocks.{i}" for i in range(6))]),
    ],
    ids=["resnet-safetensors", "vit-pt"],
)  # fmt: skip
def test_finetune_runs_a_timm_model_from_a_local_checkpoint(
    name: str,
    head: str,
    file: str,
    save: Callable[[dict[str, torch.Tensor], Path], object],
    groups: list[str],
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"img_size": DIGITS_SIZE} if name == "test_vit" else {}
    save(timm.create_model(name, **kwargs).state_dict(), tmp_path / file)
    radius, head_radius = 0.02, 0.5
    code, events, err = _finetune(
        tmp_path, cache_dir, capsys,
        f"model.name=timm/{name}", f"model.checkpoint={tmp_path / file}", "model.weights=none",
        f"data.image_size={DIGITS_SIZE}",
        f"constraint.radius={radius}", "constraint.relative=false",
        f"constraint.head_radius={head_radius}",
    )  # fmt: skip
    assert code == 0, err
    assert [e["event"] for e in events] == ["start", "epoch", "result"]
    start, result = events[0], events[-1]
    assert start["model"] == {
        "name": f"timm/{name}",
        "weights": f"checkpoint:{file}",
        "head": head,
    }
    assert start["groups"] == [*groups, HEAD]
    distances = result["distances"]
    assert list(distances) == start["groups"]
    slack = 1 + 1e-3  # W = W0 + T in float32
    assert all(0 < distances[g] <= radius * slack for g in groups), distances
    assert 0 < distances[HEAD] <= head_radius * slack


def test_list_groups_shows_timms_groups(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name": "timm/test_resnet", "weights": "none"}}))
    assert main(["finetune", str(recipe), "--list-groups"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["stem", "layer1", "layer2", "layer3", "layer4",
                                                "head"]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("timm/resnet19", "is not a timm model; did you mean"),
        ("timm/resnet18.bogus", "no such pretrained tag"),
    ],
)
def test_bad_timm_names_exit_2_with_one_line(
    name: str, needle: str, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _finetune(tmp_path, cache_dir, capsys, f"model.name={name}")
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tether: error: ")
    assert needle in lines[0]


def test_missing_timm_exits_2_naming_the_extra(
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    code, _, err = _finetune(tmp_path, cache_dir, capsys, "model.name=timm/resnet18")
    assert code == 2
    assert err.strip().endswith("install tether[timm]")
    assert len(err.strip().splitlines()) == 1


def test_the_source_network_of_a_timm_checkpoint_keeps_its_classifier(tmp_path: Path) -> None:
    """L2-SP-Fisher's source network: a timm ViT from a checkpoint at the run's image size,
    its own classifier resized to the checkpoint's classes."""
    from tether.finetune.data.config import DataConfig
    from tether.finetune.models.source import source_network

    torch.manual_seed(0)
    saved = timm.create_model("test_vit", img_size=DIGITS_SIZE, num_classes=7)
    save_file(saved.state_dict(), tmp_path / "vit.safetensors")
    model = ModelConfig(
        name="timm/test_vit", weights="none", checkpoint=str(tmp_path / "vit.safetensors")
    )
    network, identity = source_network(
        model, DataConfig(image_size=DIGITS_SIZE), cache_dir=tmp_path
    )
    x = torch.randn(2, 3, DIGITS_SIZE, DIGITS_SIZE)
    saved.eval(), network.eval()
    torch.testing.assert_close(network(x), saved(x))
    assert identity.startswith("timm/test_vit:checkpoint:")
