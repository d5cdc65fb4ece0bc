"""The source task of a run: the pretrained network with its original classifier, and images.

L2-SP-Fisher (Li et al., ICML 2018) weighs each pretrained weight by the Fisher information
of the pretrained network on the task it was trained on. That needs the network *before* its
head is replaced, and images of its domain (no labels: the Fisher samples them from the
network's own predictions). Where they come from:

==========================  ===================================  ==============================
``model``                   network with its source head         source images
==========================  ===================================  ==============================
``digits-cnn``,             the digits source network            the digits of
``weights: digits-source``  (:func:`pretrained_source_checkpoint`)  ``data.source_classes``
torchvision weights         the torchvision model as published    ``penalty.fisher_data``
(``IMAGENET1K_V1``, ...)    (its ImageNet classifier kept)        (a folder)
``model.checkpoint``        the file, classifier included         ``penalty.fisher_data``
==========================  ===================================  ==============================

``penalty.fisher_data``, when set, is used for every model. Images are decoded at the run's
``data.image_size`` and prepared with its evaluation transform, as the target images are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tether.errors import ConfigError
from tether.finetune.data.config import DataConfig
from tether.finetune.data.digits import digits_source_split
from tether.finetune.data.folder import read_image_folder
from tether.finetune.data.transforms import BatchTransform
from tether.finetune.models.checkpoint import load_backbone
from tether.finetune.models.checkpoint import read_state_dict
from tether.finetune.models.config import ModelConfig
from tether.finetune.models.digits_cnn import pretrained_source_checkpoint
from tether.finetune.models.zoo import NO_WEIGHTS
from tether.finetune.models.zoo import classifier_name
from tether.finetune.models.zoo import create_model
from tether.finetune.regularizers import SourceTask
from tether.finetune.regularizers._fisher import NO_SOURCE
from tether.jsondata import json_digest


FORMAT_VERSION = 1
DIGITS_SOURCE = "digits-source"


def _is_digits_source(model: ModelConfig) -> bool:
    return model.weights == DIGITS_SOURCE and model.checkpoint is None


def source_network(
    model: ModelConfig, data: DataConfig, *, cache_dir: Path
) -> tuple[nn.Module, str]:
    """The pretrained network of ``model`` with its original classifier, and its identity.

    Returns:
        The network (CPU, train mode, parameter names those of the fine-tuned model outside
        the head) and a string that identifies its weights.

    Raises:
        ConfigError: ``model.weights`` is ``none`` (no pretrained network); a checkpoint
            without its classifier, or one that does not fit.
    """
    if _is_digits_source(model):
        path: Path | None = pretrained_source_checkpoint(data, cache_dir=cache_dir)
    else:
        path = None if model.checkpoint is None else Path(model.checkpoint)
    if path is None:
        if model.weights == NO_WEIGHTS:
            raise ConfigError(
                "penalty l2-sp-fisher needs a pretrained source network, but model.weights "
                "is 'none'"
            )
        network, loaded = create_model(model.name, model.weights, image_size=data.image_size)
        return network, f"{model.name}:{loaded}"
    state = read_state_dict(path)
    network, _ = create_model(model.name, NO_WEIGHTS, image_size=data.image_size)
    _fit_classifier(network, state, model=model.name, source=path)
    load_backbone(network, state, skip="", source=path, name=model.name)
    stat = path.stat()
    return network, f"{model.name}:checkpoint:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _fit_classifier(
    network: nn.Module, state: dict[str, torch.Tensor], *, model: str, source: Path
) -> None:
    """Resize the final ``nn.Linear`` to the checkpoint's (its number of source classes)."""
    linear = classifier_name(network, name=model)
    weight = state.get(f"{linear}.weight")
    if weight is None or weight.dim() != 2:
        raise ConfigError(
            f"penalty l2-sp-fisher needs the source network with its classifier, but "
            f"checkpoint {source.name} has no {linear}.weight",
            kind="checkpoint",
        )
    parent, _, child = linear.rpartition(".")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=f"{linear}.bias" in state)
    setattr(network.get_submodule(parent), child, layer)


def source_images(
    model: ModelConfig, data: DataConfig, *, folder: str | None, cache_dir: Path
) -> tuple[torch.Tensor, str]:
    """uint8 ``[N, 3, S, S]`` source-domain images and a fingerprint of them.

    ``folder`` (``penalty.fisher_data``) if set; else, for the digits source network on the
    digits task, the images of ``data.source_classes``.

    Raises:
        ConfigError: neither (one line that says to set ``penalty.fisher_data``), or a bad
            folder.
    """
    if folder is not None:
        return read_image_folder(folder, data, cache_dir=cache_dir, key="penalty.fisher_data")
    if data.kind == "digits" and _is_digits_source(model):
        payload = {
            "version": FORMAT_VERSION,
            "kind": "digits-source",
            "source_classes": list(data.source_classes),
            "image_size": data.image_size,
        }
        return digits_source_split(data).images, json_digest(payload)
    raise ConfigError(NO_SOURCE)


def source_task(
    model: ModelConfig, data: DataConfig, *, folder: str | None, cache_dir: Path
) -> Callable[[], SourceTask]:
    """A provider of the run's :class:`SourceTask` (see the module docstring).

    Nothing is loaded until the provider is called (only L2-SP-Fisher calls it); the images
    are checked first, so a missing ``penalty.fisher_data`` fails before any download.
    """

    def load() -> SourceTask:
        images, images_id = source_images(model, data, folder=folder, cache_dir=cache_dir)
        network, network_id = source_network(model, data, cache_dir=cache_dir)
        transform = BatchTransform(data, train=False)
        fingerprint = json_digest(
            {
                "version": FORMAT_VERSION,
                "network": network_id,
                "images": images_id,
                "normalize": transform.normalize,
            }
        )
        return SourceTask(
            model=network, images=images, transform=transform, fingerprint=fingerprint
        )

    return load
