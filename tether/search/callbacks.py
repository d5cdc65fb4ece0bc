"""Optuna callbacks named in a study spec: MLflow, Weights & Biases or one's own, per trial.

A spec's ``callbacks:`` lists factories, each ``"package.module:name"``, alone (called with
no arguments) or with keyword arguments::

    callbacks:
      - mypackage.tracking:make_callback
      - factory: optuna_integration.mlflow:MLflowCallback
        kwargs: {tracking_uri: "sqlite:///mlflow.db", metric_name: val accuracy}

When the spec loads, each factory is imported and its ``kwargs`` are checked against its
signature; a search calls it once with them, before its first trial, and calls what it
returns as ``callback(study, frozen_trial)`` after every trial that ends in this process
(complete, pruned or failed), with the trial as the storage holds it then: what
``study.optimize(callbacks=[...])`` does, so Optuna's integrations work unchanged. MLflow:
``optuna_integration.mlflow:MLflowCallback`` with ``kwargs: {tracking_uri: ..., metric_name:
val accuracy}``. Weights & Biases: ``optuna_integration.wandb:WeightsAndBiasesCallback`` with
``kwargs: {metric_name: val accuracy, wandb_kwargs: {project: tether}, as_multirun: true}``.

Three differences from ``study.optimize``, because a search runs trials on many threads and
processes: the callbacks are called one at a time (they need not be thread-safe); a callback
that raises is logged in one warning line and the search goes on (a tracker's outage must not
stop many workers; ``study.optimize`` would raise); and every process that runs trials calls
its own, for the trials it ran (each ``tether worker`` reports its share, each trial once).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import importlib
import inspect
import logging
import threading
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tether.errors import ConfigError
from tether.search.storage import describe_error
from tether.search.storage import storage_of
from tether.search.storage import trial_id_of


__all__ = ["CallbackSpec", "TrialCallback", "TrialCallbacks", "callbacks_from_data"]

_log = logging.getLogger(__name__)

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]
"""What Optuna's ``study.optimize(callbacks=...)`` takes: ``callback(study, frozen_trial)``."""

_EXTRAS = {"optuna_integration": "mlflow", "mlflow": "mlflow"}
"""Modules a callback factory is often in, and the extra of tether that installs them."""


@dataclass(frozen=True)
class CallbackSpec:
    """One entry of ``callbacks:``: a factory ``"package.module:name"`` and its keyword args.

    Example:
        >>> CallbackSpec("collections:nothing").resolve()
        Traceback (most recent call last):
        ...
        tether.errors.ConfigError: callbacks: collections has no nothing (collections:nothing)
        >>> CallbackSpec("collections:Counter", {"red": 2}).build()
        Traceback (most recent call last):
        ...
        tether.errors.ConfigError: callbacks: collections:Counter(red=2) returned \
Counter({'red': 2}), which is not callable as callback(study, trial)
    """

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> Callable[..., Any]:
        """Import the factory and check that ``kwargs`` fit its signature.

        Raises:
            ConfigError: the path is not ``module:name``, the module or the name cannot be
                found, it is not callable, or ``kwargs`` do not fit.
        """
        module_name, _, name = self.factory.partition(":")
        if not module_name or not name:
            raise ConfigError(
                f"callbacks: {self.factory!r} is not a factory path; "
                "write package.module:name, e.g. optuna_integration.mlflow:MLflowCallback"
            )
        try:
            found: Any = importlib.import_module(module_name)
        except ImportError as error:
            extra = _EXTRAS.get(module_name.split(".")[0])
            hint = f"; install tether[{extra}]" if extra else ""
            raise ConfigError(
                f"callbacks: cannot import {module_name} for {self.factory} ({error}){hint}"
            ) from None
        for part in name.split("."):
            if not hasattr(found, part):
                raise ConfigError(f"callbacks: {module_name} has no {name} ({self.factory})")
            found = getattr(found, part)
        if not callable(found):
            raise ConfigError(
                f"callbacks: {self.factory} is a {type(found).__name__}, not a callable factory"
            )
        try:
            signature = inspect.signature(found)
        except (TypeError, ValueError):  # some builtins have none: the call will tell
            return found
        try:
            signature.bind(**self.kwargs)
        except TypeError as error:
            raise ConfigError(f"callbacks: {self.factory}: bad kwargs ({error})") from None
        return found

    def build(self) -> TrialCallback:
        """Call the factory with ``kwargs``; the callback it returns.

        Raises:
            ConfigError: the factory cannot be resolved (:meth:`resolve`), raised, or
                returned something that cannot be called.
        """
        factory = self.resolve()
        try:
            made = factory(**self.kwargs)
        except Exception as error:
            raise ConfigError(
                f"callbacks: {self._call_text()} failed: {_one_line(error)}"
            ) from None
        if not callable(made):
            raise ConfigError(
                f"callbacks: {self._call_text()} returned {made!r}, which is not callable as "
                "callback(study, trial)"
            )
        return made

    def _call_text(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.factory}({arguments})"


