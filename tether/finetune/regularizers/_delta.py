r"""DELTA: attention-weighted feature-map distance to the pretrained network.

Li et al., "DELTA: Deep Learning Transfer using Feature Map with Attention for Convolutional
Networks", ICLR 2019. The penalty added to the task loss is

.. math::

    \alpha\,\Omega'(w) + \beta\,\Omega''(w), \qquad
    \Omega'(w) = \sum_{l} \tfrac12 \sum_{b,c} C_l\, W_{l,c}\,
        \frac{\|FM_{l}(w, x_b)_c - FM_{l}(w^0, x_b)_c\|_2^2}{h_l w_l}, \qquad
    \Omega''(w) = \tfrac12 \|w_{head}\|_2^2,

where :math:`FM_l` is the output of the hooked layer ``l`` (``C_l`` channels of size
``h_l x w_l``), :math:`w^0` the frozen pretrained network and :math:`W_{l,c}` a per-channel
attention weight. The scaling (summed over the batch, times the channel count, divided by the
spatial size) is the one of the authors' code (lixingjian/DELTA ``train.py``).

The attention weights come from the authors' ``channel_eval.py``: train a linear probe on the
frozen backbone, then for each channel measure how much the loss grows when that channel is
switched off (its filter zeroed, so its output is the layer's bias). Per layer the raw
increases are z-scored and turned into ``softmax(z / 5)`` (they sum to 1).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import replace
import math
from typing import Any

import torch
from torch import nn

from tether.errors import ConfigError
from tether.finetune.layers import LayerGroups
from tether.finetune.layers import unwrap
from tether.finetune.regularizers._base import BasePenalty
from tether.finetune.regularizers._context import PenaltyContext
from tether.finetune.regularizers._delta_scores import _check_layers
from tether.finetune.regularizers._delta_scores import _plain_copy
from tether.finetune.regularizers._delta_scores import delta_channel_weights


_TEMPERATURE = 5.0


def default_delta_layers(model: nn.Module, groups: LayerGroups) -> tuple[str, ...]:
    """The last ``nn.Conv2d`` of every extractor group but the first (the stem).

    For torchvision's ResNet-101 this is ``layer1.2.conv3, layer2.3.conv3, layer3.22.conv3,
    layer4.2.conv3``, the list of the original DELTA code. A model with a single extractor
    group (no stem to skip) gets the last conv of that group.

    Raises:
        ConfigError: no group has a conv layer (a ViT, say); name ``penalty.layers`` instead.
    """
    extractor = groups.extractor
    wanted = extractor[1:] if len(extractor) > 1 else extractor
    last: dict[str, str] = {}
    for name, module in model.named_modules():
        group = groups.group_of(name) if name else None
        if isinstance(module, nn.Conv2d) and group in wanted:
            last[group] = name
    layers = tuple(last[g] for g in wanted if g in last)
    if not layers:
        raise ConfigError(
            f"DELTA found no Conv2d layer in the layer groups {', '.join(wanted)} of this "
            "model; name the layers whose outputs to regularise with penalty.layers"
        )
    return layers


def delta_attention(scores: torch.Tensor) -> torch.Tensor:
    """Per-layer channel weights from raw ablation scores: ``softmax(zscore(scores) / 5)``.

    The z-score uses the population standard deviation (``np.std``, as the original); a layer
    whose scores are all equal gets uniform weights.

    Example:
        >>> delta_attention(torch.tensor([0.0, 0.0])).tolist()
        [0.5, 0.5]
    """
    s = torch.nan_to_num(scores.detach().to(torch.float64).flatten())
    std = s.std(correction=0) if s.numel() > 1 else s.new_zeros(())
    z = (s - s.mean()) / std if std > 0 else torch.zeros_like(s)
    return torch.softmax(z / _TEMPERATURE, dim=0).to(torch.float32)


def _check_weight(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{what} must be a number >= 0, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value!r}")
    return float(value)


def _normalised_weights(
    model: nn.Module, layers: Sequence[str], scores: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    weights = {}
    for name in layers:
        if name not in scores:
            raise ConfigError(f"DELTA has no channel scores for layer {name!r}")
        channels = getattr(model.get_submodule(name), "out_channels", None)
        if isinstance(channels, int) and scores[name].numel() != channels:
            raise ConfigError(
                f"DELTA has {scores[name].numel()} channel scores for layer {name!r}, "
                f"which has {channels} channels"
            )
        weights[name] = delta_attention(scores[name])
    return weights


def _capture(store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, torch.Tensor):
            store[name] = output

    return hook


def _feature_distance(
    target: torch.Tensor, source: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``0.5 * sum_{b,c} C * w_c * ||target[b,c] - source[b,c]||^2 / (h*w)``."""
    diff = target.float() - source.float()
    if diff.dim() == 2:
        diff = diff.unsqueeze(-1)
    per_channel = diff.flatten(2).pow(2).mean(2)  # [B, C]: squared norm / (h*w)
    return 0.5 * diff.shape[1] * (per_channel * weights).sum()


