"""LP-FT's probe: the back-converted head, the C path, and the model before fine-tuning."""

from __future__ import annotations

import pytest
from sklearn.linear_model import LogisticRegression
import torch
from torch import nn

from tether.finetune.data.types import Split
from tether.finetune.training.probe import C_PATH
from tether.finetune.training.probe import fit_probe
from tether.finetune.training.probe import head_features
from tether.finetune.training.probe import load_probe


def _features(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes around fixed centres (the same for every ``seed``), offset and scaled."""
    centres = (
        torch.randn(classes, 6, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        * 3
    )
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    return 5 + 2 * (centres[labels] + torch.randn(n, 6, generator=g, dtype=torch.float64)), labels


@pytest.mark.parametrize("classes", [2, 3])
def test_raw_space_head_gives_the_standardised_models_logits(classes: int) -> None:
    x, y = _features(60, classes, 0)
    probe = fit_probe((x, y), None, num_classes=classes, c=0.3)
    mean, sd = float(x.mean()), float(x.std())
    model = LogisticRegression(C=0.3, max_iter=1000).fit(((x - mean) / sd).numpy(), y.numpy())
    scores = torch.from_numpy(model.decision_function(((x - mean) / sd).numpy()))
    logits = probe.logits(x)
    if classes == 2:  # one score for class 1 against class 0
        torch.testing.assert_close(logits[:, 1] - logits[:, 0], scores, atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(logits, scores, atol=1e-6, rtol=0)


def test_c_is_chosen_on_validation_along_the_path() -> None:
    x, y = _features(60, 3, 1)
    vx, vy = _features(30, 3, 2)
    probe = fit_probe((x, y), (vx, vy), num_classes=3)
    assert probe.c in C_PATH
    assert probe.val_accuracy is not None
    assert probe.val_accuracy == pytest.approx(
        float((probe.logits(vx).argmax(1) == vy).double().mean())
    )
    assert probe.val_accuracy > 0.9
    tiny = fit_probe((x, y), (vx, vy), num_classes=3, c=C_PATH[0])
    assert tiny.val_accuracy is not None
    assert probe.val_accuracy >= tiny.val_accuracy


def test_choosing_c_without_validation_data_is_refused() -> None:
    x, y = _features(10, 2, 0)
    with pytest.raises(ValueError, match="validation"):
        fit_probe((x, y), None, num_classes=2)


def test_a_class_absent_from_training_is_never_predicted() -> None:
    x, y = _features(30, 3, 3)
    probe = fit_probe((x, y), None, num_classes=4, c=1.0)
    assert (probe.logits(x).argmax(1) != 3).all()


def test_the_model_predicts_like_its_probe_before_the_first_step() -> None:
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        head,
    )  # fmt: skip
    images = torch.randint(0, 256, (24, 3, 6, 6), dtype=torch.uint8)
    split = Split(images, torch.arange(24) % 3)

    def transform(batch: torch.Tensor) -> torch.Tensor:
        return batch.float() / 255

    features = head_features(model, head, split, transform=transform,
                             device=torch.device("cpu"), batch_size=10)  # fmt: skip
    assert features.shape == (24, 4)
    probe = fit_probe((features, split.labels), None, num_classes=3, c=10.0)
    load_probe(head, probe)
    model.eval()
    with torch.no_grad():
        logits = model(transform(images)).double()
    torch.testing.assert_close(logits, probe.logits(features), atol=1e-5, rtol=1e-5)
