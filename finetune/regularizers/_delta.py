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
import copy
import hashlib
import json
import math
import os
from pathlib import Path
import sys
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from finetune.errors import ConfigError
from finetune.layers import LayerGroups
from finetune.regularizers._base import BasePenalty
from finetune.regularizers._context import PenaltyContext


_CACHE_VERSION = 1
_MAX_ABLATION_IMAGES = 256
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


def _conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _check_layers(model: nn.Module, layers: Sequence[str]) -> tuple[str, ...]:
    if isinstance(layers, str):
        raise ConfigError(f"penalty.layers must be a list of module names, got {layers!r}")
    layers = tuple(layers)
    if not layers:
        raise ConfigError("penalty.layers is empty; DELTA needs at least one layer to hook")
    for name in layers:
        try:
            model.get_submodule(name)
        except AttributeError:
            convs = _conv_names(model)
            shown = convs if len(convs) <= 6 else [*convs[:3], "...", *convs[-3:]]
            raise ConfigError(
                f"penalty.layers names {name!r}, which is not a module of this model; "
                f"its conv layers are {', '.join(shown) or '(none)'}"
            ) from None
    dup = sorted({n for n in layers if layers.count(n) > 1})
    if dup:
        raise ConfigError(f"penalty.layers lists {', '.join(dup)} more than once")
    return layers


def _plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy without the forward hooks the original carried (they would fire on it)."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        module._forward_hooks.clear()
    return clone


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, tuple | list):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the model returned {type(output).__name__}, expected a logits tensor")
    return output


# --------------------------------------------------------------------------- channel weights


def _cache_path(ctx: PenaltyContext, layers: Sequence[str], **params: int) -> Path:
    payload = {
        "cache_key": ctx.cache_key,
        "layers": list(layers),
        "seed": ctx.seed,
        "version": _CACHE_VERSION,
        **params,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return ctx.cache_dir / "delta" / f"{key}.json"


def _load_cache(path: Path, layers: Sequence[str]) -> dict[str, torch.Tensor] | None:
    try:
        data = json.loads(path.read_text())
        scores = {name: torch.tensor(data["scores"][name], dtype=torch.float32) for name in layers}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"delta: ignoring unreadable cache {path} ({exc})", file=sys.stderr, flush=True)
        return None
    if any(s.dim() != 1 or s.numel() == 0 for s in scores.values()):
        return None
    return scores


