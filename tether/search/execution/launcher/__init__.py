"""Trial processes that start in a fraction of a second and still die alone.

Each Optuna trial is one fine-tuning run in its own process, so that a crash, an out-of-memory
error or a pruned run costs that trial and nothing else. A fresh interpreter per trial spends
~3.4 s importing torch and torchvision before it does anything (``benchmarks/search.py``
measures it), which alone is far above the harness's budget of 0.5 s per trial. So, by
default, trials are forked:

* **forkserver.** :class:`Launcher` starts multiprocessing's forkserver, which imports torch,
  torchvision and the fine-tuning code once; every trial is a ``fork()`` of that server, a copy
  of an interpreter with all of it in memory. The server is not the harness: the harness may
  hold threads, database connections and, on a GPU machine, CUDA state, none of which survive
  a fork; the server holds nothing but imported modules.
* **CUDA.** A process cannot use CUDA if it was forked after its parent initialised CUDA. The
  server never touches CUDA (importing torch does not initialise it), and the child sets
  ``CUDA_VISIBLE_DEVICES`` to its device before anything can initialise it, so each trial sees
  exactly its GPU as ``cuda:0``, or no GPU for ``""``.
* **process groups.** Each trial calls ``setsid()``: it leads its own session and process
  group. :meth:`TrialProcess.kill` kills the group, data-loader workers included, and after a
  trial exits whatever it left in its group is killed too. A trial never reads the terminal.
* **Ctrl-C.** The terminal sends SIGINT to its foreground process group: the harness and the
  forkserver (which ignores it), never a trial. The harness alone decides: typically it stops
  its trials (:meth:`TrialProcess.stop`: SIGTERM, the worker finishes its batch and emits
  ``stopped``) or closes the launcher (SIGKILL). So each trial gets exactly one signal, from
  the harness, never a second one from the terminal. A trial also dies, with its group, as soon
  as the harness process is gone, even after SIGKILL (see ``_child._die_with_parent``).
* **pipes.** Events travel over a pipe of their own, not stdout; stdout and stderr go to the
  trial's log file, so concurrent trials do not interleave in the terminal and a stray
  ``print`` cannot corrupt the protocol.

``mode="subprocess"`` runs ``python -m tether.finetune.worker`` instead (events on its stdout, same
session and log handling): the fallback, and the benchmark's point of comparison.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tether.testing.targets import trivial_target
    >>> log = Path(tempfile.mkdtemp()) / "trial.log"
    >>> with Launcher(preload=()) as launcher:
    ...     trial = launcher.start(
    ...         {"epochs": 2, "x": 0.5}, device="", log_path=log, target=trivial_target
    ...     )
    ...     kinds = [event["event"] for event in trial.events(timeout=60)]
    ...     code = trial.wait()
    >>> kinds, code
    (['start', 'epoch', 'epoch', 'result'], 0)
"""

from __future__ import annotations

from tether.search.execution.launcher._launcher import DEFAULT_PRELOAD
from tether.search.execution.launcher._launcher import Launcher
from tether.search.execution.launcher._launcher import Mode
from tether.search.execution.launcher._trial import TrialProcess


__all__ = [
    "DEFAULT_PRELOAD",
    "Launcher",
    "Mode",
    "TrialProcess",
]
