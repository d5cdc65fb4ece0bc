"""An Optuna RDB storage that survives lost connections and claims tickets in one step.

Only operations that are safe to repeat are retried (:func:`~.retry.retry_transient`): reads,
upserts (attributes, parameters, intermediate values, heartbeats), and state changes, whose
retry first reads whether the lost attempt was committed (a trial is told exactly once, a
ticket claimed once). Creating a study or a trial is not retried, except the re-enqueueing of
a stale trial (:class:`~.callbacks.RetryStaleTrial`), which checks first whether it already
happened.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import functools
import os
import socket
from typing import Any
import uuid

from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tether.search.storage._optuna import CLAIM_ATTR
from tether.search.storage._optuna import REPEATABLE as PRIVATE_REPEATABLE
from tether.search.storage._optuna import InsideRDBStorage
from tether.search.storage.retry import retry_transient


# Reads, and writes that are upserts: repeating them is harmless.
_REPEATABLE = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "get_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "set_study_user_attr",
    "set_study_system_attr",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "record_heartbeat",
    *PRIVATE_REPEATABLE,
)


class ResilientRDBStorage(InsideRDBStorage):
    """An :class:`~optuna.storages.RDBStorage` that survives lost connections.

    The repeatable operations (reads and upserts) are retried by
    :func:`~tether.search.storage.retry.retry_transient`. A state change is retried after
    reading what the lost attempt left: a trial already in the requested state (with the
    requested values) means it was committed, and the call succeeds; a trial another worker
    finished meanwhile raises :class:`~optuna.exceptions.UpdateFinishedTrialError` as usual. A
    claim (WAITING -> RUNNING) whose trial is found RUNNING with this call's token is taken as
    this worker's: a trial run twice costs time, a trial left RUNNING by nobody would never be
    retried.
    """

    def __init__(self, url: str, *, reconnect_timeout: float = 60.0, **kwargs: Any) -> None:
        self.reconnect_timeout = reconnect_timeout
        super().__init__(url, **kwargs)

    def claim_waiting(self, study_id: int) -> int | None:
        """Move a study's oldest WAITING trial to RUNNING and return its id; None if none.

        :meth:`~._optuna.InsideRDBStorage.claim_oldest_waiting`, retried: this is
        :meth:`set_trial_state_values` (``RUNNING``) without first reading every WAITING
        trial, which costs each claim time in proportion to the tickets left. After a lost
        reply the token it wrote tells whether the claim was this call's or another worker's.
        """
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        tried: list[int] = []

        def attempt() -> tuple[int | None]:
            tried.clear()
            return (self.claim_oldest_waiting(study_id, token, tried),)

        def committed() -> tuple[int | None] | None:
            if tried:
                attrs = RDBStorage.get_trial_system_attrs(self, tried[-1])
                if attrs.get(CLAIM_ATTR) == token:
                    return (tried[-1],)
            return None

        return retry_transient(attempt, timeout=self.reconnect_timeout, recover=committed)[0]

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """:meth:`set_trial_user_attr` for several keys in one transaction (upserts; one
        statement for all of them on PostgreSQL)."""
        retry_transient(
            lambda: self.upsert_trial_user_attrs(trial_id, attrs), timeout=self.reconnect_timeout
        )

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        def committed() -> bool | None:
            trial = RDBStorage.get_trial(self, trial_id)
            if trial.state == state and (values is None or trial.values == list(values)):
                return True
            return None

        return retry_transient(
            lambda: RDBStorage.set_trial_state_values(self, trial_id, state, values),
            timeout=self.reconnect_timeout,
            recover=committed,
        )


def _repeatable(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def retried(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retry_transient(
            lambda: method(self, *args, **kwargs), timeout=self.reconnect_timeout
        )

    return retried


for _name in _REPEATABLE:
    setattr(ResilientRDBStorage, _name, _repeatable(getattr(ResilientRDBStorage, _name)))