def _save_cache(path: Path, layers: Sequence[str], scores: Mapping[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": _CACHE_VERSION,
        "layers": list(layers),
        "scores": {name: [float(v) for v in scores[name].tolist()] for name in layers},
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _layer_channels(net: nn.Module, layers: Sequence[str], x: torch.Tensor) -> dict[str, int]:
    """Channel count of each layer's output, from one forward of one image."""
    shapes: dict[str, torch.Size] = {}
    handles = []
    for name in layers:

        def grab(_m: nn.Module, _a: tuple[Any, ...], out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                shapes[name] = out.shape

        handles.append(net.get_submodule(name).register_forward_hook(grab))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    for name in layers:
        if name not in shapes or len(shapes[name]) < 2:
            raise ConfigError(f"penalty.layers: {name!r} does not output a [N, C, ...] tensor")
    return {name: shapes[name][1] for name in layers}


def _train_probe(
    net: nn.Module,
    ctx: PenaltyContext,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """Train a freshly initialised head on the frozen backbone (in ``train()`` mode)."""
    net.requires_grad_(False)
    head = net.get_submodule(ctx.head)
    for module in head.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    head.requires_grad_(True)
    params = list(head.parameters())
    if not params:
        raise ConfigError(f"the head {ctx.head!r} has no parameters to train a DELTA probe")
    if epochs == 0:
        return
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1 / (0.6 * epochs)))
    n = len(ctx.train_images)
    net.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2 < n:
                    continue  # a batch of one breaks BatchNorm in train mode
                x = ctx.transform(ctx.train_images[idx].to(ctx.device))
                y = ctx.train_labels[idx].to(ctx.device)
                loss = F.cross_entropy(_logits(net(x)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()


def _ablation_scores(
    net: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    channels: Mapping[str, int],
    max_images: int = _MAX_ABLATION_IMAGES,
) -> dict[str, torch.Tensor]:
    """Mean loss increase when each output channel of each layer is switched off.

    Switching channel ``j`` off replaces its output by the layer's bias (zero without one),
    which is what zeroing the filter ``weight[j]`` does. ``k`` channels are ablated per
    forward: the batch is repeated ``k`` times, with a different channel off in each copy.
    """
    ablate: list[torch.Tensor | None] = [None]

    def hook(module: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        chans = ablate[0]
        if chans is None:
            return output
        k = chans.numel()
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor) and bias.shape == output.shape[1:2]:
            fill = bias.detach()[chans].to(output.dtype)
        else:
            fill = output.new_zeros(k)
        out = output.clone()
        copies = out.view(k, -1, *out.shape[1:])
        copies[torch.arange(k, device=out.device), :, chans] = fill.view(k, *[1] * (out.dim() - 1))
        return out

    net.eval()
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for x, y in batches:
            b = len(x)
            k_max = max(1, max_images // b)
            x_rep, y_rep = x.repeat(k_max, *[1] * (x.dim() - 1)), y.repeat(k_max)
            loss0 = F.cross_entropy(_logits(net(x)), y)
            for name in channels:
                module = net.get_submodule(name)
                handle = module.register_forward_hook(hook)
                parts = []
                try:
                    for chans in torch.split(torch.arange(channels[name]), k_max):
                        k = chans.numel()
                        ablate[0] = chans.to(x.device)
                        logits = _logits(net(x_rep[: k * b]))
                        loss = F.cross_entropy(logits, y_rep[: k * b], reduction="none")
                        parts.append(loss.view(k, b).mean(1) - loss0)
                finally:
                    ablate[0] = None
                    handle.remove()
                diff = torch.cat(parts).double().cpu()
                totals[name] = totals[name] + diff if name in totals else diff
    return {name: (totals[name] / len(batches)).float() for name in channels}


def _check_count(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def delta_channel_weights(
    ctx: PenaltyContext,
    *,
    layers: Sequence[str],
    probe_epochs: int = 10,
    ablation_batches: int = 4,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Raw per-channel ablation scores of DELTA (the authors' ``channel_eval.py``).

    On a copy of ``ctx.model`` (which is left untouched):

    1. train a freshly initialised head for ``probe_epochs`` epochs with the backbone frozen
       but in ``train()`` mode, as the original (SGD lr 0.01, momentum 0.9, weight decay
       1e-4, learning rate decayed exponentially to x0.1 after 60% of the epochs);
    2. in ``eval()`` mode, on the first ``ablation_batches`` batches of a seeded shuffle,
       record for every channel ``j`` of every layer ``loss(channel j off) - loss``,
       averaged over the batches.

    The result depends only on the run's ``cache_key``, the arguments and ``ctx.seed``; it
    is kept as JSON under ``ctx.cache_dir / "delta"`` and reused. The caller's global RNG
    state is not consumed.

    Returns:
        ``{layer: float32 scores of shape [C]}`` on the CPU (larger = more important).
    """
    layers = _check_layers(ctx.model, layers)
    params = {
        "probe_epochs": _check_count(probe_epochs, "penalty.probe_epochs", 0),
        "ablation_batches": _check_count(ablation_batches, "penalty.ablation_batches", 1),
        "batch_size": _check_count(batch_size, "penalty.batch_size", 1),
    }
    path = _cache_path(ctx, layers, **params)
    cached = _load_cache(path, layers)
    if cached is not None:
        print(f"delta: reusing cached channel weights {path}", file=sys.stderr, flush=True)
        return cached
    if len(ctx.train_images) == 0:
        raise ConfigError("DELTA needs training images to weight its channels", kind="data")

    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ctx.seed)
        net = _plain_copy(ctx.model).eval()
        first = ctx.transform(ctx.train_images[:1].to(ctx.device))
        channels = _layer_channels(net, layers, first)
        print(
            f"delta: computing channel weights for {len(layers)} layers "
            f"({sum(channels.values())} channels) ...",
            file=sys.stderr,
            flush=True,
        )
        shuffle = torch.Generator().manual_seed(ctx.seed)
        _train_probe(net, ctx, epochs=probe_epochs, batch_size=batch_size, generator=shuffle)
        order = torch.randperm(len(ctx.train_images), generator=shuffle.manual_seed(ctx.seed))
        batches = [
            (
                ctx.transform(ctx.train_images[idx].to(ctx.device)),
                ctx.train_labels[idx].to(ctx.device),
            )
            for idx in torch.split(order[: ablation_batches * batch_size], batch_size)
        ]
        scores = _ablation_scores(net, batches, channels=channels)
    _save_cache(path, layers, scores)
    return scores


# --------------------------------------------------------------------------- the penalty


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
        model: the network, holding ``W0`` now.
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
