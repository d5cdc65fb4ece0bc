"""Hugging Face image classifiers (``model.name: hf/<folder or hub name>``): loading from a
folder ``save_pretrained`` wrote, the logits hook, the head, layer groups, errors, one run.
Nothing is downloaded: tiny configs are saved into temporary folders."""

from __future__ import annotations

import json
from pathlib import Path
import sys
from typing import Any

import pytest
from safetensors.torch import load_file
import torch
from torch import nn
import transformers
from transformers import BertConfig
from transformers import ResNetConfig
from transformers import ResNetForImageClassification
from transformers import ViTConfig
from transformers import ViTForImageClassification
import yaml

from tests.finetune.conftest import config_error
from tether.cli import main
from tether.finetune.layers import HEAD
from tether.finetune.layers import layer_groups
from tether.finetune.layers import summarize_groups
from tether.finetune.models import BuiltModel
from tether.finetune.models import ModelConfig
from tether.finetune.models import build_model
from tether.finetune.models import weights_choices
from tether.finetune.models.zoo import check_model
from tether.finetune.models.zoo import classifier_name
from tether.finetune.models.zoo import create_model
from tether.testing.specs import tiny_digits_recipe


CLASSES = 3
SIZE = 32


def _vit_config(layers: int = 2) -> ViTConfig:
    return ViTConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        image_size=SIZE, patch_size=8,
    )  # fmt: skip


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT classifier as save_pretrained writes it: config.json, model.safetensors."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    torch.manual_seed(0)
    ViTForImageClassification(_vit_config()).save_pretrained(folder)
    return folder


def _build(name: str, weights: str = "pretrained", size: int = SIZE, **kw: Any) -> BuiltModel:
    return build_model(ModelConfig(name=name, weights=weights, **kw), num_classes=CLASSES,
                       image_size=size)  # fmt: skip


# --- loading, the hook, the head ------------------------------------------------------------