def callbacks_from_data(data: object) -> tuple[CallbackSpec, ...]:
    """Validate ``callbacks:``: a list whose entries are ``"module:name"`` or a mapping
    ``{factory: "module:name", kwargs: {...}}``; each factory is imported and checked
    (:meth:`CallbackSpec.resolve`), none is called.

    Example:
        >>> callbacks_from_data(["collections:OrderedDict", {"factory": "collections:Counter"}])
        (CallbackSpec(factory='collections:OrderedDict', kwargs={}), \
CallbackSpec(factory='collections:Counter', kwargs={}))
        >>> callbacks_from_data({"factory": "collections:Counter"})
        Traceback (most recent call last):
        ...
        tether.errors.ConfigError: callbacks must be a list of factories ("module:name" or \
{factory, kwargs}), got {'factory': 'collections:Counter'}

    Raises:
        ConfigError: naming the entry (``callbacks[1]``) and what is wrong with it.
    """
    if data is None:
        return ()
    if isinstance(data, str | Mapping) or not isinstance(data, Sequence):
        raise ConfigError(
            'callbacks must be a list of factories ("module:name" or {factory, kwargs}), '
            f"got {data!r}"
        )
    specs = []
    for index, entry in enumerate(data):
        spec = _callback_entry(entry, f"callbacks[{index}]")
        try:
            spec.resolve()
        except ConfigError as error:
            raise _numbered(error, index) from None
        specs.append(spec)
    return tuple(specs)


def _callback_entry(entry: object, where: str) -> CallbackSpec:
    if isinstance(entry, str):
        return CallbackSpec(entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(f'{where} must be "module:name" or {{factory, kwargs}}, got {entry!r}')
    unknown = [k for k in entry if k not in ("factory", "kwargs")]
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}; a callback accepts factory, kwargs")
    factory = entry.get("factory")
    if not isinstance(factory, str):
        raise ConfigError(f'{where}.factory must be "module:name", got {factory!r}')
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"{where}.kwargs must map argument names to values, got {kwargs!r}")
    return CallbackSpec(factory, dict(kwargs))


class TrialCallbacks:
    """Callbacks called after each trial ends, one at a time, a failure logged, not raised.

    Empty, it does nothing and reads nothing: a search without ``callbacks:`` pays nothing.

    Args:
        callbacks: ``callback(study, frozen_trial)`` each, called in this order.
        names: what a warning calls each (default: its ``repr``).
    """

    def __init__(
        self, callbacks: Sequence[TrialCallback] = (), *, names: Sequence[str] = ()
    ) -> None:
        self.callbacks = list(callbacks)
        self.names = list(names) or [repr(c) for c in self.callbacks]
        self._lock = threading.Lock()

    @classmethod
    def of_specs(cls, specs: Sequence[CallbackSpec]) -> TrialCallbacks:
        """Build every callback of ``specs`` (:meth:`CallbackSpec.build`)."""
        built = []
        for index, spec in enumerate(specs):
            try:
                built.append(spec.build())
            except ConfigError as error:
                raise _numbered(error, index) from None
        return cls(built, names=[s.factory for s in specs])

    def trial_ended(self, study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> None:
        """Call each callback with ``study`` and ``trial`` as the storage holds it now, if it
        has ended there; never raises (see the module docstring)."""
        if not self.callbacks:
            return
        try:
            frozen = storage_of(study).get_trial(trial_id_of(trial))
        except Exception as error:  # a storage briefly gone must not stop the search
            _log.warning(
                "tether: callbacks skipped for trial %d of %s: cannot read it back (%s)",
                trial.number,
                study.study_name,
                _one_line(error),
            )
            return
        if not frozen.state.is_finished():
            return
        with self._lock:
            for name, callback in zip(self.names, self.callbacks, strict=True):
                try:
                    callback(study, frozen)
                except Exception as error:
                    _log.warning(
                        "tether: callback %s failed on trial %d of %s (%s); the search goes on",
                        name,
                        frozen.number,
                        study.study_name,
                        _one_line(error),
                    )


def _numbered(error: ConfigError, index: int) -> ConfigError:
    """``error`` about entry ``index``: ``callbacks:`` becomes ``callbacks[index]:``."""
    return ConfigError(str(error).replace("callbacks:", f"callbacks[{index}]:", 1))


def _one_line(error: BaseException) -> str:
    """``Type: first line of the message``, passwords masked."""
    return f"{type(error).__name__}: {describe_error(error)}"
