"""The one forkserver of this process, shared by every fork-mode :class:`Launcher`.

multiprocessing keeps a single forkserver per process, and its preload list
(``multiprocessing.forkserver.set_forkserver_preload``) is process-global and read once, when
the server starts. So launchers count themselves in and out: the first one sets the preload and
starts the server; later ones share it if everything they want preloaded is already there and
are refused otherwise (the server cannot learn new modules without a restart, and a restart
would orphan the trials of the launchers still using it); the last one out stops it and puts
back the preload list it found. A server started by other code is used as it is.

Two private attributes of the stdlib's server are read (``_forkserver_pid``,
``_preload_modules``) and one private method is called (``_stop``, which CPython's own tests
use); they exist from Python 3.8 to 3.14.
"""

from __future__ import annotations

from collections.abc import Sequence
import importlib.util
import json
from multiprocessing import spawn
import multiprocessing.forkserver
import os
import threading
from typing import Any
import warnings


CHILD_MODULE = "tether.search.execution.launcher._child"
IN_SERVER_MODULE = "tether.search.execution.launcher._in_server"
IN_SERVER_ENV = "TETHER_FORKSERVER_PREPARE"  # read by _in_server

_lock = threading.Lock()
_users = 0
_modules: tuple[str, ...] = ()
_owned = False
_saved_preload: list[str] = []


def _stdlib_server() -> Any:
    server: Any = multiprocessing.forkserver._forkserver
    return server


def check_importable(preload: Sequence[str]) -> tuple[str, ...]:
    """``preload`` as a tuple; a ValueError naming any module that cannot be found.

    The forkserver silently skips modules it cannot import, which would only show up as slow
    trials, so names are checked here, in the parent.
    """
    if isinstance(preload, str):
        raise ValueError(f"preload must be a sequence of module names, got {preload!r}")
    for name in preload:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ValueError(f"preload: no module named {name!r}")
    return tuple(preload)


def server_modules(preload: Sequence[str]) -> list[str]:
    """What the server imports: the harness's main module (see ``_in_server``), ``preload``,
    and the trials' entry point."""
    modules = ["__main__", IN_SERVER_MODULE]
    for module in (*preload, CHILD_MODULE):
        if module not in modules:
            modules.append(module)
    return modules


def _start(modules: list[str]) -> None:
    """Start the stdlib's server with ``modules`` preloaded, and with what ``_in_server``
    needs to import the harness's main module there once for all trials."""
    data = spawn.get_preparation_data("ignore")
    keys = ("sys_path", "init_main_from_path", "init_main_from_name")
    multiprocessing.forkserver.set_forkserver_preload(modules)
    os.environ[IN_SERVER_ENV] = json.dumps({key: data[key] for key in keys if key in data})
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        del os.environ[IN_SERVER_ENV]


def acquire(preload: Sequence[str]) -> None:
    """Count a launcher in; start the server (in the background) if it is the first."""
    global _users, _modules, _owned, _saved_preload
    server = _stdlib_server()
    with _lock:
        if _users == 0:
            if server._forkserver_pid is None:
                _saved_preload = list(server._preload_modules)
                _modules = tuple(server_modules(preload))
                _start(list(_modules))
                _owned = True
            else:
                _modules = tuple(server._preload_modules)
                _owned = False
                missing = [m for m in preload if m not in _modules]
                if missing:
                    warnings.warn(
                        f"the forkserver was started by other code without {missing}; "
                        "trials will import them themselves (slower starts)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        else:
            missing = [m for m in preload if m not in _modules]
            if missing:
                raise ValueError(
                    f"the forkserver is process-global and already runs with preload "
                    f"{list(_modules)}, without {missing}; close the other fork-mode "
                    f"launchers first, or preload the same modules"
                )
        _users += 1


def release() -> None:
    """Count a launcher out; the last one stops the server it started.

    Stopping waits for the server to exit, which it does once every process it forked has
    exited: the caller kills its trials first.
    """
    global _users, _owned
    with _lock:
        _users -= 1
        if _users == 0 and _owned:
            _stdlib_server()._stop()
            multiprocessing.forkserver.set_forkserver_preload(_saved_preload)
            _owned = False
