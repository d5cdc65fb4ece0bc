"""Cached results are the same bit for bit whatever thread count the process that fills them has.

Each cache is filled twice, into two cache folders, by this process set to one and then two
intra-op threads. The sizes are the smallest at which the two differ when the computation runs
on the caller's threads (resnet18 for DELTA and the Fisher: the digits network's kernels do not
split their sums across threads at small sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from tether.finetune._determinism import cache_threads
from tether.finetune.data import DataConfig
from tether.finetune.layers import layer_groups
from tether.finetune.models.digits_cnn import pretrained_source_checkpoint
from tether.finetune.regularizers import PenaltyContext
from tether.finetune.regularizers._context import SourceTask
from tether.finetune.regularizers._delta_scores import delta_channel_weights
from tether.finetune.regularizers._fisher import source_fisher


Tensors = dict[str, torch.Tensor]
FillCache = Callable[[Path], Tensors]


@pytest.fixture(autouse=True)
def _restore_thread_count() -> Iterator[None]:
    """The tests set the process's thread count: give the next test the one this one had."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _digits_source(cache_dir: Path) -> Tensors:
    path = pretrained_source_checkpoint(
        DataConfig(), cache_dir=cache_dir, epochs=1, widths=(4, 8, 16)
    )
    state: Tensors = torch.load(path, weights_only=True)
    return state


def _resnet_context(cache_dir: Path) -> PenaltyContext:
    """A random resnet18 and eight random 16x16 images, as training and as source images."""
    torch.manual_seed(0)
    model = resnet18(num_classes=5)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=gen)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255

    source = SourceTask(model=model, images=images, transform=transform, fingerprint="resnet")
    return PenaltyContext(
        model=model,
        head="fc",
        groups=layer_groups(model, head="fc"),
        train_images=images,
        train_labels=torch.randint(0, 5, (8,), generator=gen),
        transform=transform,
        device=torch.device("cpu"),
        cache_dir=cache_dir,
        cache_key="resnet-and-random-images",
        source=lambda: source,
    )


def _delta_scores(cache_dir: Path) -> Tensors:
    ctx = _resnet_context(cache_dir)
    return delta_channel_weights(
        ctx, layers=["layer4.1.conv2"], probe_epochs=1, ablation_batches=1, batch_size=8
    )


def _fisher(cache_dir: Path) -> Tensors:
    return source_fisher(_resnet_context(cache_dir), samples=8)


CACHES: dict[str, FillCache] = {
    "digits source network": _digits_source,
    "delta channel scores": _delta_scores,
    "fisher diagonal": _fisher,
}


@pytest.mark.parametrize("fill", CACHES.values(), ids=list(CACHES))
def test_a_cache_holds_the_same_tensors_whatever_thread_count_filled_it(
    fill: FillCache, tmp_path: Path
) -> None:
    filled = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        filled[threads] = fill(tmp_path / f"{threads}-threads")
        assert torch.get_num_threads() == threads  # the caller's count is given back
    one, two = filled[1], filled[2]
    assert one.keys() == two.keys()
    differ = [name for name in one if not torch.equal(one[name], two[name])]
    assert not differ, f"{len(differ)} of {len(one)} tensors differ, e.g. {differ[0]}"


@pytest.mark.parametrize("fill", CACHES.values(), ids=list(CACHES))
def test_a_cache_filled_by_another_torch_version_is_not_reused(
    fill: FillCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(tmp_path)
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    fill(tmp_path)
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 2


def test_cache_threads_gives_the_callers_count_back_after_an_error() -> None:
    torch.set_num_threads(2)
    inside: list[int] = []

    def fail_with_one_thread() -> None:
        with cache_threads():
            inside.append(torch.get_num_threads())
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        fail_with_one_thread()
    assert inside == [1]
    assert torch.get_num_threads() == 2
