"""LP-FT's first stage: a linear probe on the frozen backbone's features (Kumar et al., ICLR 2022).

1. The features the head receives (its input, read with a forward pre-hook), computed once
   with the whole network in eval mode.
2. Standardised with one scalar mean and standard deviation over the whole training feature
   matrix, as the reference does.
3. Multinomial logistic regression (scikit-learn, L-BFGS) along a path of ``C`` values,
   ``logspace(-7, 2, 50)``, each fit warm-started from the last; ``C`` chosen on the
   validation accuracy (the first best along the path: the strongest regularisation among
   equals), or fixed.
4. The weights mapped back to raw features (``W / sd``, ``b - W @ mean / sd``) and written
   into the head, so that the model predicts exactly as the probe before fine-tuning starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import warnings

import numpy as np
import torch
from torch import nn

from tether.finetune.data import Split


C_PATH = tuple(float(c) for c in np.logspace(-7, 2, 50))
ABSENT_CLASS_BIAS = -1e4
"""The bias of a class absent from the training labels: the probe never predicts it."""

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Probe:
    """A fitted probe in raw-feature space: ``logits = features @ weight.T + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor
    c: float
    val_accuracy: float | None

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.double() @ self.weight.double().T + self.bias.double()


@torch.no_grad()
def head_features(
    model: nn.Module,
    head: nn.Module,
    split: Split,
    *,
    transform: Transform,
    device: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """``[N, F]`` float64 on the CPU: what ``head`` receives for every image, in eval mode."""
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach().flatten(1).double().cpu())

    handle = head.register_forward_pre_hook(grab)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(split), batch_size):
            images = split.images[start : start + batch_size].to(device)
            model(transform(images))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured) if captured else torch.zeros(0, 0, dtype=torch.float64)


def fit_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    num_classes: int,
    c: float | None = None,
) -> Probe:
    """Fit the probe on ``(features, labels)``; ``C`` from ``val`` along :data:`C_PATH`, or ``c``.

    Raises:
        ValueError: ``c`` is None and there is no validation data to choose it on.
    """
    from sklearn.linear_model import LogisticRegression

    features, labels = train
    mean, sd = float(features.mean()), float(features.std()) or 1.0
    x = ((features - mean) / sd).numpy()
    y = labels.numpy()
    if c is None and (val is None or not len(val[1])):
        raise ValueError("choosing the probe's C needs validation data; give C")
    path = (c,) if c is not None else C_PATH
    model = LogisticRegression(warm_start=True, max_iter=1000)
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    for value in path:
        model.set_params(C=value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at tiny C are expected
            model.fit(x, y)
        coef, intercept = _full_rank(model, num_classes)
        accuracy = float("nan")
        if val is not None and len(val[1]):
            z = ((val[0] - mean) / sd).numpy()
            accuracy = float(((z @ coef.T + intercept).argmax(1) == val[1].numpy()).mean())
        if best is None or accuracy > best[1]:
            best = (value, accuracy, coef.copy(), intercept.copy())
    assert best is not None
    value, accuracy, coef, intercept = best
    weight = torch.from_numpy(coef / sd)
    bias = torch.from_numpy(intercept - coef.sum(axis=1) * (mean / sd))
    return Probe(weight, bias, value, None if np.isnan(accuracy) else accuracy)


def _full_rank(model: object, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(coef [K, F], intercept [K])`` over all ``num_classes``, from a fitted classifier.

    Binary problems give one logit ``w.x + b`` for the second class; the softmax of
    ``[0, w.x + b]`` gives the same probabilities. Classes absent from the training labels
    get weight 0 and a very negative bias.
    """
    classes = np.asarray(model.classes_)  # type: ignore[attr-defined]
    coef, intercept = np.asarray(model.coef_), np.asarray(model.intercept_)  # type: ignore[attr-defined]
    if len(classes) == 2:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    full_coef = np.zeros((num_classes, coef.shape[1]))
    full_intercept = np.full(num_classes, ABSENT_CLASS_BIAS)
    full_coef[classes] = coef
    full_intercept[classes] = intercept
    return full_coef, full_intercept


@torch.no_grad()
def load_probe(head: nn.Linear, probe: Probe) -> None:
    """Write the probe into the head, in place."""
    head.weight.copy_(probe.weight.to(head.weight))
    if head.bias is not None:
        head.bias.copy_(probe.bias.to(head.bias))
