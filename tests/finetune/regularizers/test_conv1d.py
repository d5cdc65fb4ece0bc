"""transformers' Conv1D (GPT-2's linear layer, weight stored ``[in, out]``) is measured by its
output units: every regulariser reads it as the ``nn.Linear`` with weight ``W.T``."""

from __future__ import annotations

import math
from typing import Any
from typing import Literal

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from tether.finetune.layers import LayerGroups
from tether.finetune.regularizers import DistanceConstraint
from tether.finetune.regularizers import DistancePenalty
from tether.finetune.regularizers import _plan
from tether.finetune.regularizers._learned import constrained_tensors
from tether.finetune.regularizers._rowset import RowSet
from tether.finetune.regularizers._tpgm import TPGM


pytest.importorskip("transformers")
from transformers import GPT2Config  # noqa: E402
from transformers import GPT2ForSequenceClassification  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402


GROUPS = LayerGroups({"lower": ("c1",), "upper": ("l1", "c2"), "head": ("head",)})
GPT2_GROUPS = LayerGroups(
    {
        "embed": ("transformer.wte", "transformer.wpe"),
        "blocks": ("transformer.h",),
        "neck": ("transformer.ln_f",),
        "head": ("score",),
    }
)
"""Given, so that these tests do not depend on the layer-group rules for transformers."""


class _Net(nn.Module):
    """``4 -> 6 -> 4 -> 4 -> 3``: two transposed layers, a plain one, a plain head; rows of
    length 4 (c1, c2 and the head) share a block, the linear's rows are 6 long."""

    def __init__(self, transposed: bool) -> None:
        super().__init__()
        layer = (lambda i, o: Conv1D(o, i)) if transposed else nn.Linear  # type: ignore[no-untyped-call]
        self.c1 = layer(4, 6)
        self.l1 = nn.Linear(6, 4)
        self.c2 = layer(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c2(torch.tanh(self.l1(torch.tanh(self.c1(x))))))


def _twins(seed: int = 0) -> tuple[_Net, _Net]:
    """The same function twice: with Conv1D layers, and with nn.Linear holding ``W.T``."""
    torch.manual_seed(seed)
    conv = _Net(transposed=True)
    linear = _Net(transposed=False)
    with torch.no_grad():
        for name in ("c1", "c2"):
            linear.get_parameter(f"{name}.weight").copy_(conv.get_parameter(f"{name}.weight").T)
            linear.get_parameter(f"{name}.bias").copy_(conv.get_parameter(f"{name}.bias"))
        for name in ("l1", "head"):
            linear.get_submodule(name).load_state_dict(conv.get_submodule(name).state_dict())
    return conv, linear


