"""DELTA's channel attention: a linear probe, then one ablation per channel, cached on disk.

The authors' ``channel_eval.py`` (Li et al., ICLR 2019): train a new linear head on the frozen
backbone, then for each channel of each hooked layer measure how much the loss grows when the
channel is switched off (its filter zeroed, so its output is the layer's bias). The raw
increases are computed on one CPU thread (the same scores whatever thread count a trial runs
with), stored per layer under a key of network + data + layers + settings + torch version and
device type, and reused by every later run;
:func:`tether.finetune.regularizers._delta.delta_attention` turns them into weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import copy
import json
from pathlib import Path
import sys
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.files import atomic_write
from tether.finetune._determinism import cache_threads
from tether.finetune._determinism import kernel_identity
from tether.finetune.regularizers._context import PenaltyContext
from tether.jsondata import json_digest


_CACHE_VERSION = 2
_MAX_ABLATION_IMAGES = 256


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


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model's output (the first item of a tuple or list)."""
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
        **kernel_identity(ctx.device),
        **params,
    }
    key = json_digest(payload)
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
    atomic_write(path, lambda handle: handle.write(json.dumps(data).encode()))


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
                loss = F.cross_entropy(logits_of(net(x)), y)
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
            loss0 = F.cross_entropy(logits_of(net(x)), y)
            for name in channels:
                module = net.get_submodule(name)
                handle = module.register_forward_hook(hook)
                parts = []
                try:
                    for chans in torch.split(torch.arange(channels[name]), k_max):
                        k = chans.numel()
                        ablate[0] = chans.to(x.device)
                        logits = logits_of(net(x_rep[: k * b]))
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

    The result depends only on the run's ``cache_key``, the arguments, ``ctx.seed``, the
    torch version and the device type, not on the caller's thread count (it is computed on
    one thread); it is kept as JSON under ``ctx.cache_dir / "delta"`` and reused. The
    caller's global RNG state is not consumed.

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
    with cache_threads(), torch.random.fork_rng(devices=devices):
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
