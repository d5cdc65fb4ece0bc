"""Hugging Face image classifiers: ``model.name: hf/<hub name or folder>``, or a folder that
holds a ``config.json`` (what ``save_pretrained`` writes).

Needs the ``transformers`` package (``pip install tether[transformers]``); it is imported when
such a name is first used, so ``import tether`` does not import it.

- Weights: ``pretrained`` (or ``DEFAULT``) is
  ``AutoModelForImageClassification.from_pretrained`` (a hub model is downloaded and cached by
  ``huggingface_hub``; a folder's weights file is read); ``none`` is ``from_config`` with the
  model's ``AutoConfig`` (random initialisation); ``model.checkpoint`` loads a local file into
  that. Parameters are cast to float32 (the training loop's own autocast picks the precision).
- The model stays the transformers model: its parameter names, ``state_dict`` and
  ``save_pretrained`` are the library's. Two forward hooks fit it to Tether's loop, which
  calls ``model(images)`` and takes a tensor: the output's ``logits`` are returned, and a
  model whose forward takes ``interpolate_pos_encoding`` (ViT, DeiT, BEiT) gets it ``True``,
  so that it runs at ``data.image_size``.
- Head: ``classifier`` (or the last ``nn.Linear`` in it, e.g. ``classifier.1`` of ResNet) is
  replaced by a new ``nn.Linear(in_features, num_classes)``, and ``config.num_labels`` set.
  Models with two classifiers (distilled DeiT) are refused. Only the ``gap`` head.
- Layer groups (:func:`hf_groups`): ``embed`` (every parameter before the encoder's layer
  list), the layers in four bands ``blocks.0`` .. ``blocks.3`` (fewer when there are fewer
  layers), ``neck`` (the parameters after them, e.g. the final LayerNorm).

Example:
    >>> import tempfile
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> from tether.finetune.models import ModelConfig, build_model
    >>> config = ViTConfig(
    ...     hidden_size=16,
    ...     num_hidden_layers=2,
    ...     num_attention_heads=2,
    ...     intermediate_size=32,
    ...     image_size=16,
    ...     patch_size=8,
    ... )
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     ViTForImageClassification(config).save_pretrained(folder)
    ...     built = build_model(
    ...         ModelConfig(name=f"hf/{folder}", weights="pretrained"),
    ...         num_classes=5,
    ...         image_size=16,
    ...     )
    >>> built.head, built.weights, built.model.config.num_labels
    ('classifier', 'pretrained', 5)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import inspect
from pathlib import Path
import re
from types import ModuleType
from typing import Any

from torch import nn

from tether.errors import ConfigError
from tether.errors import one_line
from tether.finetune.layers import prefix_groups
from tether.finetune.models.heads import set_submodule
from tether.finetune.models.zoo import HF_CONFIG
from tether.finetune.models.zoo import NO_WEIGHTS
from tether.finetune.models.zoo import PRETRAINED
from tether.finetune.models.zoo import ModelSource


CLASSIFIER = "classifier"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
N_BANDS = 4
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _require_transformers(name: str) -> ModuleType:
    """The ``transformers`` package, or one line that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"model.name: {name} is a Hugging Face model, which needs the transformers "
            "package: install tether[transformers]",
            kind="model",
        ) from None
    return transformers