def _saved(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights under the model's names, as transformers itself loads them."""
    return ViTForImageClassification.from_pretrained(folder).state_dict()


def test_a_saved_folder_loads_its_weights_under_their_own_names(vit_folder: Path) -> None:
    built = _build(f"hf/{vit_folder}")
    saved = _saved(vit_folder)
    state = built.model.state_dict()
    assert set(state) == set(saved)  # the transformers names, no wrapper prefix
    for key, value in saved.items():
        if not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    assert (built.head, built.weights) == ("classifier", "pretrained")
    assert state["classifier.weight"].shape == (CLASSES, 32)
    assert isinstance(built.model, ViTForImageClassification)
    assert built.model.config.num_labels == CLASSES
    assert built.model.training


def test_a_folder_with_a_config_json_needs_no_prefix(vit_folder: Path) -> None:
    built = _build(str(vit_folder), weights="DEFAULT")
    assert built.name == str(vit_folder)
    assert weights_choices(str(vit_folder)) == ["DEFAULT", "none", "pretrained"]


def test_weights_none_is_a_random_model_of_that_config(vit_folder: Path) -> None:
    built = _build(f"hf/{vit_folder}", weights="none")
    saved = _saved(vit_folder)
    key = "vit.layers.0.mlp.fc1.weight"
    assert built.weights == "none"
    assert built.model.state_dict()[key].shape == saved[key].shape
    assert not torch.equal(built.model.state_dict()[key], saved[key])


def test_the_model_returns_a_logits_tensor_at_any_size(vit_folder: Path) -> None:
    model = _build(f"hf/{vit_folder}", size=16).model.eval()
    for size in (16, SIZE, 48):  # position embeddings interpolated: a ViT runs at any size
        out = model(torch.zeros(2, 3, size, size))
        assert isinstance(out, torch.Tensor)
        assert out.shape == (2, CLASSES)


def test_a_classifier_inside_a_sequential_is_its_last_linear(tmp_path: Path) -> None:
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    ResNetForImageClassification(config).save_pretrained(tmp_path)
    built = _build(f"hf/{tmp_path}")
    assert built.head == "classifier.1"
    assert built.model.get_submodule("classifier.1").out_features == CLASSES
    model, _ = create_model(f"hf/{tmp_path}", "none")
    assert classifier_name(model, name=f"hf/{tmp_path}") == "classifier.1"
    groups = layer_groups(built.model, head=built.head)
    assert groups.names == ("embed", "blocks.0", "blocks.1", HEAD)
    assert groups.prefixes["blocks.1"] == ("resnet.encoder.stages.1",)


def test_the_folders_own_weights_file_loads_as_a_checkpoint(vit_folder: Path) -> None:
    file = vit_folder / "model.safetensors"
    assert "vit.encoder.layer.0.output.dense.weight" in load_file(file)  # save_pretrained's names
    built = _build(f"hf/{vit_folder}", weights="none", checkpoint=str(file))
    assert built.weights == "checkpoint:model.safetensors"
    state, saved = built.model.state_dict(), _saved(vit_folder)
    for key in (
        "vit.embeddings.patch_embeddings.projection.weight",
        "vit.layers.0.mlp.fc2.weight",
    ):
        assert torch.equal(state[key], saved[key]), key


def test_a_state_dict_tether_saved_loads_as_it_is(vit_folder: Path, tmp_path: Path) -> None:
    model = _build(f"hf/{vit_folder}").model
    torch.save(model.state_dict(), tmp_path / "tuned.pt")
    built = _build(f"hf/{vit_folder}", weights="none", checkpoint=str(tmp_path / "tuned.pt"))
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(built.model.state_dict()[key], value), key


def test_a_checkpoint_that_does_not_fit_is_one_line(vit_folder: Path, tmp_path: Path) -> None:
    state = load_file(vit_folder / "model.safetensors")
    state["vit.encoder.layer.1.output.dense.weight"] = torch.zeros(32, 32)
    del state["vit.layernorm.weight"]
    torch.save(state, tmp_path / "bad.pt")
    bad_shape = lambda: _build(f"hf/{vit_folder}", weights="none",  # noqa: E731
                               checkpoint=str(tmp_path / "bad.pt"))  # fmt: skip
    assert config_error(bad_shape, "checkpoint") == (
        "the checkpoint does not fit ViTForImageClassification: vit.layers.1.mlp.fc2.weight is "
        "[32, 32] in the file, [32, 64] in the model"
    )
    del state["vit.encoder.layer.1.output.dense.weight"]
    torch.save(state, tmp_path / "bad.pt")
    message = config_error(bad_shape, "checkpoint")
    assert message.startswith(f"checkpoint bad.pt does not fit hf/{vit_folder}: 2 keys missing")
    assert "vit.layernorm.weight" in message


# --- layer groups ---------------------------------------------------------------------------


def test_groups_embed_blocks_neck_head_cover_every_parameter(vit_folder: Path) -> None:
    built = _build(f"hf/{vit_folder}")
    groups = layer_groups(built.model, head=built.head)
    assert groups.names == ("embed", "blocks.0", "blocks.1", "neck", HEAD)
    assert groups.prefixes == {
        "embed": ("vit.embeddings",),
        "blocks.0": ("vit.layers.0",),
        "blocks.1": ("vit.layers.1",),
        "neck": ("vit.layernorm",),
        HEAD: ("classifier",),
    }
    rows = summarize_groups(built.model, groups)
    assert [row.name for row in rows] == list(groups.names)  # nothing left unowned ("-")
    assert rows[-1].n_params == CLASSES * 32 + CLASSES


def test_many_layers_are_cut_into_four_bands(tmp_path: Path) -> None:
    ViTForImageClassification(_vit_config(layers=6)).save_pretrained(tmp_path)
    built = _build(f"hf/{tmp_path}", weights="none")
    groups = layer_groups(built.model, head=built.head)
    assert groups.names == ("embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "neck",
                            HEAD)  # fmt: skip
    bands = [groups.group_of(f"vit.layers.{i}.mlp.fc1.weight") for i in range(6)]
    assert bands == ["blocks.0", "blocks.0", "blocks.1", "blocks.2", "blocks.2", "blocks.3"]


# --- errors ---------------------------------------------------------------------------------


def test_a_folder_without_config_json_is_one_line(tmp_path: Path) -> None:
    message = config_error(lambda: check_model(ModelConfig(name=f"hf/{tmp_path}")))
    assert message == (
        f"model.name: folder {tmp_path} has no config.json (a Hugging Face model folder is what "
        "save_pretrained writes)"
    )
    bare = config_error(lambda: check_model(ModelConfig(name=str(tmp_path))))
    assert "(a folder, but with no config.json: not a Hugging Face model folder)" in bare


@pytest.mark.parametrize(
    ("name", "weights", "needle"),
    [
        ("hf/./no/such/folder", "none", "is neither a folder nor a Hugging Face Hub name"),
        ("hf/a b", "none", "is neither a folder nor a Hugging Face Hub name"),
        ("hf/", "none", "names no model after hf/"),
        (None, "IMAGENET1K_V1", "choose from DEFAULT, none, pretrained"),
    ],
)
def test_bad_names_and_weights_are_one_line(
    name: str | None, weights: str, needle: str, vit_folder: Path
) -> None:
    cfg = ModelConfig(name=name or f"hf/{vit_folder}", weights=weights)
    assert needle in config_error(lambda: check_model(cfg))


def test_pretrained_needs_a_weights_file(tmp_path: Path) -> None:
    _vit_config().save_pretrained(tmp_path)  # config.json only
    check_model(ModelConfig(name=f"hf/{tmp_path}", weights="none"))
    message = config_error(lambda: check_model(ModelConfig(name=f"hf/{tmp_path}")))
    assert message.startswith(f"model.weights: folder {tmp_path} has no weights")


def test_a_model_that_is_not_an_image_classifier_is_one_line(tmp_path: Path) -> None:
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    message = config_error(lambda: check_model(ModelConfig(name=f"hf/{tmp_path}", weights="none")))
    assert message == (
        f"model.name: {tmp_path} is a 'bert' model, for which transformers has no image classifier"
    )


def test_flatten_is_not_defined(vit_folder: Path) -> None:
    cfg = ModelConfig(name=f"hf/{vit_folder}", head="flatten")
    assert "not defined for Hugging Face models" in config_error(lambda: check_model(cfg))


def test_an_unreachable_hub_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> Any:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    check_model(ModelConfig(name="hf/google/vit-base-patch16-224", weights="none"))  # no I/O
    cfg = ModelConfig(name="hf/google/vit-base-patch16-224", weights="none")
    message = config_error(lambda: build_model(cfg, num_classes=2, image_size=SIZE))
    assert message.startswith(
        "model.name: could not load google/vit-base-patch16-224 from the Hugging Face Hub "
        "(OSError: We couldn't connect"
    )


def test_missing_transformers_says_which_extra(
    vit_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    message = config_error(lambda: check_model(ModelConfig(name="hf/google/vit-base-patch16-224")))
    assert message == (
        "model.name: google/vit-base-patch16-224 is a Hugging Face model, which needs the "
        "transformers package: install tether[transformers]"
    )


# --- tether finetune ------------------------------------------------------------------------


def _finetune(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str], *overrides: str
) -> tuple[int, list[dict[str, Any]], str]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_digits_recipe(epochs=1, test=False)))
    args = ["finetune", str(recipe), "--json", "--cache-dir", str(cache_dir)]
    for override in ("model.weights=none", *overrides):
        args += ["--set", override]
    code = main(args)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_finetune_runs_a_saved_folder_inside_its_radii(
    vit_folder: Path, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, events, err = _finetune(
        tmp_path, cache_dir, capsys, f"model.name=hf/{vit_folder}", "model.weights=pretrained",
        "constraint.radius=0.05", "constraint.relative=false", "constraint.head_radius=1.0",
    )  # fmt: skip
    assert code == 0, err
    start, result = events[0], events[-1]
    assert start["model"]["weights"] == "pretrained"
    assert start["groups"] == ["embed", "blocks.0", "blocks.1", "neck", HEAD]
    slack = 1 + 1e-3
    assert all(0 < result["distances"][g] <= 0.05 * slack for g in ("embed", "blocks.0"))
    assert 0 < result["distances"][HEAD] <= 1.0 * slack


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_a_folder_without_config_json_exits_2(
    make: str, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    if make == "empty":
        folder.mkdir()
    code, _, err = _finetune(tmp_path, cache_dir, capsys, f"model.name=hf/{folder}")
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tether: error: model.name: ")
    assert ("has no config.json" if make == "empty" else "neither a folder") in lines[0]


def test_missing_transformers_exits_2_naming_the_extra(
    vit_folder: Path,
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    code, _, err = _finetune(tmp_path, cache_dir, capsys, f"model.name=hf/{vit_folder}")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.strip().endswith("install tether[transformers]")


def test_the_hook_is_the_only_change_to_the_model(vit_folder: Path) -> None:
    model = _build(f"hf/{vit_folder}").model
    assert len(model._forward_hooks) == 1
    assert len(model._forward_pre_hooks) == 1
    assert all(not isinstance(m, nn.Identity) for m in model.modules())


def test_a_transformers_model_whose_head_is_not_a_classifier_is_grouped_around_it() -> None:
    """GPT-2's head is ``score``: the bands are found all the same, and the head given to
    layer_groups is taken out of ``neck`` (which it would otherwise share)."""
    config = transformers.GPT2Config(n_embd=16, n_layer=4, n_head=2, vocab_size=50, n_positions=8)
    model = transformers.GPT2ForSequenceClassification(config)
    groups = layer_groups(model, head="score")
    assert list(groups.prefixes) == [
        "embed",
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "blocks.3",
        "neck",
        HEAD,
    ]
    assert groups.prefixes["neck"] == ("transformer.ln_f",)
    assert groups.prefixes[HEAD] == ("score",)
