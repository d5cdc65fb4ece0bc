"""One fine-tuning run from a recipe to a result, reported as events.

This is what the worker process executes; ``tether finetune`` runs it in the foreground.
Events are plain dicts (the JSON-lines protocol of :mod:`tether.finetune.worker`):
``start``, one ``epoch`` per epoch, then ``result``.
"""

from __future__ import annotations

from collections.abc import Callable
import importlib.metadata
import os
from pathlib import Path
import platform
import sys
import time
from typing import Any

import torch

from tether.errors import ConfigError
from tether.finetune.data import BatchTransform
from tether.finetune.data import Split
from tether.finetune.data import TaskData
from tether.finetune.data import load_task
from tether.finetune.data.types import hold_out
from tether.finetune.layers import layer_groups
from tether.finetune.models import BuiltModel
from tether.finetune.models import build_model
from tether.finetune.models.digits_cnn import pretrained_source_checkpoint
from tether.finetune.models.source import source_task
from tether.finetune.recipe import Recipe
from tether.finetune.regularizers import PenaltyContext
from tether.finetune.regularizers import ProjectionPlan
from tether.finetune.regularizers import Reference
from tether.finetune.regularizers import build_constraint
from tether.finetune.regularizers import build_penalty
from tether.finetune.regularizers import collect_targets
from tether.finetune.regularizers._learner import Learner
from tether.finetune.training import wise
from tether.finetune.training.config import TrainConfig
from tether.finetune.training.loop import Device
from tether.finetune.training.loop import EpochStats
from tether.finetune.training.loop import Trainer
from tether.finetune.training.loop import evaluate
from tether.finetune.training.optim import build_optimizer
from tether.finetune.training.probe import Probe
from tether.finetune.training.probe import fit_probe
from tether.finetune.training.probe import head_features
from tether.finetune.training.probe import load_probe
from tether.finetune.training.relabel import relabel_summary
from tether.jsondata import json_digest
from tether.version import __version__


Emit = Callable[[dict[str, Any]], None]