def _move(conv: _Net, linear: _Net, *, seed: int = 1, size: float = 1.0) -> None:
    """Add the same random step to both twins (transposed for the Conv1D weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in linear.named_parameters():
            step = torch.randn(p.shape, generator=g) * size
            p.add_(step)
            q = conv.get_parameter(name)
            q.add_(step.T if _transposed(conv, name) else step)


def _transposed(model: nn.Module, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    return attr == "weight" and isinstance(model.get_submodule(owner), Conv1D)


def _linear_weights(model: _Net) -> dict[str, torch.Tensor]:
    """Every weight as the nn.Linear's ``[out, in]`` (a Conv1D's transposed)."""
    return {
        name: p.detach().T if _transposed(model, name) else p.detach()
        for name, p in model.named_parameters()
        if name.endswith("weight")
    }


def _constraint(model: nn.Module, **kwargs: object) -> DistanceConstraint:
    options: dict[str, object] = {"norm": "mars", "radius": 0.3, "head_radius": 0.4}
    options.update(kwargs)
    return DistanceConstraint(model, head="head", groups=GROUPS, **options)  # type: ignore[arg-type]


def test_a_conv1d_distance_is_the_largest_l1_norm_of_a_column() -> None:
    conv, _ = _twins()
    constraint = _constraint(conv, radius=math.inf, head_radius=math.inf)
    assert {t.name for t in constraint.targets if t.transposed} == {"c1.weight", "c2.weight"}
    w0 = conv.c1.weight.detach().clone()
    with torch.no_grad():
        conv.c1.weight.add_(torch.randn(4, 6))  # [in, out]
    expected = float((conv.c1.weight.detach() - w0).abs().sum(dim=0).max())
    rows = float((conv.c1.weight.detach() - w0).abs().sum(dim=1).max())
    assert constraint.distances()["lower"] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(rows), "rows of the stored tensor would give another value"


@pytest.mark.parametrize("chunk", [None, 0, 16], ids=["cpu-chunks", "one-chunk", "packed"])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize(
    ("norm", "mode"), [("mars", "rescale"), ("mars", "exact"), ("frob", "rescale")]
)
def test_projecting_a_conv1d_is_projecting_the_linear_with_its_transpose(
    norm: str, mode: str, relative: bool, chunk: int | None
) -> None:
    conv, linear = _twins()
    radius = 0.2 if relative else 0.3
    constraints = [
        _constraint(m, norm=norm, mode=mode, relative=relative, radius=radius, chunk=chunk)
        for m in (conv, linear)
    ]
    _move(conv, linear)
    moved = {name: w.clone() for name, w in _linear_weights(conv).items()}
    for constraint in constraints:
        constraint.project_()
    projected, oracle = _linear_weights(conv), _linear_weights(linear)
    for name in oracle:
        torch.testing.assert_close(projected[name], oracle[name], rtol=1e-6, atol=1e-6)
    assert not torch.equal(projected["c1.weight"], moved["c1.weight"]), "it was outside"
    distances = [c.distances() for c in constraints]
    assert distances[0] == pytest.approx(distances[1], rel=1e-5)
    if not relative:
        bound = {"lower": radius, "upper": radius, "head": 0.4}
        assert all(d <= bound[g] * (1 + 1e-5) for g, d in distances[0].items())


@pytest.mark.filterwarnings("error")  # an out= buffer of the wrong shape warns that it resized
@pytest.mark.parametrize("chunk", [0, 16], ids=["one-chunk", "chunks-of-its-own"])
@pytest.mark.parametrize("mode", ["rescale", "exact"])
def test_the_allocating_workspace_of_other_devices_projects_a_conv1d_alike(
    mode: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    init = _plan._Workspace.__init__

    def allocating(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "persistent": False})  # as on a GPU: no kept buffers

    monkeypatch.setattr(_plan._Workspace, "__init__", allocating)
    conv, linear = _twins()
    constraints = [_constraint(m, mode=mode, chunk=chunk) for m in (conv, linear)]
    _move(conv, linear)
    for constraint in constraints:
        constraint.project_()
    projected, oracle = _linear_weights(conv), _linear_weights(linear)
    for name in oracle:
        torch.testing.assert_close(projected[name], oracle[name], rtol=1e-6, atol=1e-6)


def test_the_mars_penalty_reads_a_conv1d_by_its_columns() -> None:
    conv, linear = _twins()
    penalties = [
        DistancePenalty(
            m, head="head", groups=GROUPS, distance="mars", alpha=1.0, beta=0.5, include=include
        )
        for include in ("weights", "all")
        for m in (conv, linear)
    ]
    _move(conv, linear)
    values = [float(p(torch.zeros(1)).detach()) for p in penalties]
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert values[2] == pytest.approx(values[3], rel=1e-6)
    assert values[0] > 0


@pytest.mark.parametrize("convention", ["reference", "tether"])
def test_learned_radii_read_a_conv1d_by_its_columns(convention: str) -> None:
    conv, linear = _twins()
    found = [
        constrained_tensors(m, GROUPS, head="head", convention=convention)  # type: ignore[arg-type]
        for m in (conv, linear)
    ]
    layouts = {id(t.param): t.layout for t in found[0]}
    assert layouts[id(conv.c1.weight)] == "columns"
    assert layouts[id(conv.l1.weight)] == "rows"
    _move(conv, linear)
    sets = [RowSet([t.param for t in f], [t.layout for t in f]) for f in found]
    norms = [s.tensor_max(s.row_norms(s.gather())) for s in sets]
    torch.testing.assert_close(norms[0], norms[1])


def test_tpgm_learns_the_same_radii_for_a_conv1d_as_for_its_linear_twin() -> None:
    conv, linear = _twins()
    g = torch.Generator().manual_seed(3)
    batch = (torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g))
    tpgms = []
    for m in (conv, linear):
        tensors = constrained_tensors(m, GROUPS, head="head", convention="tether")
        pairs = [(t.param, t.layout) for t in tensors]
        tpgms.append(TPGM(m, pairs, heldout=lambda: batch, iters=3, init="loose"))
    _move(conv, linear, size=0.3)
    for tpgm in tpgms:
        tpgm.fit(3)
    radii = [tpgm.radii for tpgm in tpgms]
    assert radii[0] is not None
    torch.testing.assert_close(radii[0], radii[1], rtol=1e-5, atol=1e-7)
    projected, oracle = _linear_weights(conv), _linear_weights(linear)
    for name in oracle:
        torch.testing.assert_close(projected[name], oracle[name], rtol=1e-5, atol=1e-6)


def _gpt2() -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    config = GPT2Config(  # type: ignore[call-arg]
        n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16, num_labels=3,
        pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    return GPT2ForSequenceClassification(config)


def test_gpt2_warns_about_its_embeddings_only() -> None:
    with pytest.warns(UserWarning, match="free") as caught:
        constraint = DistanceConstraint(
            _gpt2(), norm="mars", radius=1.0, head_radius=1.0, head="score", groups=GPT2_GROUPS
        )
    message = " ".join(str(w.message) for w in caught)
    assert "2 parameter tensor(s) free" in message
    assert "transformer.wte.weight, transformer.wpe.weight;" in message
    assert "c_attn" not in message
    assert sum(t.transposed for t in constraint.targets) == 8  # 4 Conv1D per block, 2 blocks


def test_gpt2_with_its_embeddings_named_free_warns_nothing(
    recwarn: pytest.WarningsRecorder,
) -> None:
    DistanceConstraint(
        _gpt2(), norm="mars", radius=1.0, head_radius=1.0, head="score", groups=GPT2_GROUPS,
        free=["transformer.wte", "transformer.wpe"],
    )  # fmt: skip
    assert not [w for w in recwarn if "free" in str(w.message)]


@pytest.mark.parametrize("mode", ["rescale", "exact"])
def test_gpt2_trains_inside_its_radius_with_attach(mode: Literal["rescale", "exact"]) -> None:
    model = _gpt2()
    constraint = DistanceConstraint(
        model, norm="mars", radius=0.05, head_radius=0.5, head="score", mode=mode,
        groups=GPT2_GROUPS, free=["transformer.wte", "transformer.wpe"],
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    constraint.attach(optimizer)
    g = torch.Generator().manual_seed(2)
    tokens, labels = (
        torch.randint(1, 50, (4, 8), generator=g),
        torch.randint(0, 3, (4,), generator=g),
    )
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(input_ids=tokens).logits, labels).backward()
        optimizer.step()
        distances = constraint.distances()
        assert all(d <= constraint.radii[k] * (1 + 1e-5) for k, d in distances.items())
    assert set(distances) == {"blocks", "neck", "head"}, "the embeddings are left free"
    assert distances["blocks"] == pytest.approx(0.05, rel=1e-4), "on the boundary"


@pytest.mark.parametrize(("norm", "mode"), [("mars", "rescale"), ("mars", "exact")])
def test_the_plan_projects_a_conv1d_as_the_reference_loop_does(norm: str, mode: str) -> None:
    """Against the plain per-tensor loop of :mod:`tether.testing.reference`, which reads a
    transposed target through ``param.T`` on its own."""
    from tether.testing.reference import NaiveProjection

    conv, _ = _twins()
    oracle_model, _ = _twins()
    constraint = _constraint(conv, norm=norm, mode=mode)
    oracle_constraint = _constraint(oracle_model, norm=norm)
    oracle = NaiveProjection(
        oracle_constraint.targets,
        oracle_constraint.reference,
        oracle_constraint.radii,
        norm=norm,  # type: ignore[arg-type]
        exact=mode == "exact",
        relative=False,
    )
    for model in (conv, oracle_model):
        _move(model, _twins()[1])
    constraint.project_()
    oracle.project_()
    for (name, got), want in zip(conv.named_parameters(), oracle_model.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
