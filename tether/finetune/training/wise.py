"""WiSE-FT: interpolate the weights between W0 and the fine-tuned model (Wortsman et al., 2022).

``theta(a) = (1 - a) theta_0 + a theta_ft`` for every floating-point entry of the state dict
(BatchNorm running statistics included), ``a`` chosen on validation from a grid. Integer
buffers (``num_batches_tracked``) are the fine-tuned ones. The new head has no pretrained
counterpart, so it is kept fine-tuned (the maintainers' rule for a new head). At ``a = 0``
the pretrained entries are W0 bit for bit, at ``a = 1`` the fine-tuned model.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import torch
from torch import nn


GRID = tuple(i / 10 for i in range(11))
"""0, 0.1, .., 1: the coefficients WiSE-FT tries."""

State = Mapping[str, torch.Tensor]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state dict (W0 before training)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def interpolate(
    start: State, end: State, alpha: float, *, keep: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) start + alpha end`` for floating entries; ``end``'s for integer ones and
    for every key under a prefix in ``keep`` (the new head)."""
    out = {}
    for key, value in end.items():
        kept = any(key == p or key.startswith(p + ".") for p in keep)
        if kept or not value.is_floating_point():
            out[key] = value.clone()
        else:
            out[key] = torch.lerp(start[key].to(value), value, alpha)
    return out


def choose(
    model: nn.Module,
    start: State,
    *,
    keep: Sequence[str],
    score: Callable[[], float],
    grid: Sequence[float] = GRID,
) -> tuple[float, dict[float, float]]:
    """Try every coefficient of ``grid`` on ``model``, load the best-scoring one.

    ``score`` evaluates the model as loaded (validation accuracy); the first best along the
    grid wins (the one closest to W0 among equals).

    Returns:
        The chosen coefficient and the score of each.
    """
    end = snapshot(model)
    scores: dict[float, float] = {}
    for alpha in grid:
        model.load_state_dict(interpolate(start, end, alpha, keep=keep))
        scores[alpha] = score()
    best = max(scores, key=lambda a: (scores[a], -grid.index(a)))
    model.load_state_dict(interpolate(start, end, best, keep=keep))
    return best, scores
