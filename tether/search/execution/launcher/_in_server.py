"""Imported inside the forkserver only, before the other preloaded modules.

Each forked child re-imports the harness's main module (multiprocessing's ``spawn.prepare``),
unless the server imported it already, which is what ``"__main__"`` in the preload list is
for. Up to Python 3.13.7 that never happened (CPython gh-126631: the server looks for a
``main_path`` key the parent no longer sends), and the server also ignored the parent's
``sys.path`` (gh-117378). Under pytest, re-running the main script cost each trial ~40 ms; for
``tether`` it would be the import of the whole CLI. So the launcher hands the server, in an
environment variable, exactly what each child would otherwise redo, and this module does it
once. On a Python that does it itself, the stdlib functions called here see it done and return.
"""

from __future__ import annotations

import json
from multiprocessing import process
from multiprocessing import spawn
import os
import sys
import traceback


ENV = "TETHER_FORKSERVER_PREPARE"


def _prepare() -> None:
    raw = os.environ.pop(ENV, None)
    if raw is None:
        return
    data = json.loads(raw)
    if "sys_path" in data:
        sys.path[:] = data["sys_path"]
    current = process.current_process()
    # What the stdlib sets around this call: a main module that starts processes at import
    # time then fails loudly instead of forking forever.
    current._inheriting = True  # type: ignore[attr-defined]
    try:
        if "init_main_from_path" in data:
            spawn.import_main_path(data["init_main_from_path"])
        elif "init_main_from_name" in data:
            spawn._fixup_main_from_name(data["init_main_from_name"])  # type: ignore[attr-defined]
    except (Exception, SystemExit):  # each trial will import it itself, and show why it fails
        print("forkserver: could not preload the main module:", file=sys.stderr)
        traceback.print_exc()
    finally:
        del current._inheriting  # type: ignore[attr-defined]


_prepare()
