"""The learned-radius methods in a training loop of your own: FTP and SPD as drop-in optimisers
(wrapped or compiled models, GradScaler), TPGM attached to any optimiser with held-out batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

from tether.errors import ConfigError
from tether.finetune.layers import LayerGroups
from tether.finetune.regularizers._ftp import FTP
from tether.finetune.regularizers._learned import constrained_tensors
from tether.finetune.regularizers._spd import SPD
from tether.finetune.regularizers._tpgm import TPGM


Wrap = Callable[[nn.Module], nn.Module]
GROUPS = LayerGroups({"extractor": ("0",), "head": ("2",)})
STEPS = 4


@pytest.fixture(params=["DataParallel", "DistributedDataParallel", "compile"])
def wrap(request: pytest.FixtureRequest) -> Wrap:
    if request.param == "DistributedDataParallel":
        request.getfixturevalue("process_group")
        return nn.parallel.DistributedDataParallel
    if request.param == "compile":
        return lambda model: torch.compile(model, backend="eager")  # type: ignore[return-value]
    return nn.DataParallel


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def _ftp(net: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    return FTP(net.parameters(), lr=0.05, exclude=head.parameters(), radius_lr=0.05)


def _spd(net: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    return SPD(net.parameters(), lr=0.05, exclude=head.parameters())


OPTIMIZERS = [pytest.param(_ftp, id="FTP"), pytest.param(_spd, id="SPD")]
Factory = Callable[[nn.Module, nn.Module], torch.optim.Optimizer]


def _train(
    factory: Factory,
    wrap: Wrap | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    clip: float | None = None,
) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    """``STEPS`` steps of the usual loop; the model and its optimiser."""
    model = _model()
    net = wrap(model) if wrap is not None else model
    optimizer = factory(net, model[2])
    x, y = _batch()
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        if scaler is None:
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            continue
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(optimizer)  # the gradients the clip sees are the true ones
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
    return model, optimizer


def _assert_same_weights(a: nn.Module, b: nn.Module, **tolerance: float) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name, **tolerance)  # type: ignore[arg-type]


@pytest.mark.parametrize("factory", OPTIMIZERS)
def test_a_wrapped_model_steps_exactly_as_the_bare_one(factory: Factory, wrap: Wrap) -> None:
    bare, _ = _train(factory)
    wrapped, optimizer = _train(factory, wrap)
    _assert_same_weights(wrapped, bare, rtol=0.0, atol=0.0)
    moved = (wrapped.get_parameter("0.weight") - _model().get_parameter("0.weight")).abs().sum()
    assert moved > 0
    if isinstance(optimizer, FTP):
        held = {id(p) for p in optimizer.constrained_params}
        assert held == {id(wrapped[0].weight), id(wrapped[0].bias)}, "the head by identity"


@pytest.mark.parametrize("clip", [None, 0.5], ids=["plain", "unscale-and-clip"])
@pytest.mark.parametrize("factory", OPTIMIZERS)
def test_grad_scaler_steps_them_as_without_it(factory: Factory, clip: float | None) -> None:
    bare, plain = _train(factory, clip=clip)
    scaled, optimizer = _train(factory, scaler=torch.amp.GradScaler("cpu"), clip=clip)
    _assert_same_weights(scaled, bare, rtol=1e-6, atol=1e-7)
    assert optimizer.param_groups is optimizer.base.param_groups  # type: ignore[attr-defined]
    if isinstance(optimizer, FTP) and isinstance(plain, FTP):
        torch.testing.assert_close(optimizer.radii, plain.radii, rtol=1e-6, atol=1e-9)


def test_a_step_the_grad_scaler_skips_changes_neither_weights_nor_radii() -> None:
    model, ftp = _train(_ftp)
    assert isinstance(ftp, FTP)
    before = [p.detach().clone() for p in model.parameters()]
    radii, t = ftp.radii.clone(), ftp.t
    scaler = torch.amp.GradScaler("cpu")
    ftp.zero_grad()
    x, y = _batch()
    scaler.scale(F.cross_entropy(model(x), y) * torch.inf).backward()
    scaler.step(ftp)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert torch.equal(ftp.radii, radii)
    assert ftp.t == t


def _tpgm(model: nn.Module, heldout: Any, **kwargs: Any) -> TPGM:
    tensors = constrained_tensors(model, GROUPS, head="2")
    pairs = [(t.param, t.layout) for t in tensors]
    return TPGM(model, pairs, heldout=heldout, radius_lr=0.05, **kwargs)


def _heldout_loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    x, y = _batch(seed=9)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _train_with_tpgm(wrap: Wrap | None = None, *, every: int = 2) -> tuple[nn.Module, TPGM]:
    model = _model()
    net = wrap(model) if wrap is not None else model
    tpgm = _tpgm(net, _heldout_loader(), every=every)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    tpgm.attach(optimizer)
    x, y = _batch()
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return model, tpgm


def test_tpgm_attached_to_any_optimizer_learns_its_radii_from_a_dataloader() -> None:
    model, tpgm = _train_with_tpgm(every=2)
    assert tpgm.steps == STEPS
    assert tpgm.updates == STEPS // 2
    assert tpgm.radii is not None
    assert tpgm.names == ["0.weight", "0.bias"]
    distances = torch.tensor(list(tpgm.distances().values()))
    assert torch.all(distances <= tpgm.radii * (1 + 1e-5))
    free, _ = _train_with_tpgm(every=STEPS + 1)  # never updated: never projected
    assert not torch.equal(free.get_parameter("0.weight"), model.get_parameter("0.weight"))


def test_tpgm_on_a_wrapped_model_learns_what_it_learns_on_the_bare_one(wrap: Wrap) -> None:
    bare, bare_tpgm = _train_with_tpgm()
    wrapped, tpgm = _train_with_tpgm(wrap)
    assert tpgm.names == bare_tpgm.names, "the inner model's names"
    assert tpgm.radii is not None
    torch.testing.assert_close(tpgm.radii, bare_tpgm.radii)
    _assert_same_weights(wrapped, bare, rtol=1e-6, atol=1e-7)


def test_a_step_the_grad_scaler_skips_does_not_count_for_tpgm() -> None:
    model = _model()
    tpgm = _tpgm(model, _heldout_loader())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tpgm.attach(optimizer)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _batch()
    scaler.scale(F.cross_entropy(model(x), y) * torch.inf).backward()
    scaler.step(optimizer)
    assert (tpgm.steps, tpgm.updates) == (0, 0)


def test_heldout_batches_that_run_out_are_a_config_error() -> None:
    model = _model()
    tpgm = _tpgm(model, iter([_batch(seed=5)]))
    tpgm.update_radii()  # the one batch
    with pytest.raises(ConfigError, match="ran out"):
        tpgm.update_radii()
