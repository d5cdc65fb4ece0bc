"""RSL label correction and sample reweighting: hand-computed cases, the trainer, end to end.

The expected values are written out by hand from the rules of Li & Zhang (NeurIPS 2021, the
self label-correction and sample reweighting of their code), not computed with the package.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.finetune.data import Split
from tether.finetune.recipe import recipe_from_dict
from tether.finetune.regularizers import NoConstraint
from tether.finetune.regularizers import NoPenalty
from tether.finetune.run import run
from tether.finetune.training.config import TrainConfig
from tether.finetune.training.loop import Device
from tether.finetune.training.loop import EpochStats
from tether.finetune.training.loop import Trainer
from tether.finetune.training.relabel import LabelCorrection
from tether.finetune.training.relabel import Reweighting
from tether.finetune.training.relabel import relabel_summary
from tether.finetune.training.relabel import weighted_loss
from tether.testing.specs import tiny_digits_recipe


def _log(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


# ------------------------------------------------------------------------- label correction


def test_exactly_the_confident_and_different_predictions_correct() -> None:
    stored = torch.tensor([0, 1, 2, 0, 1, 2])
    index = torch.tensor([4, 1, 5, 0])
    log_probs = _log(
        [
            [0.95, 0.03, 0.02],  # index 4, stored 1: confident, different -> 0
            [0.02, 0.96, 0.02],  # index 1, stored 1: confident, the same -> stays
            [0.85, 0.10, 0.05],  # index 5, stored 2: different, not confident -> stays
            [0.01, 0.04, 0.95],  # index 0, stored 0: confident, different -> 2
        ]
    )
    LabelCorrection(start_epoch=1, threshold=0.9).correct_(stored, index, log_probs, epoch=1)
    assert stored.tolist() == [2, 1, 2, 0, 0, 2]


def test_nothing_is_corrected_before_the_start_epoch_or_when_off() -> None:
    log_probs = _log([[0.99, 0.01], [0.01, 0.99]])
    for correction, epoch in [
        (LabelCorrection(start_epoch=3, threshold=0.9), 2),
        (LabelCorrection(start_epoch=0, threshold=0.9), 100),
    ]:
        stored = torch.tensor([1, 0])
        correction.correct_(stored, torch.tensor([0, 1]), log_probs, epoch=epoch)
        assert stored.tolist() == [1, 0]
    stored = torch.tensor([1, 0])
    LabelCorrection(start_epoch=3, threshold=0.9).correct_(
        stored, torch.tensor([0, 1]), log_probs, epoch=3
    )
    assert stored.tolist() == [0, 1]


def test_the_threshold_is_strict() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    confidence = F.softmax(logits, dim=1).max()
    below = torch.nextafter(confidence, torch.tensor(0.0))
    for threshold, expected in [(float(confidence), 2), (float(below), 0)]:
        stored = torch.tensor([2])
        LabelCorrection(start_epoch=1, threshold=threshold).correct_(
            stored, torch.tensor([0]), logits, epoch=1
        )
        assert stored.tolist() == [expected]
    stored = torch.tensor([1])  # p = 1 exactly is not above a threshold of 1
    one_hot_logits = torch.tensor([[0.0, -math.inf]])
    LabelCorrection(start_epoch=1, threshold=1.0).correct_(
        stored, torch.tensor([0]), one_hot_logits, epoch=1
    )
    assert stored.tolist() == [1]


def test_corrections_persist_by_dataset_index_across_batches_and_epochs() -> None:
    given = torch.tensor([0, 1, 2, 0, 1, 2])
    stored = given.clone()
    correction = LabelCorrection(start_epoch=3, threshold=0.9)
    first = _log([[0.95, 0.03, 0.02], [0.02, 0.96, 0.02]])
    correction.correct_(stored, torch.tensor([4, 1]), first, epoch=3)
    assert stored.tolist() == [0, 1, 2, 0, 0, 2]
    second = _log(
        [
            [0.50, 0.30, 0.20],  # index 4: unsure now, keeps its corrected 0 (not the given 1)
            [0.05, 0.93, 0.02],  # index 2: 2 -> 1
        ]
    )
    correction.correct_(stored, torch.tensor([4, 2]), second, epoch=4)
    assert stored.tolist() == [0, 1, 1, 0, 0, 2]
    assert correction.changed(stored, given) == 2
    assert LabelCorrection(start_epoch=0).changed(stored, given) is None


# ------------------------------------------------------------------------- reweighting


def test_weights_are_a_softmax_of_the_negated_losses() -> None:
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    # w_i = exp(-l_i / 2) / sum_j exp(-l_j / 2), by hand:
    # exp(-0.5) = 0.6065307, exp(-1) = 0.3678794, exp(-1.5) = 0.2231302; sum 1.1975403
    weights = [0.5064804, 0.3071959, 0.1863237]
    loss = weighted_loss(losses, temperature=2.0)
    assert float(loss.detach()) == pytest.approx(
        0.5064804 + 2 * 0.3071959 + 3 * 0.1863237, abs=1e-6
    )
    loss.backward()
    assert losses.grad is not None
    # With w detached, d loss / d l_i = w_i (through w it would also be -w_i (l_i - loss) / T).
    assert losses.grad.tolist() == pytest.approx(weights, abs=1e-6)


def test_equal_losses_weigh_equally_whatever_the_temperature() -> None:
    losses = torch.full((4,), 0.7)
    for temperature in (0.1, 1.0, 50.0):
        assert float(weighted_loss(losses, temperature)) == pytest.approx(0.7)


def test_the_batch_loss_is_the_plain_mean_until_the_reweight_epoch() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    labels = torch.tensor([0, 0, 1])
    mean = F.cross_entropy(logits, labels)
    reweighting = Reweighting(start_epoch=5, temperature=2.0)
    assert torch.equal(reweighting.loss(logits, labels, epoch=4), mean)
    assert torch.equal(Reweighting().loss(logits, labels, epoch=9), mean)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    weights = torch.exp(-per_sample / 2.0) / torch.exp(-per_sample / 2.0).sum()
    assert float(reweighting.loss(logits, labels, epoch=5)) == pytest.approx(
        float((weights * per_sample).sum())
    )
    assert float(reweighting.loss(logits, labels, epoch=5)) < float(mean)


def test_the_temperature_schedule() -> None:
    reweighting = Reweighting(start_epoch=5, temperature=2.0)
    expected = {
        1: None,
        4: None,
        5: 2.0,
        6: 2.0,  # updated at the end of epoch 6 for epoch 7
        7: 2 * math.exp(-0.1),  # 1.8096748
        8: 2 * math.exp(-0.2),  # 1.6374615
        12: 2 * math.exp(-0.6),  # 1.0976233
        13: 1.0,  # 2 exp(-0.7) = 0.993 is below the floor 0.5 * T0
        40: 1.0,
    }
    for epoch, temperature in expected.items():
        assert reweighting.temperature_at(epoch) == pytest.approx(temperature), epoch
    assert reweighting.temperature_at(7) == pytest.approx(1.8096748)
    assert Reweighting(start_epoch=0, temperature=2.0).temperature_at(7) is None


# ------------------------------------------------------------------------- the summary


def test_relabel_summary_counts_recovered_and_damaged_labels() -> None:
    given = torch.tensor([0, 0, 1, 1, 2, 2])
    clean = torch.tensor([1, 0, 1, 1, 2, 0])  # indices 0 and 5 are corrupted
    final = torch.tensor([1, 0, 1, 2, 2, 1])  # 0 recovered, 3 damaged, 5 changed but wrong
    assert relabel_summary(given, final, clean) == {
        "corrected": 3,
        "recovered": 0.5,
        "damaged": 0.25,
    }
    assert relabel_summary(given, final, None) == {
        "corrected": 3,
        "recovered": None,
        "damaged": None,
    }
    assert relabel_summary(given, given, given) == {
        "corrected": 0,
        "recovered": None,  # nothing was corrupted
        "damaged": 0.0,
    }


# ------------------------------------------------------------------------- the trainer


def _confident_trainer(**train: Any) -> Trainer:
    """A linear model on all-zero images that predicts class 0 with p ~ 0.999."""
    torch.manual_seed(0)
    linear = nn.Linear(12, 3)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor([8.0, 0.0, 0.0]))
    model = nn.Sequential(nn.Flatten(), linear)
    cfg = TrainConfig(lr=1e-4, lr_step=0, batch_size=4, device="cpu", **train)
    return Trainer(
        model,
        cfg,
        device=Device(torch.device("cpu"), None),
        constraint=NoConstraint(),
        penalty=NoPenalty(),
        train_transform=lambda x: x.float(),
        eval_transform=lambda x: x.float(),
    )


def _split(labels: list[int]) -> Split:
    return Split(
        images=torch.zeros(len(labels), 3, 2, 2, dtype=torch.uint8), labels=torch.tensor(labels)
    )


def test_the_trainer_corrects_its_own_copy_from_the_correct_epoch() -> None:
    split = _split([0, 1, 2, 1, 2, 0, 1, 2])
    trainer = _confident_trainer(epochs=2, correct_epoch=2)
    stats: list[EpochStats] = []
    trainer.fit(split, None, on_epoch=stats.append)
    assert [s.corrected for s in stats] == [0, 6]
    assert [s.temperature for s in stats] == [None, None]
    # Epoch 2 corrects before its loss: every label is already 0 in the step that sees it.
    assert [s.train_accuracy for s in stats] == [2 / 8, 1.0]
    assert stats[0].train_loss > 5
    assert stats[1].train_loss < 0.01
    assert trainer.labels.tolist() == [0] * 8
    assert split.labels.tolist() == [0, 1, 2, 1, 2, 0, 1, 2]


def test_the_trainer_keeps_one_label_copy_per_split() -> None:
    split = _split([1, 2, 1, 2])
    trainer = _confident_trainer(correct_epoch=1)
    trainer.train_epoch(split, epoch=1)
    stored = trainer.labels
    assert stored.tolist() == [0, 0, 0, 0]
    trainer.train_epoch(split, epoch=2)
    assert trainer.labels is stored
    other = _split([2, 2, 1, 1])
    trainer.train_epoch(other, epoch=1)
    assert trainer.labels is not stored
    with pytest.raises(RuntimeError, match="no split"):
        _ = _confident_trainer().labels


def test_without_rsl_the_trainer_reports_none() -> None:
    stats: list[EpochStats] = []
    _confident_trainer(epochs=1).fit(_split([1, 2, 1, 2]), None, on_epoch=stats.append)
    assert (stats[0].corrected, stats[0].temperature) == (None, None)


# ------------------------------------------------------------------------- end to end


def _run(data: dict[str, Any], cache_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events: list[dict[str, Any]] = []
    result = run(recipe_from_dict(data), emit=events.append, cache_dir=cache_dir)
    return [e for e in events if e["event"] == "epoch"], result


def _noisy(**train: Any) -> dict[str, Any]:
    recipe = tiny_digits_recipe(**train)
    recipe["data"].update(noise="symmetric", noise_rate=0.4)
    return recipe


def test_a_noisy_run_corrects_reweights_and_reports(cache_dir: Path) -> None:
    recipe = _noisy(epochs=3, correct_epoch=1, correct_threshold=0.3, reweight_epoch=1)
    epochs, result = _run(recipe, cache_dir)
    relabel = result["relabel"]
    assert set(relabel) == {"corrected", "recovered", "damaged"}
    assert 0 < relabel["corrected"] <= 25
    assert relabel["corrected"] == epochs[-1]["corrected"]
    assert 0 <= relabel["recovered"] <= 1
    assert 0 <= relabel["damaged"] <= 1
    assert all(isinstance(e["corrected"], int) for e in epochs)
    temperatures = [e["temperature"] for e in epochs]
    assert temperatures == pytest.approx([1.0, 1.0, math.exp(-0.1)])


def test_refit_corrects_the_train_and_val_labels(cache_dir: Path) -> None:
    recipe = _noisy(epochs=2, refit=True, correct_epoch=1, correct_threshold=0.3)
    epochs, result = _run(recipe, cache_dir)
    assert 0 < result["relabel"]["corrected"] <= 5 * 5 + 3 * 5
    assert 0 <= result["relabel"]["damaged"] <= 1
    assert [e["temperature"] for e in epochs] == [None, None]


def _comparable(epochs: list[dict[str, Any]], result: dict[str, Any]) -> Any:
    return (
        [{k: v for k, v in e.items() if k != "seconds"} for e in epochs],
        {k: v for k, v in result.items() if k not in ("seconds", "relabel")},
    )


def test_rsl_off_or_not_yet_started_trains_exactly_as_without_it(cache_dir: Path) -> None:
    plain = _comparable(*_run(_noisy(epochs=2), cache_dir))
    off = _run(_noisy(epochs=2, correct_threshold=0.3, reweight_temperature=3.0), cache_dir)
    assert "relabel" not in off[1]
    assert _comparable(*off) == plain
    later = _run(_noisy(epochs=2, correct_epoch=3, reweight_epoch=3), cache_dir)
    assert later[1]["relabel"] == {"corrected": 0, "recovered": 0.0, "damaged": 0.0}
    later_epochs, later_result = _comparable(*later)
    off_epochs, off_result = _comparable(*off)
    assert [e.pop("corrected") for e in later_epochs] == [0, 0]
    assert [e.pop("corrected") for e in off_epochs] == [None, None]
    assert (later_epochs, later_result) == (off_epochs, off_result)
    started = _comparable(*_run(_noisy(epochs=2, reweight_epoch=2), cache_dir))
    assert started[0][0] == plain[0][0]
    assert started[0][1]["train_loss"] != plain[0][1]["train_loss"]


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("train", "needles"),
    [
        ({"correct_epoch": -1}, ["train.correct_epoch", ">= 0", "-1"]),
        ({"reweight_epoch": -2}, ["train.reweight_epoch", ">= 0", "-2"]),
        ({"correct_threshold": 0}, ["train.correct_threshold", "(0, 1]", "0.0"]),
        ({"correct_threshold": 1.5}, ["train.correct_threshold", "(0, 1]", "1.5"]),
        ({"reweight_temperature": 0}, ["train.reweight_temperature", "> 0", "0.0"]),
        ({"reweight_temperature": -1.0}, ["train.reweight_temperature", "> 0", "-1.0"]),
        ({"correct_epoch": 1.5}, ["train.correct_epoch", "integer", "1.5"]),
    ],
)
def test_bad_rsl_settings_are_refused(train: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"train": train})
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_rsl_settings_round_trip() -> None:
    train = {"correct_epoch": 10, "correct_threshold": 1.0, "reweight_epoch": 5,
             "reweight_temperature": 2.0}  # fmt: skip
    recipe = recipe_from_dict({"train": train})
    assert {k: recipe.to_dict()["train"][k] for k in train} == train
    assert recipe_from_dict(recipe.to_dict()) == recipe
    assert TrainConfig().correct_epoch == TrainConfig().reweight_epoch == 0
