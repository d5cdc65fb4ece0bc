"""L2-SP-Fisher: the Fisher by hand and by vmap, its cache, the source network, end to end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from typing import Literal

import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from tests.finetune.conftest import perturb_
from tests.finetune.conftest import tiny_net
from tests.finetune.regularizers.conftest import penalty_context
from tests.finetune.regularizers.conftest import penalty_value
from tether.errors import ConfigError
from tether.finetune.data import DataConfig
from tether.finetune.layers import layer_groups
from tether.finetune.models import ModelConfig
from tether.finetune.models import build_model
from tether.finetune.models.digits_cnn import pretrained_source_checkpoint
from tether.finetune.models.source import source_images
from tether.finetune.models.source import source_network
from tether.finetune.models.source import source_task
from tether.finetune.recipe import recipe_from_dict
from tether.finetune.regularizers import PenaltyConfig
from tether.finetune.regularizers import PenaltyContext
from tether.finetune.regularizers import build_penalty
from tether.finetune.regularizers._fisher import NO_SOURCE
from tether.finetune.regularizers._fisher import fisher_diagonal
from tether.finetune.regularizers._fisher import fisher_importance
from tether.finetune.regularizers._fisher import source_fisher
from tether.finetune.regularizers._targets import collect_targets
from tether.finetune.run import run
from tether.testing.specs import tiny_digits_recipe


DIGITS_SOURCE = ModelConfig(name="digits-cnn", weights="digits-source")


# ------------------------------------------------------------------------------ L2-SP-Fisher


def test_fisher_of_softmax_regression_is_p_times_one_minus_p_times_x_squared() -> None:
    """The true Fisher (labels drawn from the model), not the empirical one: closed form."""
    linear = nn.Linear(12, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(3, 12, generator=torch.Generator().manual_seed(3)))
    model = nn.Sequential(nn.Flatten(), linear)
    n = 3000
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (n, 3, 2, 2), dtype=torch.uint8, generator=gen)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255

    fisher = fisher_diagonal(model, images, transform=transform, skip="head", samples=n)
    x = transform(images).flatten(1)
    with torch.no_grad():
        p = torch.softmax(model(transform(images)), dim=1)
    exact = ((p * (1 - p)).unsqueeze(2) * x.square().unsqueeze(1)).mean(0)
    assert set(fisher) == {"1.weight"}
    torch.testing.assert_close(fisher["1.weight"], exact, rtol=0.15, atol=0)


def test_fisher_is_deterministic_for_a_seed_and_vmap_equals_the_loop() -> None:
    model = tiny_net().eval()
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=gen)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255

    def fisher(**kwargs: Any) -> dict[str, torch.Tensor]:
        return fisher_diagonal(model, images, transform=transform, skip="fc", **kwargs)

    first = fisher(samples=8, seed=0)
    assert not any(n.startswith("fc") for n in first)
    assert set(first) == {n for n, _ in model.named_parameters() if not n.startswith("fc")}
    for name, value in first.items():
        assert value.shape == model.get_parameter(name).shape
    torch.testing.assert_close(fisher(samples=8, seed=0), first, rtol=0, atol=0)
    torch.testing.assert_close(fisher(samples=8, seed=0, vectorise=False), first)
    other = fisher(samples=8, seed=1)
    assert any(not torch.equal(other[n], first[n]) for n in first)
    assert not model.training  # the mode is restored


def _digits_source(cache_dir: Path) -> Any:
    return source_task(DIGITS_SOURCE, DataConfig(), folder=None, cache_dir=cache_dir)


def _digits_model(cache_dir: Path) -> tuple[nn.Module, str]:
    data = DataConfig()
    built = build_model(
        DIGITS_SOURCE,
        num_classes=len(data.target_classes),
        image_size=data.image_size,
        checkpoint=pretrained_source_checkpoint(data, cache_dir=cache_dir),
    )
    return built.model, built.head


def test_digits_fisher_is_positive_normalised_and_shaped_like_the_model(
    cache_dir: Path, tmp_path: Path
) -> None:
    model, head = _digits_model(cache_dir)
    groups = layer_groups(model, head=head)
    ctx = penalty_context(
        model, tmp_path, head=head, groups=groups, source=_digits_source(cache_dir)
    )
    fisher = source_fisher(ctx, samples=64)
    shapes = {
        t.name: tuple(t.param.shape)
        for t in collect_targets(model, groups)
        if t.kind == "matrix" and t.group != "head"
    }
    assert len(shapes) == 3
    importance = fisher_importance(fisher, shapes, epsilon=1e-3)
    assert set(importance) == set(shapes)
    for name, value in importance.items():
        assert tuple(value.shape) == shapes[name]
        assert bool((value >= 1e-3).all())
        assert bool(torch.isfinite(value).all())
    entries = torch.cat([v.flatten() for v in importance.values()]).double()
    assert float(entries.mean()) == pytest.approx(1 + 1e-3, rel=1e-6)
    assert float(entries.std()) > 0  # not uniform: the Fisher does weigh the weights


def test_fisher_is_cached_and_keyed(
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import tether.finetune.regularizers._fisher as fisher_module

    model, head = _digits_model(cache_dir)
    groups = layer_groups(model, head=head)
    ctx = penalty_context(
        model, tmp_path, head=head, groups=groups, source=_digits_source(cache_dir)
    )
    cfg = PenaltyConfig(name="l2-sp-fisher", alpha=0.1, fisher_samples=32)
    first = build_penalty(cfg, ctx)
    assert "computing the diagonal Fisher information" in capsys.readouterr().err
    files = list((tmp_path / "fisher").glob("*.pt"))
    assert len(files) == 1
    assert set(torch.load(files[0], weights_only=True)["fisher"]) >= {"block1.0.weight"}

    def recompute(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise AssertionError("the cached Fisher information was recomputed")

    with monkeypatch.context() as patch:
        patch.setattr(fisher_module, "fisher_diagonal", recompute)
        again = build_penalty(cfg, ctx)
    assert "reusing cached Fisher information" in capsys.readouterr().err
    perturb_(model, 0.05)
    assert penalty_value(again) == pytest.approx(penalty_value(first), rel=1e-6)
    build_penalty(PenaltyConfig(name="l2-sp-fisher", fisher_samples=16), ctx)
    assert len(list((tmp_path / "fisher").glob("*.pt"))) == 2
    assert not list((tmp_path / "fisher").glob("*.tmp"))


@pytest.mark.parametrize("include", ["weights", "all"])
def test_fisher_of_ones_gives_l2sp(
    include: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tether.finetune.regularizers._fisher as fisher_module

    def ones(ctx: PenaltyContext, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {n: torch.full_like(p, 0.25) for n, p in ctx.model.named_parameters()}

    monkeypatch.setattr(fisher_module, "source_fisher", ones)
    model = tiny_net()
    common: dict[str, Any] = {"alpha": 0.3, "beta": 0.07, "include": include}
    fisher = build_penalty(
        PenaltyConfig(name="l2-sp-fisher", fisher_epsilon=0.0, **common),
        penalty_context(model, tmp_path),
    )
    l2sp = build_penalty(PenaltyConfig(name="l2-sp", **common), penalty_context(model, tmp_path))
    perturb_(model, 0.2)
    assert penalty_value(fisher) == pytest.approx(penalty_value(l2sp), rel=1e-6)
    # F = 1 everywhere, plus epsilon = 1: twice l2-sp's pretrained term, the same head term
    floored = build_penalty(
        PenaltyConfig(name="l2-sp-fisher", fisher_epsilon=1.0, **common),
        penalty_context(model, tmp_path),
    )
    l2sp_now = build_penalty(
        PenaltyConfig(name="l2-sp", **common), penalty_context(model, tmp_path)
    )
    perturb_(model, 0.2, seed=5)
    head = 0.07 / 2 * float(model.fc.weight.detach().double().square().sum())
    assert penalty_value(l2sp_now) - head > 0.1
    assert penalty_value(floored) - head == pytest.approx(
        2 * (penalty_value(l2sp_now) - head), rel=1e-5
    )


def test_fisher_needs_source_images(tmp_path: Path) -> None:
    cfg = PenaltyConfig(name="l2-sp-fisher")
    with pytest.raises(ConfigError) as info:
        build_penalty(cfg, penalty_context(tiny_net(), tmp_path))
    assert str(info.value) == NO_SOURCE
    # a torchvision network on the digits task: no source images; fails before any download
    provider = source_task(
        ModelConfig(name="resnet18", weights="IMAGENET1K_V1"), DataConfig(), folder=None,
        cache_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        build_penalty(cfg, penalty_context(tiny_net(), tmp_path, source=provider))
    assert str(info.value) == (
        "penalty l2-sp-fisher needs source images: set penalty.fisher_data to a folder of "
        "source-domain images (the digits task provides its own)"
    )
    # alpha = 0: no Fisher term, nothing loaded
    build_penalty(
        PenaltyConfig(name="l2-sp-fisher", alpha=0.0), penalty_context(tiny_net(), tmp_path)
    )


def test_fisher_names_a_parameter_that_does_not_match() -> None:
    fisher = {"a.weight": torch.ones(2, 3)}
    with pytest.raises(ConfigError, match="no parameter 'b.weight'"):
        fisher_importance(fisher, {"a.weight": (2, 3), "b.weight": (4,)}, epsilon=0.0)
    with pytest.raises(
        ConfigError, match=r"'a.weight' is \[2, 3\] in the source network but \[3, 2\]"
    ):
        fisher_importance(fisher, {"a.weight": (3, 2)}, epsilon=0.0)
    with pytest.raises(ConfigError, match="0.0 on average"):
        fisher_importance({"a.weight": torch.zeros(2, 3)}, {"a.weight": (2, 3)}, epsilon=0.0)


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_a_torchvision_source_network_maps_onto_the_fine_tuned_model(
    head: Literal["gap", "flatten"],
) -> None:
    """resnet18 with its 1000-way fc: every parameter outside the head matches by name."""
    source = resnet18()
    built = build_model(
        ModelConfig(name="resnet18", weights="none", head=head), num_classes=3, image_size=32
    )
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    fisher = fisher_diagonal(
        source, images, transform=lambda x: x.float() / 255, skip=built.head, samples=2
    )
    groups = layer_groups(built.model, head=built.head)
    shapes = {
        t.name: tuple(t.param.shape)
        for t in collect_targets(built.model, groups)
        if t.group != "head"
    }
    importance = fisher_importance(fisher, shapes, epsilon=1e-3)
    assert len(importance) == len(shapes) > 20


def test_source_network_and_images(cache_dir: Path, tmp_path: Path) -> None:
    network, identity = source_network(DIGITS_SOURCE, DataConfig(), cache_dir=cache_dir)
    assert network.get_submodule("fc").out_features == 5  # the source head, 5 source classes
    assert identity.startswith("digits-cnn:checkpoint:")
    path = pretrained_source_checkpoint(DataConfig(), cache_dir=cache_dir)
    from_file = ModelConfig(name="digits-cnn", weights="none", checkpoint=str(path))
    again, _ = source_network(from_file, DataConfig(), cache_dir=cache_dir)
    for (name, a), (_, b) in zip(
        network.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="model.weights is 'none'"):
        source_network(
            ModelConfig(name="resnet18", weights="none"), DataConfig(), cache_dir=tmp_path
        )

    images, key = source_images(DIGITS_SOURCE, DataConfig(), folder=None, cache_dir=cache_dir)
    assert images.dtype == torch.uint8
    assert images.shape[1:] == (3, 16, 16)
    assert len(images) > 500  # every image of the five source digits
    folder = tmp_path / "source"
    (folder / "nested").mkdir(parents=True)
    for i in range(3):
        array = np.full((20, 24, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(array).save(folder / ("nested" if i else ".") / f"{i}.png")
    images, folder_key = source_images(
        DIGITS_SOURCE, DataConfig(), folder=str(folder), cache_dir=tmp_path
    )
    assert images.shape == (3, 3, 16, 16)
    assert folder_key != key
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="penalty.fisher_data .* holds no images"):
        source_images(DIGITS_SOURCE, DataConfig(), folder=str(empty), cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="penalty.fisher_data .* does not exist"):
        source_images(
            DIGITS_SOURCE, DataConfig(), folder=str(tmp_path / "nope"), cache_dir=tmp_path
        )


def test_source_task_is_lazy(tmp_path: Path) -> None:
    provider = source_task(
        ModelConfig(name="resnet18", weights="none"), DataConfig(), folder=str(tmp_path / "no"),
        cache_dir=tmp_path,
    )  # fmt: skip
    assert callable(provider)  # nothing checked or loaded yet
    with pytest.raises(ConfigError, match="does not exist"):
        provider()


# ---------------------------------------------------------------------------------- end to end


def _recipe(penalty: dict[str, Any]) -> dict[str, Any]:
    recipe = tiny_digits_recipe(epochs=2)
    recipe["constraint"] = {"norm": "none"}
    recipe["penalty"] = penalty
    return recipe


def _run(recipe: dict[str, Any], cache_dir: Path) -> dict[str, Any]:
    return run(recipe_from_dict(recipe), emit=lambda event: None, cache_dir=cache_dir)


@pytest.mark.parametrize(
    "penalty",
    [
        {"name": "l1-sp", "alpha": 0.01, "beta": 0.01},
        {"name": "bss", "alpha": 0.001, "k": 2},
        {"name": "l2-sp-fisher", "alpha": 0.1, "beta": 0.01, "fisher_samples": 64},
    ],
)
def test_each_new_penalty_trains(penalty: dict[str, Any], cache_dir: Path) -> None:
    result = _run(_recipe(penalty), cache_dir)
    assert 0 <= result["test_accuracy"] <= 1
    assert math.isfinite(result["val_accuracy"])
    assert result["distances"]["block1"] > 0


def test_fisher_run_from_a_folder_and_a_second_run_reuses_the_cache(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tether.finetune.data.digits import digits_images

    folder = tmp_path / "digits-as-files"
    folder.mkdir()
    images, labels = digits_images(16)
    for i in torch.nonzero(labels < 5).flatten()[:40].tolist():
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    penalty = {
        "name": "l2-sp-fisher",
        "alpha": 0.1,
        "fisher_samples": 32,
        "fisher_data": str(folder),
    }
    first = _run(_recipe(penalty), cache_dir)
    assert "on 32 source images" in capsys.readouterr().err
    second = _run(_recipe(penalty), cache_dir)
    assert "reusing cached Fisher information" in capsys.readouterr().err
    assert first["test_accuracy"] == second["test_accuracy"]
    assert first["distances"] == second["distances"]