def default_cache_dir() -> Path:
    """``$TETHER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tether``, else ``~/.cache/tether``."""
    if "TETHER_CACHE_DIR" in os.environ:
        return Path(os.environ["TETHER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tether"


def log(message: str) -> None:
    """Human-readable progress: stderr, never the event stream."""
    print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    threads = os.environ.get("TETHER_NUM_THREADS")
    if threads:  # set by a search that runs several trials on one CPU
        torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _build(recipe: Recipe, task: TaskData, cache_dir: Path) -> BuiltModel:
    checkpoint = None
    if recipe.model.weights == "digits-source" and recipe.model.checkpoint is None:
        checkpoint = pretrained_source_checkpoint(recipe.data, cache_dir=cache_dir)
    return build_model(
        recipe.model,
        num_classes=len(task.classes),
        image_size=recipe.data.image_size,
        checkpoint=checkpoint,
    )


def _cache_key(recipe: Recipe, built: BuiltModel, task: TaskData) -> str:
    identity = {"model": recipe.model.name, "weights": built.weights, "head": built.head,
                "data": task.fingerprint}  # fmt: skip
    return json_digest(identity)[:16]


def versions() -> dict[str, str]:
    """What produced a result (a search can refuse to mix Optuna majors)."""
    import torchvision

    return {
        "tether": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "optuna": importlib.metadata.version("optuna"),
        "python": platform.python_version(),
        **{
            library: importlib.metadata.version(library)
            for library in ("timm", "transformers")
            if library in sys.modules
        },
    }


def _linear_probe(
    model: torch.nn.Module,
    head: str,
    train: Split,
    val: Split | None,
    *,
    cfg: TrainConfig,
    classes: int,
    transform: BatchTransform,
    device: Device,
) -> Probe:
    """LP-FT's first stage: fit the head as a linear probe, and load it."""
    module = model.get_submodule(head)
    if not isinstance(module, torch.nn.Linear):
        kind = type(module).__name__
        raise ConfigError(f"train.linear_probe needs a linear head; {head!r} is a {kind}")

    def features(split: Split) -> torch.Tensor:
        return head_features(model, module, split, transform=transform, device=device.device,
                             batch_size=cfg.eval_batch_size)  # fmt: skip

    probe = fit_probe(
        (features(train), train.labels),
        None if val is None else (features(val), val.labels),
        num_classes=classes,
        c=cfg.probe_c,
    )
    load_probe(module, probe)
    log(f"linear probe: C={probe.c:.3g}, val accuracy {probe.val_accuracy}")
    return probe


def _wise(
    model: torch.nn.Module,
    start: dict[str, torch.Tensor],
    setting: float | str | None,
    *,
    head: str,
    score: Callable[[], float],
) -> dict[str, Any]:
    """WiSE-FT after training: the val-chosen (or fixed) interpolation, loaded in place."""
    if isinstance(setting, float):
        model.load_state_dict(wise.interpolate(start, wise.snapshot(model), setting, keep=[head]))
        return {"alpha": setting}
    alpha, scores = wise.choose(model, start, keep=[head], score=score)
    log(f"WiSE-FT: alpha {alpha:g} (val accuracy {scores[alpha]:.3f})")
    return {"alpha": alpha, "val_by_alpha": {f"{a:g}": v for a, v in scores.items()}}


def run(
    recipe: Recipe,
    *,
    emit: Emit = lambda event: None,
    cache_dir: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Fine-tune once as ``recipe`` says; emit events; return the ``result`` event.

    ``emit`` receives every event of the worker protocol (:mod:`tether.finetune.worker`) as
    it happens, ``print`` for instance; the caches live in ``cache_dir`` (default
    ``$TETHER_CACHE_DIR``, else ``~/.cache/tether``).

    Raises:
        ConfigError: bad input (data, model, checkpoint, group names).
        Stopped: ``should_stop`` turned true.
    """
    started = time.perf_counter()
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    cfg = recipe.train
    seed_everything(cfg.seed)
    device = Device.resolve(cfg)
    task = load_task(recipe.data, cache_dir=cache_dir)
    built = _build(recipe, task, cache_dir)
    model = built.model.to(device.device)
    if device.device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = layer_groups(model, head=built.head)
    targets = collect_targets(model, groups)
    reference = Reference(targets)
    eval_transform = BatchTransform(recipe.data, train=False)
    train_split: Split = task.train_val() if cfg.refit else task.train
    val_split = None if cfg.refit else task.val
    heldout_split = None
    if recipe.constraint.needs_holdout:
        train_split, heldout_split = hold_out(
            train_split, recipe.constraint.holdout, seed=cfg.seed
        )
    start_weights = wise.snapshot(model) if cfg.wise is not None else None
    probe = None
    if cfg.linear_probe:
        probe = _linear_probe(
            model, built.head, train_split, val_split, cfg=cfg, classes=len(task.classes),
            transform=eval_transform, device=device,
        )  # fmt: skip
    learner = Learner.build(
        recipe.constraint, model, head=built.head, groups=groups, device=device.device,
        heldout=heldout_split, transform=eval_transform, seed=cfg.seed,
        autocast=device.autocast,
    )  # fmt: skip
    constraint = learner.projection if learner.projection is not None else build_constraint(
        recipe.constraint, model, head=built.head, groups=groups, reference=reference
    )  # fmt: skip
    penalty = build_penalty(
        recipe.penalty,
        PenaltyContext(
            model=model, head=built.head, groups=groups,
            train_images=task.train.images, train_labels=task.train.labels,
            transform=eval_transform, device=device.device, cache_dir=cache_dir,
            cache_key=_cache_key(recipe, built, task), seed=cfg.seed,
            source=source_task(
                recipe.model, recipe.data, folder=recipe.penalty.fisher_data,
                cache_dir=cache_dir,
            ),
        ),
    )  # fmt: skip
    sizes = {"train": len(train_split), "val": len(task.val), "test": len(task.test)}
    if heldout_split is not None:
        sizes["heldout"] = len(heldout_split)
    emit(
        {
            "event": "start",
            "recipe": recipe.to_dict(),
            "device": str(device.device),
            "amp": None
            if device.amp_dtype is None
            else str(device.amp_dtype).removeprefix("torch."),
            "model": {"name": built.name, "weights": built.weights, "head": built.head},
            "groups": list(groups.names),
            "constraint": learner.describe() or repr(constraint),
            "sizes": sizes,
            "classes": len(task.classes),
            "versions": versions(),
            "pid": os.getpid(),
        }
    )
    head_params = list(model.get_submodule(built.head).parameters())
    trainer = Trainer(
        model, cfg, device=device, constraint=constraint, penalty=penalty,
        train_transform=BatchTransform(recipe.data, train=True),
        eval_transform=eval_transform, should_stop=should_stop,
        optimizer=build_optimizer(model, cfg, head=head_params, ftp=learner.ftp_options()),
    )  # fmt: skip
    learner.attach(trainer.optimizer)
    curve: list[dict[str, Any]] = []

    def on_epoch(stats: EpochStats) -> None:
        event = {"event": "epoch", **stats.__dict__}
        curve.append(event)
        emit(event)

    selected = trainer.fit(train_split, val_split, on_epoch=on_epoch)
    learner.finish()

    def accuracy(split: Split) -> float:
        return evaluate(
            model, split, transform=eval_transform, device=device, batch_size=cfg.eval_batch_size
        ).accuracy

    wise_result = None
    if start_weights is not None:
        wise_result = _wise(model, start_weights, cfg.wise, head=built.head,
                            score=lambda: accuracy(task.val))  # fmt: skip

    result: dict[str, Any] = {
        "event": "result",
        "val_accuracy": None if val_split is None else accuracy(val_split),
        "test_accuracy": accuracy(task.test) if cfg.test or cfg.refit else None,
        "train_accuracy": curve[-1]["train_accuracy"] if curve else None,
        "selected_epoch": selected,
        "epochs": len(curve),
        "distances": ProjectionPlan(targets, reference, groups.names, norm="mars").distances(),
        "distances_frob": ProjectionPlan(
            targets, reference, groups.names, norm="frob"
        ).distances(),
        "device": str(device.device),
        "seconds": time.perf_counter() - started,
    }
    learned = learner.radii()
    if learned is not None:
        result["learned_radii"] = learned
    if probe is not None:
        result["probe"] = {"c": probe.c, "val_accuracy": probe.val_accuracy}
    if wise_result is not None:
        result["wise"] = wise_result
    if task.train.clean_labels is not None and not cfg.refit:
        result["noisy_fraction"] = float(
            (task.train.labels != task.train.clean_labels).float().mean()
        )
    if trainer.correction.enabled:
        result["relabel"] = relabel_summary(
            train_split.labels, trainer.labels, train_split.clean_labels
        )
    emit(result)
    return result
