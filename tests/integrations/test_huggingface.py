"""The transformers callback: ``Trainer.train()`` moves the weights as a plain loop does."""

from __future__ import annotations

import importlib
from pathlib import Path
import sys

from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.state import AcceleratorState
import pytest
import torch
from torch.utils.data import Dataset
from transformers import Trainer
from transformers import TrainerControl
from transformers import TrainerState
from transformers import TrainingArguments
from transformers import ViTConfig
from transformers import ViTForImageClassification

from tether.finetune.regularizers import DistanceConstraint
from tether.integrations.huggingface import ConstraintCallback


LR = 0.5
STEPS, BATCH = 3, 4
POSITIONS = "vit.embeddings.position_embeddings"  # a parameter no rule covers, left free


def _vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    config.num_labels = 3
    return ViTForImageClassification(config)


def _constraint(model: torch.nn.Module) -> DistanceConstraint:
    return DistanceConstraint(
        model, norm="mars", radius=0.05, head_radius=0.5, head="classifier", free=[POSITIONS]
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = STEPS * BATCH
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)


class _Images(Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        self.images, self.labels = _data()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def _train(model: ViTForImageClassification, callback: ConstraintCallback, out: Path) -> None:
    """Three steps of plain SGD at a constant rate, no clipping, batches in order."""
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        train_sampling_strategy="sequential",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Images(),
        optimizers=(optimizer, None),
        callbacks=[callback],
    )
    trainer.train()


def _plain_loop_distances() -> dict[str, float]:
    """Tether's own loop: the same model, batches and SGD, the constraint attached."""
    model = _vit()
    constraint = _constraint(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    constraint.attach(optimizer)
    model.train()
    x, y = _data()
    for images, labels in zip(x.split(BATCH), y.split(BATCH), strict=True):
        optimizer.zero_grad()
        model(pixel_values=images, labels=labels).loss.backward()
        optimizer.step()
    return constraint.distances()


def test_training_moves_the_weights_as_the_plain_loop_does(tmp_path: Path) -> None:
    callback = ConstraintCallback(_constraint)
    _train(_vit(), callback, tmp_path)
    distances = callback.constraint.distances()
    radii = callback.constraint.radii  # type: ignore[attr-defined]
    assert list(distances) == ["embed", "blocks.0", "blocks.1", "neck", "head"]
    assert all(d <= radii[g] * (1 + 1e-5) for g, d in distances.items())
    assert any(d == pytest.approx(radii[g], rel=1e-5) for g, d in distances.items()), (
        "a step of rate 0.5 reaches the boundary: the projection acted"
    )
    assert distances == pytest.approx(_plain_loop_distances(), abs=1e-6)


def test_a_ready_constraint_is_used_as_given(tmp_path: Path) -> None:
    model = _vit()
    constraint = _constraint(model)
    callback = ConstraintCallback(constraint)
    _train(model, callback, tmp_path)
    assert callback.constraint is constraint
    assert constraint.distances() == pytest.approx(_plain_loop_distances(), abs=1e-6)


def test_a_step_accelerate_skipped_projects_nothing(tmp_path: Path) -> None:
    model = _vit()
    constraint = _constraint(model)
    calls: list[int] = []
    constraint.project_ = lambda: calls.append(1)  # type: ignore[method-assign]
    callback = ConstraintCallback(constraint)
    args, state, control = (
        TrainingArguments(output_dir=str(tmp_path)),
        TrainerState(),
        TrainerControl(),
    )
    Accelerator(cpu=True)
    try:
        scaler = torch.amp.GradScaler("cpu")
        optimizer = AcceleratedOptimizer(
            torch.optim.SGD(model.parameters(), lr=LR), device_placement=False, scaler=scaler
        )
        x, y = _data()
        for scale in (torch.inf, 1.0):
            optimizer.zero_grad()
            scaler.scale(model(pixel_values=x, labels=y).loss * scale).backward()
            optimizer.step()  # scaler.step(): found an inf, so no SGD step
            assert optimizer.step_was_skipped == (scale == torch.inf)
            callback.on_optimizer_step(args, state, control, model=model, optimizer=optimizer)
            assert calls == ([] if scale == torch.inf else [1])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_the_constraint_exists_once_training_begins() -> None:
    callback = ConstraintCallback(_constraint)
    with pytest.raises(RuntimeError, match="built when training begins"):
        _ = callback.constraint
    with pytest.raises(TypeError, match="BaseProjection or a function"):
        ConstraintCallback("mars")  # type: ignore[arg-type]


def test_without_transformers_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("transformers", "tether.integrations.huggingface"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "tether.integrations.huggingface")
    with pytest.raises(ImportError, match=r"install tether\[transformers\]"):
        importlib.import_module("tether.integrations.huggingface")
