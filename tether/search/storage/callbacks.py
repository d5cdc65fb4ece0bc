"""What happens to the trial of a dead worker: it is enqueued again, exactly once."""

from __future__ import annotations

import copy
import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from tether.search.storage.retry import retry_transient


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's re-enqueueing of a stale trial, made safe to repeat after a lost connection.

    Before it creates the retry it looks for one already made for this failure (a trial whose
    ``retry_history`` ends with the failed trial's number), so a lost reply never enqueues a
    ticket twice. The retry starts clean: of the failed run's attributes only Tether's own
    user markers (``tether:known_good``) carry over, not its recipe, curve and error, which
    would outlive a success, nor its claim token and heartbeat.
    """

    def __init__(self, *, max_retry: int | None, reconnect_timeout: float) -> None:
        with warnings.catch_warnings():  # Optuna calls its retry callbacks experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self.reconnect_timeout = reconnect_timeout

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        template = copy.copy(trial)
        template.user_attrs = {
            k: v for k, v in trial.user_attrs.items() if k.startswith("tether:")
        }
        template.system_attrs = {
            k: v for k, v in trial.system_attrs.items() if not k.startswith("tether:")
        }

        def retried() -> bool | None:
            for other in study.get_trials(deepcopy=False):
                if other.system_attrs.get("retry_history", [])[-1:] == [trial.number]:
                    return True
            return None

        def enqueue() -> bool:
            if not retried():
                RetryHeartbeatStaleTrialCallback.__call__(self, study, template)
            return True

        retry_transient(enqueue, timeout=self.reconnect_timeout, recover=retried)
