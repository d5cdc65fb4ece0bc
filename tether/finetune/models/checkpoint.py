"""Backbone weights from a local checkpoint file (``model.checkpoint``).

A ``.safetensors`` file is read with ``safetensors.torch.load_file`` (tensors only, by its
format); any other file with ``torch.load(weights_only=True)``, which refuses pickled Python
objects, so a checkpoint from a stranger cannot run code either way. A torch file may hold a
``state_dict`` directly, or a dict with one under ``"state_dict"`` or ``"model"``
(training-script checkpoints); a leading ``module.`` (``nn.DataParallel``) is stripped. The
keys of the classifier that the new head replaces are dropped, so a checkpoint trained for
another number of classes loads; every other tensor must match the model by name and shape.

Example:
    >>> import torch
    >>> from torchvision.models import resnet18
    >>> torch.save(resnet18().state_dict(), "/tmp/r18.pt")
    >>> model = resnet18(num_classes=7)
    >>> load_backbone(model, read_state_dict("/tmp/r18.pt"), skip="fc", source="/tmp/r18.pt")
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
import pickle
import re
from typing import Any

import torch
from torch import nn

from tether.errors import ConfigError
from tether.errors import one_line


NESTED_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
SAFETENSORS_SUFFIX = ".safetensors"
_SHOWN = 3


def read_state_dict(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the state dict in checkpoint file ``path`` onto the CPU.

    The suffix chooses the reader: ``.safetensors`` for safetensors, anything else for
    ``torch.load``.

    Raises:
        ConfigError: the file is missing, cannot be read by its reader (or the reader is not
            installed), holds Python objects that ``weights_only`` refuses, or holds no state
            dict.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"model.checkpoint {str(path)!r} {what}", kind="checkpoint")
    content = (
        _read_safetensors(path)
        if path.suffix.lower() == SAFETENSORS_SUFFIX
        else _read_torch_file(path)
    )
    state = _find_state_dict(content)
    if state is None:
        raise ConfigError(
            f"checkpoint {path} holds no state dict: expected a dict of tensors, or one under "
            f"{' or '.join(repr(k) for k in NESTED_KEYS)}; found {_describe(content)}",
            kind="checkpoint",
        )
    if all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in state.items()}
    return dict(state)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(
            f"checkpoint {path.name} is a safetensors file, which needs the safetensors "
            "package: install tether[timm] or tether[transformers]",
            kind="checkpoint",
        ) from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError on a bad header, OSError on a read error
        raise ConfigError(
            f"checkpoint {path} is not a file safetensors can read ({_reason(exc)})",
            kind="checkpoint",
        ) from exc


def _read_torch_file(path: Path) -> Any:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if refused is None:  # not a pickle at all: junk whose first byte is an opcode
            raise ConfigError(
                f"checkpoint {path} is not a file torch.load can read ({_reason(exc)})",
                kind="checkpoint",
            ) from exc
        raise ConfigError(
            f"checkpoint {path} cannot be loaded with weights_only=True: it holds Python "
            f"objects{refused}, not only tensors; save model.state_dict() instead",
            kind="checkpoint",
        ) from exc
    except Exception as exc:  # torch.load raises KeyError, EOFError, RuntimeError on junk
        raise ConfigError(
            f"checkpoint {path} is not a file torch.load can read ({_reason(exc)})",
            kind="checkpoint",
        ) from exc
    return content


def _refused_global(error: pickle.UnpicklingError) -> str | None:
    """`` (mod.Class)`` when ``weights_only`` refused a Python object, else ``None``.

    torch wraps the unpickler's own error (``Unsupported global: GLOBAL mod.Class ...`` for an
    object, ``Unsupported operand 119`` for bytes that are no pickle) in a long message.
    """
    text = str(_unwrapped(error))
    if "global" not in text.lower():
        return None
    named = re.search(r"GLOBAL (\S+)", text)
    return f" ({named.group(1)})" if named else ""


def _unwrapped(error: BaseException) -> BaseException:
    inner = error.__context__
    wrapped = isinstance(error, pickle.UnpicklingError)
    return inner if wrapped and isinstance(inner, pickle.UnpicklingError) else error


def _reason(error: BaseException) -> str:
    """The error in one line; for torch's wrapped unpickling error, the unpickler's own."""
    return one_line(_unwrapped(error))


def load_backbone(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    skip: str,
    source: str | PathLike[str],
    name: str | None = None,
) -> None:
    """Copy ``state`` into ``model`` strictly, except the module ``skip`` and its children.

    Args:
        model: the model, still with its original classifier.
        state: tensors by name, as from :func:`read_state_dict`.
        skip: dotted name of the classifier that will be replaced (``fc``); its tensors are
            ignored on both sides.
        source: the checkpoint file, for messages.
        name: the model name, for messages (default: the class name).

    Raises:
        ConfigError: keys missing from ``state`` or not in the model, or a shape mismatch.
    """
    own = model.state_dict()
    prefix = f"{skip}."
    kept = {k: v for k, v in state.items() if not k.startswith(prefix)}
    problem = _mismatch(own, kept, prefix)
    if problem:
        who = name or type(model).__name__
        raise ConfigError(
            f"checkpoint {Path(source).name} does not fit {who}: {problem}", kind="checkpoint"
        )
    kept.update({k: v for k, v in own.items() if k.startswith(prefix)})
    model.load_state_dict(kept, strict=True)


def _mismatch(
    own: Mapping[str, torch.Tensor], kept: Mapping[str, torch.Tensor], prefix: str
) -> str:
    missing = [k for k in own if k not in kept and not k.startswith(prefix)]
    unexpected = [k for k in kept if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{_count(missing, 'key')} missing from the file ({_first(missing)})")
        if unexpected:
            parts.append(f"{_count(unexpected, 'unexpected key')} ({_first(unexpected)})")
        return ", ".join(parts)
    wrong = [k for k in kept if kept[k].shape != own[k].shape]
    if not wrong:
        return ""
    key = wrong[0]
    more = f" (and {len(wrong) - 1} more shape mismatches)" if len(wrong) > 1 else ""
    return (
        f"{key} is {list(kept[key].shape)} in the file, {list(own[key].shape)} in the model{more}"
    )


def _find_state_dict(content: Any) -> Mapping[str, torch.Tensor] | None:
    if _is_state_dict(content):
        return content
    if isinstance(content, Mapping):
        for key in NESTED_KEYS:
            if _is_state_dict(content.get(key)):
                return content[key]
    return None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _describe(content: Any) -> str:
    if isinstance(content, Mapping):
        keys = [str(k) for k in content]
        return f"a dict with keys {_first(keys)}" if keys else "an empty dict"
    return f"a {type(content).__name__}"


def _count(keys: list[str], noun: str) -> str:
    return f"{len(keys)} {noun}{'' if len(keys) == 1 else 's'}"


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown}, ..." if len(keys) > _SHOWN else shown
