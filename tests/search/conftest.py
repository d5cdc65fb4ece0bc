"""Fixtures for the search tests: quiet Optuna, throwaway PostgreSQL databases, and worker
processes that run trivial trials through the same code as ``tether worker``."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
import contextlib
import functools
import multiprocessing
from multiprocessing.process import BaseProcess
import os
from pathlib import Path
import time
from typing import Any
import uuid

import optuna
import pytest


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines would drown the test output."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


def _admin_url(url: str, database: str | None = None) -> str:
    """``url`` as libpq reads it (no ``+psycopg``), on ``database`` if given."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def new_database(server_url: str, name: str) -> str:
    """Create the empty database ``name`` on the server of ``server_url``; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(_admin_url(server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, url: str) -> None:
    """Drop the database of ``url`` (its connections are cut first)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with psycopg.connect(_admin_url(server_url), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the PostgreSQL test server; dropped afterwards.

    A test that cuts connections (``pg_terminate_backend``) or counts them
    (``pg_stat_activity``) then sees only its own.
    """
    url = new_database(postgres_url, f"tether_test_{uuid.uuid4().hex[:12]}")
    try:
        yield url
    finally:
        drop_database(postgres_url, url)


def pg_connect(url: str) -> Any:
    """A psycopg connection (autocommit) to the database of ``url``, named ``tether-test``."""
    import psycopg

    return psycopg.connect(_admin_url(url), autocommit=True, application_name="tether-test")


def _trivial_recipe(base: dict[str, Any], index: int, trial: optuna.Trial) -> dict[str, Any]:
    return {**base, "x": trial.suggest_float("x", 0.0, 1.0)}


def work_tickets(
    url: str,
    names: Sequence[str],
    log_dir: str,
    *,
    recipe: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    slots: int = 1,
    preload: Sequence[str] = (),
    go: str | None = None,
) -> None:
    """One worker process: ``tether worker`` without the spec, on trivial trials.

    It opens its own storage (``StorageOptions(**options)``), loads the studies ``names`` with
    a random sampler and runs their tickets with
    :class:`tether.search.execution.runner.TicketRunner`, whose trials run
    :func:`tether.testing.targets.trivial_target` on ``recipe`` plus a sampled ``x``. Once
    its studies are loaded it creates ``log_dir/ready-<pid>`` and, given ``go``, waits for
    that file to exist before it starts; at the end it writes how many trials it ran to
    ``log_dir/ran-<pid>.txt``.
    """
    import logging

    from tether.search.execution.launcher import Launcher
    from tether.search.execution.runner import TicketRunner
    from tether.search.execution.slots import parse_devices
    from tether.search.storage import StorageOptions
    from tether.search.storage import open_storage
    from tether.testing.targets import trivial_target

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, options=StorageOptions(**(options or {})))
    studies = [
        optuna.load_study(
            study_name=name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=optuna.pruners.NopPruner(),
        )
        for name in names
    ]
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    (Path(log_dir) / f"ready-{os.getpid()}").touch()
    while go is not None and not os.path.exists(go):
        time.sleep(0.05)
    with Launcher(preload=preload) as launcher:
        runner = TicketRunner(
            studies,
            recipe=functools.partial(_trivial_recipe, dict(recipe or {})),
            launcher=launcher,
            slots=parse_devices("cpu", slots),
            log_dir=Path(log_dir),
            target=trivial_target,
        )
        runner.run()
    (Path(log_dir) / f"ran-{os.getpid()}.txt").write_text(str(runner.done))


def trials_ran(log_dir: Path) -> int:
    """How many trials the :func:`work_tickets` processes that finished ran, together."""
    return sum(int(path.read_text()) for path in log_dir.glob("ran-*.txt"))


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[Callable[..., list[BaseProcess]]]:
    """``start_workers(n, url, names, **kwargs)`` starts ``n`` :func:`work_tickets` processes
    (spawned: each a fresh interpreter, as on another machine); any left running at the end of
    the test are killed."""
    started: list[BaseProcess] = []
    context = multiprocessing.get_context("spawn")

    def start(n: int, url: str, names: Sequence[str], **kwargs: Any) -> list[BaseProcess]:
        processes: list[BaseProcess] = [
            context.Process(
                target=work_tickets,
                args=(url, list(names), str(tmp_path / "logs")),
                kwargs=kwargs,
                name=f"tether-test-worker-{len(started) + i}",
            )
            for i in range(n)
        ]
        for process in processes:
            process.start()
        started.extend(processes)
        return processes

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        with contextlib.suppress(Exception):
            process.join(10)