class DeltaPenalty(BasePenalty):
    """DELTA's penalty ``alpha * Omega' + beta * Omega''`` (Li et al., ICLR 2019).

    ``Omega'`` is the attention-weighted distance between the feature maps of ``layers`` in
    the model and in a frozen copy of it taken at construction (``W0``); ``Omega''`` is
    ``0.5 * ||head||^2`` over the head's parameters (weight and bias). See the module
    docstring for the formula.

    The penalty reads the model's features through forward hooks, so the training loop calls
    ``model(inputs)`` and then ``penalty(inputs)`` on the same batch; each forward's features
    are used once. The source copy runs in ``eval()`` mode, as in the original: with the model
    in ``train()`` mode, BatchNorm's batch statistics make ``Omega'`` nonzero even at ``W0``.

    Args:
        model: the network, holding ``W0`` now; a DataParallel, DistributedDataParallel or
            ``torch.compile`` wrapper is looked through (``head`` and ``layers`` name the
            inner model's modules, whose hooks fire when the wrapper runs).
        head: dotted name of the new head module.
        alpha: weight of the feature-map term (``penalty.alpha``).
        beta: weight of the head term (``penalty.beta``).
        layers: dotted names of the modules whose outputs are compared.
        scores: raw per-channel scores per layer (see :func:`delta_channel_weights`); they
            are normalised with :func:`delta_attention`.

    Example:
        >>> from torchvision.models import resnet18
        >>> model = resnet18(num_classes=3).eval()
        >>> layers = ["layer4.1.conv2"]
        >>> penalty = DeltaPenalty(
        ...     model,
        ...     head="fc",
        ...     alpha=0.01,
        ...     beta=0.01,
        ...     layers=layers,
        ...     scores={"layer4.1.conv2": torch.zeros(512)},
        ... )
        >>> x = torch.rand(2, 3, 32, 32)
        >>> _ = model(x)
        >>> loss = penalty(x)  # 0.01 * 0.5 * ||fc||^2 here: the features have not moved
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head: str,
        alpha: float,
        beta: float,
        layers: Sequence[str],
        scores: Mapping[str, torch.Tensor],
    ) -> None:
        model = unwrap(model)
        self.alpha = _check_weight(alpha, "penalty.alpha")
        self.beta = _check_weight(beta, "penalty.beta")
        self.layers = _check_layers(model, layers)
        try:
            self._head = model.get_submodule(head)
        except AttributeError:
            raise ConfigError(
                f"the model has no module named {head!r} to use as the head"
            ) from None
        self.weights: dict[str, torch.Tensor] = {}
        self._target_out: dict[str, torch.Tensor] = {}
        self._source_out: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        if self.alpha == 0:
            return  # the head term alone: no scores, no copy, no hooks
        self.weights = _normalised_weights(model, self.layers, scores)
        self._source = _plain_copy(model).eval().requires_grad_(False)
        self._handles = [
            net.get_submodule(name).register_forward_hook(_capture(store, name))
            for net, store in ((model, self._target_out), (self._source, self._source_out))
            for name in self.layers
        ]

    def remove(self) -> None:
        """Detach the hooks from the model (the penalty cannot be used afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._target_out.clear()
        self._source_out.clear()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        head = torch.zeros((), device=inputs.device)
        for param in self._head.parameters():
            head = head + 0.5 * param.pow(2).sum()
        total = self.beta * head
        if self.alpha == 0:
            return total
        target = {n: t for n in self.layers if (t := self._target_out.pop(n, None)) is not None}
        missing = [name for name in self.layers if name not in target]
        if missing:
            raise RuntimeError(
                f"DELTA has no features for {', '.join(missing)}: run model(inputs) before "
                "penalty(inputs) on every batch (and do not call remove() before)"
            )
        self._sync_source(inputs.device)
        with torch.no_grad():
            self._source(inputs)
        for name in self.layers:
            t, s = target[name], self._source_out.pop(name)
            if t.shape != s.shape:
                raise RuntimeError(
                    f"DELTA: the features of {name!r} have shape {list(t.shape)} but the "
                    f"source gives {list(s.shape)}; was the model run on these inputs?"
                )
            w = self.weights[name]
            if w.device != t.device:
                w = self.weights[name] = w.to(t.device)
            total = total + self.alpha * _feature_distance(t, s, w)
        return total

    def _sync_source(self, device: torch.device) -> None:
        param = next(self._source.parameters(), None)
        if param is not None and param.device != device:
            self._source.to(device)


def build_delta(
    ctx: PenaltyContext,
    *,
    alpha: float,
    beta: float,
    layers: Sequence[str] = (),
    probe_epochs: int = 10,
    ablation_batches: int = 4,
) -> DeltaPenalty:
    """DELTA for the run in ``ctx``: default layers, cached channel weights, the penalty.

    ``layers`` defaults to :func:`default_delta_layers`. With ``alpha == 0`` the feature term
    is off, so the (expensive) channel weights are not computed.
    """
    _check_weight(alpha, "penalty.alpha")
    _check_weight(beta, "penalty.beta")
    ctx = replace(ctx, model=unwrap(ctx.model))
    names = (
        _check_layers(ctx.model, layers) if layers else default_delta_layers(ctx.model, ctx.groups)
    )
    scores: Mapping[str, torch.Tensor] = {}
    if alpha > 0:
        scores = delta_channel_weights(
            ctx, layers=names, probe_epochs=probe_epochs, ablation_batches=ablation_batches
        )
    return DeltaPenalty(
        ctx.model, head=ctx.head, alpha=alpha, beta=beta, layers=names, scores=scores
    )
