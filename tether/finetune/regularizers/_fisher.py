r"""L2-SP-Fisher: L2-SP weighted by the Fisher information of the source task.

Li, Grandvalet, Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018, section 3 (``wd_mode 6`` of the authors' TensorFlow code):

.. math::

    \Omega(w) = \frac{\alpha}{2} \sum_{j \in S} \hat F_j\,(w_j - w^0_j)^2
              + \frac{\beta}{2} \|w_{\bar S}\|_2^2,

where :math:`\hat F` is the diagonal of the Fisher information matrix of the *pretrained*
network on its *source* task (with its source head), as in elastic weight consolidation
(Kirkpatrick et al., PNAS 2017). The authors load F from a file that their repository does not
compute; here it is the "true" Fisher

.. math::

    F_j = \mathbb E_{x} \, \mathbb E_{y \sim p_{w^0}(y \mid x)}
          \Big[ \big(\partial_{w_j} \log p_{w^0}(y \mid x)\big)^2 \Big],

estimated on ``samples`` source images (a seeded draw without replacement), one label drawn
per image from the network's own predictive distribution, so no source labels are needed.
Per-sample gradients come from ``torch.func`` (``vmap`` over ``grad``), or a loop of
single-image backward passes for a model ``vmap`` cannot batch. The network is in ``eval()``
mode (BatchNorm uses its running statistics). The raw F is computed on one CPU thread (the
same F whatever thread count a trial runs with), cached on disk, keyed by the source network,
the source images, their transform, the settings, the torch version and the device type, and
reused by every run.

Scale: the authors add a raw ``fisher_epsilon`` to a raw F, whose size depends on the network
and the data. Here F is first divided by its mean over the regularised entries (the mean
becomes 1), so ``alpha`` means what it means for ``l2-sp``: with F = 1 everywhere the two
penalties are equal. Then ``epsilon`` is added, so that every weight keeps some pull toward
W0 (default ``1e-3``, a thousandth of the mean importance).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import replace
import math
from pathlib import Path
import sys
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.func import grad
from torch.func import vmap
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.files import atomic_write
from tether.finetune._determinism import cache_threads
from tether.finetune._determinism import kernel_identity
from tether.finetune.layers import HEAD
from tether.finetune.layers import unwrap
from tether.finetune.regularizers._context import PenaltyContext
from tether.finetune.regularizers._context import SourceTask
from tether.finetune.regularizers._delta_scores import logits_of
from tether.finetune.regularizers._sp import DistancePenalty
from tether.finetune.regularizers._sp import Include
from tether.finetune.regularizers._sp import penalised_targets
from tether.jsondata import json_digest


_CACHE_VERSION = 2
FISHER_SEED = 0
NO_SOURCE = (
    "penalty l2-sp-fisher needs source images: set penalty.fisher_data to a folder of "
    "source-domain images (the digits task provides its own)"
)
# Per-sample gradients held at once by vmap: chunk * parameters floats (256 MB).
_VMAP_BUDGET = 1 << 26
_MAX_CHUNK = 64


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(f"{prefix}.")


def fisher_diagonal(
    model: nn.Module,
    images: torch.Tensor,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor],
    skip: str,
    samples: int,
    seed: int = FISHER_SEED,
    vectorise: bool = True,
) -> dict[str, torch.Tensor]:
    r"""The diagonal "true" Fisher information of ``model`` on ``images``.

    ``F_j = mean over images x of E_{y ~ p(y|x)} (d log p(y|x) / d w_j)^2`` with one
    ``y`` drawn per image (a ``torch.Generator`` seeded with ``seed``), on at most
    ``samples`` images drawn without replacement with the same generator. The model is used
    in ``eval()`` mode, on the device of its parameters, and left unchanged (mode
    included); the caller's RNG is not consumed.

    Args:
        model: the network with its classifier; its output are logits.
        images: uint8 ``[N, 3, H, W]``.
        transform: uint8 batch on the model's device -> the model's input.
        skip: dotted name of a module whose parameters get no Fisher (the source head).
        samples: how many images to use (all of them if there are fewer).
        seed: seeds the choice of images and the sampled labels.
        vectorise: per-sample gradients with ``torch.func.vmap`` (falls back to a loop
            when the model cannot be vmapped); ``False`` always loops.

    Returns:
        ``{parameter name: float32 tensor of its shape}`` on the CPU, for every parameter
        not under ``skip``.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if len(images) == 0:
        raise ConfigError("penalty l2-sp-fisher: the source image set is empty", kind="data")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(images), generator=generator)[: min(samples, len(images))]
    params = {n: p.detach() for n, p in model.named_parameters() if not _under(n, skip)}
    if not params:
        raise ConfigError(f"the source network has no parameters outside its head {skip!r}")
    device = next(iter(params.values())).device
    log_likelihood = _log_likelihood(model, set(params))
    sums = {n: torch.zeros_like(p, dtype=torch.float32, device=device) for n, p in params.items()}
    numel = sum(s.numel() for s in sums.values())
    chunk = max(1, min(_MAX_CHUNK, _VMAP_BUDGET // max(numel, 1)))
    training = model.training
    model.eval()
    try:
        for index in torch.split(chosen, chunk):
            x = transform(images[index].to(device))
            with torch.no_grad():
                probs = F.softmax(logits_of(model(x)).float(), dim=1)
            y = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
            squares = _vmapped_squares(log_likelihood, params, x, y) if vectorise else None
            if squares is None:
                vectorise = False
                squares = _looped_squares(log_likelihood, params, x, y)
            for n, value in squares.items():
                sums[n] += value
    finally:
        model.train(training)
    return {n: (value / len(chosen)).cpu() for n, value in sums.items()}


LogLikelihood = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def _log_likelihood(model: nn.Module, wanted: set[str]) -> LogLikelihood:
    """``log p(y | x)`` of one image as a function of the ``wanted`` parameters."""
    fixed: dict[str, torch.Tensor] = {
        n: p.detach() for n, p in model.named_parameters() if n not in wanted
    }
    fixed.update(dict(model.named_buffers()))

    def log_likelihood(
        params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        out = logits_of(functional_call(model, {**params, **fixed}, (x.unsqueeze(0),)))
        return F.log_softmax(out.float(), dim=1)[0].gather(0, y.unsqueeze(0)).squeeze(0)

    return log_likelihood


def _vmapped_squares(
    log_likelihood: LogLikelihood,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor] | None:
    """Sum over the batch of squared per-sample gradients, or ``None`` if vmap cannot."""
    try:
        grads = vmap(grad(log_likelihood), in_dims=(None, 0, 0))(params, x, y)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        print(
            f"fisher: per-sample gradients with vmap failed ({reason}); looping instead",
            file=sys.stderr,
            flush=True,
        )
        return None
    return {n: g.float().square().sum(0) for n, g in grads.items()}


def _looped_squares(
    log_likelihood: LogLikelihood,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Sum over the batch of squared per-sample gradients, one image at a time."""
    out = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    per_image = grad(log_likelihood)
    for i in range(len(x)):
        for n, g in per_image(params, x[i], y[i]).items():
            out[n] += g.float().square()
    return out


# ------------------------------------------------------------------------------ the cache


def _cache_path(cache_dir: Path, payload: Mapping[str, Any]) -> Path:
    key = json_digest(dict(payload))
    return Path(cache_dir) / "fisher" / f"{key}.pt"


def _load_cache(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        fisher = data["fisher"]
        if not isinstance(fisher, dict) or not all(
            isinstance(v, torch.Tensor) for v in fisher.values()
        ):
            raise TypeError("no dict of tensors under 'fisher'")
    except Exception as exc:  # a truncated or foreign file: compute again and overwrite it
        print(f"fisher: ignoring unreadable cache {path} ({exc})", file=sys.stderr, flush=True)
        return None
    return {str(k): v for k, v in fisher.items()}


def _save_cache(path: Path, fisher: Mapping[str, torch.Tensor], *, samples: int) -> None:
    payload = {"version": _CACHE_VERSION, "samples": samples, "fisher": dict(fisher)}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def source_fisher(
    ctx: PenaltyContext, *, samples: int, seed: int = FISHER_SEED
) -> dict[str, torch.Tensor]:
    """The raw diagonal Fisher of the run's source task, from the cache or computed.

    Loads ``ctx.source()`` (the pretrained network with its source head, and source images),
    then reads or writes ``ctx.cache_dir / "fisher" / <sha256>.pt``, a plain dict of tensors
    (``torch.load(weights_only=True)``), keyed by the source task's fingerprint (network,
    images, transform), the head name (which parameters are skipped), ``samples``, ``seed``,
    the torch version, the device type and a format version. The seed is fixed by default: F
    belongs to the source network, so every trial and every fine-tuning seed shares one; and
    F is computed on one thread, so it is the same whatever thread count the trial that
    computes it runs with.

    Raises:
        ConfigError: the run has no source images (``ctx.source`` is ``None`` or says so).
    """
    if ctx.source is None:
        raise ConfigError(NO_SOURCE)
    task: SourceTask = ctx.source()
    payload = {
        "source": task.fingerprint,
        "skip": ctx.head,
        "samples": samples,
        "seed": seed,
        "version": _CACHE_VERSION,
        **kernel_identity(ctx.device),
    }
    path = _cache_path(ctx.cache_dir, payload)
    cached = _load_cache(path)
    if cached is not None:
        print(f"fisher: reusing cached Fisher information {path}", file=sys.stderr, flush=True)
        return cached
    n = min(samples, len(task.images))
    print(
        f"fisher: computing the diagonal Fisher information of the source network on {n} "
        "source images ...",
        file=sys.stderr,
        flush=True,
    )
    model = task.model.to(ctx.device)
    with cache_threads():
        fisher = fisher_diagonal(
            model, task.images, transform=task.transform, skip=ctx.head, samples=samples, seed=seed
        )
    _save_cache(path, fisher, samples=n)
    return fisher


def fisher_importance(
    fisher: Mapping[str, torch.Tensor],
    shapes: Mapping[str, Sequence[int]],
    *,
    epsilon: float,
) -> dict[str, torch.Tensor]:
    """``F / mean(F) + epsilon`` on the regularised tensors, the mean over all their entries.

    Args:
        fisher: the raw Fisher diagonal of the source network, by parameter name.
        shapes: the regularised parameters of the fine-tuned model and their shapes.
        epsilon: added after the normalisation.

    Raises:
        ConfigError: a parameter has no Fisher or one of another shape (the source network
            does not match the model; the message names the parameter), or F is zero or not
            finite on average.
    """
    for name, shape in shapes.items():
        if name not in fisher:
            raise ConfigError(
                f"penalty l2-sp-fisher: the source network has no parameter {name!r} of the "
                "fine-tuned model; the two must share every name outside the head"
            )
        if tuple(fisher[name].shape) != tuple(shape):
            raise ConfigError(
                f"penalty l2-sp-fisher: parameter {name!r} is {list(fisher[name].shape)} in "
                f"the source network but {list(shape)} in the fine-tuned model"
            )
    selected = {n: fisher[n].to(torch.float64) for n in shapes}
    total = sum((v.sum() for v in selected.values()), torch.zeros((), dtype=torch.float64))
    count = sum(v.numel() for v in selected.values())
    mean = float(total) / max(count, 1)
    if not (math.isfinite(mean) and mean > 0):
        raise ConfigError(
            "penalty l2-sp-fisher: the Fisher information of the source network is "
            f"{mean!r} on average; is it a trained network?"
        )
    return {n: (v / mean + epsilon).to(torch.float32) for n, v in selected.items()}


def build_fisher(
    ctx: PenaltyContext,
    *,
    alpha: float,
    beta: float,
    include: Include = "weights",
    samples: int = 512,
    epsilon: float = 1e-3,
) -> DistancePenalty:
    """L2-SP-Fisher for the run in ``ctx`` (see the module docstring).

    With ``alpha == 0`` the Fisher term is off: no source task is loaded and F is not
    computed (the penalty is ``beta/2 ||w_head||^2``).
    """
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ConfigError(f"penalty.fisher_epsilon must be a finite number >= 0, got {epsilon!r}")
    ctx = replace(ctx, model=unwrap(ctx.model))
    importance = None
    if alpha > 0:
        fisher = source_fisher(ctx, samples=samples)
        targets = penalised_targets(ctx.model, ctx.groups, include=include, gammas=False)
        shapes = {t.name: tuple(t.param.shape) for t in targets if t.group != HEAD}
        importance = fisher_importance(fisher, shapes, epsilon=epsilon)
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="squared", alpha=alpha,
        beta=beta, half=True, include=include, importance=importance,
    )  # fmt: skip
