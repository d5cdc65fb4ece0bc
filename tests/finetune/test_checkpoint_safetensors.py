"""``model.checkpoint`` as a ``.safetensors`` file: read like a torch file, refused in one line."""

from __future__ import annotations

from pathlib import Path
import sys

import pytest
from safetensors.torch import save_file
import torch
import yaml

from tether.cli import main
from tether.errors import ConfigError
from tether.finetune.data.config import DataConfig
from tether.finetune.models import ModelConfig
from tether.finetune.models import build_model
from tether.finetune.models import read_state_dict
from tether.finetune.models.digits_cnn import DigitsCNN
from tether.finetune.models.digits_cnn import pretrained_source_checkpoint
from tether.testing.specs import tiny_digits_recipe


@pytest.fixture(scope="module")
def source_pt(cache_dir: Path) -> Path:
    """The digits source network as Tether writes it (a torch file; the session's cache)."""
    return pretrained_source_checkpoint(DataConfig(kind="digits"), cache_dir=cache_dir)


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        read_state_dict(path)
    assert info.value.kind == "checkpoint"
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("suffix", [".safetensors", ".SafeTensors"])
def test_tethers_checkpoint_as_safetensors_reads_the_same(
    suffix: str, source_pt: Path, tmp_path: Path
) -> None:
    state = read_state_dict(source_pt)
    path = tmp_path / f"source{suffix}"
    save_file(state, path)
    again = read_state_dict(path)
    assert set(again) == set(state)
    for key, value in state.items():
        assert torch.equal(again[key], value), key
        assert again[key].device.type == "cpu"


def test_a_safetensors_checkpoint_builds_the_same_model(source_pt: Path, tmp_path: Path) -> None:
    save_file(read_state_dict(source_pt), tmp_path / "source.safetensors")

    def built(path: Path) -> dict[str, torch.Tensor]:
        cfg = ModelConfig(name="digits-cnn", weights="none", checkpoint=str(path))
        model = build_model(cfg, num_classes=5, image_size=16)
        assert model.weights == f"checkpoint:{path.name}"
        return model.model.state_dict()

    from_pt, from_st = built(source_pt), built(tmp_path / "source.safetensors")
    for key, value in from_pt.items():
        if not key.startswith("fc."):  # the new head is drawn afresh each time
            assert torch.equal(from_st[key], value), key


def test_a_data_parallel_prefix_is_stripped(tmp_path: Path) -> None:
    state = DigitsCNN(3).state_dict()
    save_file({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.safetensors")
    assert set(read_state_dict(tmp_path / "dp.safetensors")) == set(state)


def test_a_missing_file_reads_as_for_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    assert _error(path) == f"model.checkpoint '{path}' does not exist"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not a safetensors file", "(SafetensorError: Error while deserializing header"),
        (b"", "(SafetensorError: Error while deserializing header"),
    ],
    ids=["junk", "empty-file"],
)
def test_a_file_safetensors_cannot_read_is_one_line(
    content: bytes, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    message = _error(path)
    assert message.startswith(f"checkpoint {path} is not a file safetensors can read {reason}")


def test_a_torch_file_named_safetensors_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "really-a.safetensors"
    torch.save(DigitsCNN(3).state_dict(), path)
    assert _error(path).startswith(f"checkpoint {path} is not a file safetensors can read (")


def test_no_tensors_is_no_state_dict(tmp_path: Path) -> None:
    save_file({}, tmp_path / "empty.safetensors")
    message = _error(tmp_path / "empty.safetensors")
    assert message.startswith(f"checkpoint {tmp_path / 'empty.safetensors'} holds no state dict")
    assert message.endswith("found an empty dict")


def test_missing_safetensors_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file(DigitsCNN(3).state_dict(), tmp_path / "ck.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert _error(tmp_path / "ck.safetensors") == (
        "checkpoint ck.safetensors is a safetensors file, which needs the safetensors package: "
        "install tether[timm] or tether[transformers]"
    )
    torch.save(DigitsCNN(3).state_dict(), tmp_path / "ck.pt")  # torch files need no safetensors
    assert set(read_state_dict(tmp_path / "ck.pt")) == set(DigitsCNN(3).state_dict())


def test_finetune_exits_2_on_a_bad_safetensors_checkpoint(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_digits_recipe()))
    args = ["finetune", str(recipe), "--cache-dir", str(cache_dir),
            "--set", f"model.checkpoint={tmp_path / 'bad.safetensors'}"]  # fmt: skip
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("tether: error: checkpoint ")
    assert "is not a file safetensors can read" in lines[0]