def _folder(name: str) -> Path | None:
    """The local folder ``name`` names, or ``None`` for a hub name.

    Raises:
        ConfigError: a path that is no folder, or a folder without ``config.json``.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / HF_CONFIG).is_file():
            raise ConfigError(
                f"model.name: folder {name} has no {HF_CONFIG} (a Hugging Face model folder is "
                "what save_pretrained writes)",
                kind="model",
            )
        return path
    if name.startswith(("/", ".", "~")) or not _HUB_NAME.fullmatch(name):
        raise ConfigError(
            f"model.name: {name} is neither a folder nor a Hugging Face Hub name (owner/name)",
            kind="model",
        )
    return None


def check(name: str, *, pretrained: bool) -> None:
    """Check what can be checked without a download: transformers is installed; a folder
    holds a ``config.json`` of an image-classification model (and weights, if asked).

    Raises:
        ConfigError: the first of these that fails.
    """
    transformers = _require_transformers(name)
    folder = _folder(name)
    if folder is None:
        return
    if pretrained and not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(
            f"model.weights: folder {name} has no weights ({WEIGHT_FILES[0]}); set "
            "model.weights=none or model.checkpoint=PATH",
            kind="model",
        )
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"model.name: {folder / HF_CONFIG} is not a config transformers can read "
            f"({one_line(exc)})",
            kind="model",
        ) from exc
    if type(config) not in transformers.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise ConfigError(
            f"model.name: {name} is a {config.model_type!r} model, for which transformers has "
            "no image classifier",
            kind="model",
        )


def create(name: str, *, pretrained: bool, image_size: int | None = None) -> tuple[nn.Module, str]:
    """The image classifier ``name`` with its own classifier, float32, in train mode, hooked.

    ``image_size`` is unused: a model that needs it interpolates its position embeddings.

    Raises:
        ConfigError: the hub cannot be reached, or the name or folder holds no model.
    """
    transformers = _require_transformers(name)
    folder = _folder(name)
    source = str(folder) if folder is not None else name
    auto = transformers.AutoModelForImageClassification
    try:
        with _quiet(transformers):
            if pretrained:
                model = auto.from_pretrained(source)
            else:
                model = auto.from_config(transformers.AutoConfig.from_pretrained(source))
    except (OSError, ValueError, KeyError) as exc:  # no network, no such repo, a bad config
        where = f"folder {source}" if folder is not None else "the Hugging Face Hub"
        raise ConfigError(
            f"model.name: could not load {name} from {where} ({one_line(exc)}); a hub model "
            "is downloaded once, then read from the cache",
            kind="model",
        ) from exc
    model.float()
    model.train()
    _hook_forward(model)
    return model, PRETRAINED if pretrained else NO_WEIGHTS


@contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """No progress bar or load report on stderr (Tether's log) while loading; then as it was.

    What goes wrong is Tether's to say, in one line.
    """
    logging = transformers.utils.logging
    shown, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if shown:
            logging.enable_progress_bar()


def _hook_forward(model: nn.Module) -> None:
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        model.register_forward_pre_hook(_interpolate_positions, with_kwargs=True)
    model.register_forward_hook(_logits)


def _interpolate_positions(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, {"interpolate_pos_encoding": True, **kwargs}


def _logits(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """``output.logits`` (``output[0]`` for a tuple) of a transformers forward."""
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits
    return output[0] if isinstance(output, tuple) else output


def classifier(model: nn.Module) -> str:
    """``classifier``, or the dotted name of the last ``nn.Linear`` inside it.

    Raises:
        ConfigError: the model has no such layer (a distilled model's two classifiers).
    """
    module = getattr(model, CLASSIFIER, None)
    if isinstance(module, nn.Linear):
        return CLASSIFIER
    inner = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)] if module else []
    if inner:
        return f"{CLASSIFIER}.{inner[-1]}"
    raise ConfigError(
        f"{type(model).__name__} has no linear {CLASSIFIER!r} layer; Tether fine-tunes image "
        "classifiers with one",
        kind="model",
    )


def new_head(model: nn.Module, num_classes: int) -> str:
    """A new ``nn.Linear(in_features, num_classes)`` in place of the classifier; its name."""
    head = classifier(model)
    old = model.get_submodule(head)
    if not isinstance(old, nn.Linear):  # classifier() only names Linear layers
        raise TypeError(f"{head} is a {type(old).__name__}")
    set_submodule(model, head, nn.Linear(old.in_features, num_classes))
    config = getattr(model, "config", None)
    if config is not None:
        config.num_labels = num_classes
    return head


def fit_state(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's tensors under the model's own names.

    A state dict of the model itself (``torch.save(model.state_dict())``) is returned as it
    is. A file in the layout ``save_pretrained`` writes (which may name and split tensors
    otherwise, e.g. transformers 5's ``attention.attention.key`` for ``attention.k_proj``) is
    converted by ``from_pretrained(None, config=..., state_dict=...)``, transformers' own
    loading; tensors it found missing are left out and unexpected ones kept, so that the
    strict load that follows names them.

    Raises:
        ConfigError: a tensor outside the classifier has another shape than the model's.
    """
    own = model.state_dict()
    if all(key in own for key in state):
        return state
    transformers = _require_transformers(type(model).__name__)
    loader: Any = type(model)
    with _quiet(transformers):
        converted, info = loader.from_pretrained(
            None,
            config=model.config,
            state_dict=state,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    head = classifier(model)
    mismatched = sorted(m for m in info.get("mismatched_keys", ()) if not _under(m[0], head))
    if mismatched:
        key, in_file, in_model = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ConfigError(
            f"the checkpoint does not fit {type(model).__name__}: {key} is {list(in_file)} in "
            f"the file, {list(in_model)} in the model{more}",
            kind="checkpoint",
        )
    missing = set(info.get("missing_keys", ()))
    fitted = {k: v for k, v in converted.state_dict().items() if k not in missing}
    fitted.update({k: state[k] for k in info.get("unexpected_keys", ()) if k in state})
    return fitted


def hf_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Tether's layer groups of a transformers image classifier, head excluded.

    The encoder's layer list is the outermost ``nn.ModuleList`` that holds the most
    parameters (``vit.layers``, ``convnext.encoder.stages``); parameters before its first
    layer are ``embed``, its layers are cut into at most four contiguous bands
    ``blocks.<i>``, and the parameters after it (a final LayerNorm, a pooler) are ``neck``.
    A model with no such list gets one ``extractor`` group. A model whose head is not a
    ``classifier`` (GPT-2's ``score``) has it in ``neck``, which
    :func:`~tether.finetune.layers.layer_groups` takes out again by its name.
    """
    try:
        head = classifier(model)
    except ConfigError:
        head = ""
    params = [n for n, _ in model.named_parameters() if not _under(n, head)]
    layers = _layer_list(model, head)
    if layers is None:
        return prefix_groups(model, {"extractor": params})
    name, count = layers
    bands = min(N_BANDS, count)
    band_of = {str(i): i * bands // count for i in range(count)}
    members: dict[str, list[str]] = {"embed": []}
    members.update({f"blocks.{b}": [] for b in range(bands)})
    members["neck"] = []
    seen_layers = False
    for param in params:
        if _under(param, name):
            index = param[len(name) + 1 :].split(".", 1)[0]
            members[f"blocks.{band_of[index]}"].append(param)
            seen_layers = True
        else:
            members["neck" if seen_layers else "embed"].append(param)
    return prefix_groups(model, members)


def _layer_list(model: nn.Module, head: str) -> tuple[str, int] | None:
    """The dotted name and length of the outermost ModuleList with the most parameters."""
    best: tuple[int, str, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or _under(name, head) or not len(module):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, len(module))
    return None if best is None or best[0] == 0 else (best[1], best[2])


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


SOURCE = ModelSource(
    label="Hugging Face",
    check=check,
    create=create,
    classifier=classifier,
    new_head=new_head,
    fit_state=fit_state,
)
