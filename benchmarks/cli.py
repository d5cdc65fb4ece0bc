"""How fast does the ``tether`` command start? Against ``optuna``'s, side by side.

    python -m benchmarks.cli --repeats 15

Each round runs, in turn and in a random order, fresh processes of the installed console
scripts: ``tether --help``, ``optuna --help`` (Optuna's own CLI, the yardstick: it imports
Optuna), ``tether --version`` and a read-only verb, ``tether compare`` on a SQLite storage
holding the digits spec's studies (created, nothing run: it loads the spec, opens the storage,
prints the table). Wall time from ``fork`` to exit, median and spread over the rounds; the
ratio is each median over ``optuna --help``'s.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


ROOT = Path(__file__).resolve().parents[1]


def _script(name: str) -> str:
    """The console script installed beside this interpreter (``.venv/bin/<name>``)."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"benchmarks.cli: no {name} command beside {sys.executable}")
    return found


def _storage(folder: Path) -> str:
    """A SQLite file with the digits spec's studies, for ``tether compare`` to read."""
    import optuna

    from tether.search.execution.studies import create_studies
    from tether.search.spec import load_specs
    from tether.search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{folder / 'tether.db'}"
    storage = open_storage(url)
    for spec in load_specs(str(ROOT / "studies" / "digits.yaml")):
        create_studies(spec, storage, groups=[])
    return url


def _time(command: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds (default 15)")
    args = parser.parse_args(argv)
    tether, optuna = _script("tether"), _script("optuna")
    with tempfile.TemporaryDirectory() as tmp:
        url = _storage(Path(tmp))
        spec = str(ROOT / "studies" / "digits.yaml")
        commands = {
            "optuna --help": [optuna, "--help"],
            "tether --help": [tether, "--help"],
            "tether --version": [tether, "--version"],
            "tether compare": [tether, "compare", spec, "--storage", url],
        }
        for command in commands.values():  # warm the page cache once
            _time(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            order = list(commands)
            random.shuffle(order)
            for name in order:
                times[name].append(_time(commands[name]))
    base = statistics.median(times["optuna --help"])
    print(f"{'command':<18} {'median s':>9} {'min s':>7} {'max s':>7} {'x optuna --help':>16}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<18} {median:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
            f"{median / base:>16.2f}"
        )
    print(f"{args.repeats} rounds, order shuffled each round; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
