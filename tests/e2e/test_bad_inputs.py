"""Bad input, nothing written: one line naming the problem, exit code 2, storage untouched.

A table of bad inputs across study specs, recipes, CLI flags, datasets, checkpoints and storage
URLs, each run through the real ``tether`` entry point (:func:`tether.cli.main`, in-process for
speed; two cases through a subprocess, the console script's ``python -m tether``). Every
case runs against a storage that already holds a spec's studies (a SQLite file, or PostgreSQL
for the cases marked so) and checks that:

- the exit code is 2;
- stderr is exactly one line, ``tether: error: ...``, holding the expected words (the key, the
  value, the path), and stdout is empty: no traceback, no progress line, no Python warning and
  no log record (Optuna's or any other library's);
- the storage is exactly as it was (the SQLite folder byte for byte; on PostgreSQL every row of
  every study of this module's spec name), and the working directory holds no new file (no
  ``tether.db``, no ``tether-logs/``, no report).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
from dataclasses import field
import hashlib
import logging
import os
from pathlib import Path
import random
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any
import uuid
import warnings

import optuna
from PIL import Image
import pytest
import sqlalchemy
import torch
import yaml

from tests.conftest import ROOT
from tether.cli import main
from tether.finetune.models.digits_cnn import DigitsCNN
from tether.testing.specs import tiny_digits_spec


OPTUNA_TABLES_BY_STUDY = (
    "studies",
    "study_directions",
    "study_user_attributes",
    "study_system_attributes",
    "trials",
)
OPTUNA_TABLES_BY_TRIAL = (
    "trial_params",
    "trial_values",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_intermediate_values",
    "trial_heartbeats",
)
SECRET = "s3cret-pw"


class PickledObject:
    """Not a tensor: ``torch.load(weights_only=True)`` must refuse a file holding one."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


# ---------------------------------------------------------------------------------------------
# The storages that already hold studies, and their snapshots


@dataclass(frozen=True)
class World:
    """What every case starts from: a good spec whose studies exist in the storage."""

    root: Path
    name: str  # the spec's name: its studies are <name>/standard and <name>/mars-pgm
    spec: Path
    store: Path  # the folder of the SQLite file
    sqlite_url: str
    cache_dir: Path


def _spec_data(name: str) -> dict[str, Any]:
    return tiny_digits_spec(
        name,
        recipe=str(ROOT / "configs" / "digits.yaml"),
        sampler={"name": "random", "seed": 0},
        evaluation={"n_seeds": 1},
    )


def _populate(spec_path: Path, url: str) -> None:
    """Create the spec's studies as ``tether run`` does, and finish one trial of each."""
    from tether.search.execution.studies import create_studies
    from tether.search.spec import load_spec
    from tether.search.storage import open_storage

    storage = open_storage(url)
    spec = load_spec(str(spec_path))
    for study in create_studies(spec, storage):
        with warnings.catch_warnings():
            # a worker's trials have tether's own heartbeat; this stand-in needs none
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = study.ask()
            trial.set_user_attr("device", "cpu")
            study.tell(trial, 0.5)
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    name = f"badinput-{uuid.uuid4().hex[:10]}"
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec_data(name), sort_keys=False))
    store = root / "store"
    store.mkdir()
    url = f"sqlite:///{store}/tether.db"
    _populate(spec, url)
    return World(root, name, spec, store, url, cache_dir)


@pytest.fixture(scope="module")
def pg_world(world: World, postgres_url: str) -> Iterator[str]:
    """The same studies on the PostgreSQL test server; deleted afterwards."""
    _populate(world.spec, postgres_url)
    yield postgres_url
    storage = optuna.storages.RDBStorage(postgres_url)
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name.startswith(world.name):
            optuna.delete_study(study_name=summary.study_name, storage=storage)
    storage.engine.dispose()


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) by relative path -> sha256 of its bytes."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _pg_rows(url: str, prefix: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every Optuna table that belongs to a study whose name starts ``prefix``.

    Scoped by name because the test database is shared with other test modules; every spec of
    this module is named ``prefix`` or ``prefix-...``, so a study a bad input wrongly created
    would be seen too.
    """
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    studies = "SELECT study_id FROM studies WHERE study_name LIKE :prefix"
    trials = f"SELECT trial_id FROM trials WHERE study_id IN ({studies})"
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        for table in (*OPTUNA_TABLES_BY_STUDY, *OPTUNA_TABLES_BY_TRIAL):
            column, scope = (
                ("study_id", studies) if table in OPTUNA_TABLES_BY_STUDY else ("trial_id", trials)
            )
            query = sqlalchemy.text(f"SELECT * FROM {table} WHERE {column} IN ({scope})")
            result = connection.execute(query, {"prefix": f"{prefix}%"})
            rows[table] = sorted((tuple(row) for row in result), key=repr)
    engine.dispose()
    return rows


# ---------------------------------------------------------------------------------------------
# What a case writes before it runs


class _SilentServer:
    """A TCP port that accepts connections and never answers (a host behind a dead link).

    It drops them after ``drop_after`` seconds, so that a client with no connect timeout
    fails then instead of hanging the test suite.
    """

    def __init__(self, drop_after: float) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]
        self.timer = threading.Timer(drop_after, self.socket.close)
        self.timer.start()

    def close(self) -> None:
        self.timer.cancel()
        self.socket.close()


@dataclass(frozen=True)
class Ctx:
    """A case's view: its own empty working folder, and the storage with the studies."""

    tmp: Path
    url: str
    world: World
    servers: list[_SilentServer] = field(default_factory=list)

    def spec(self, text: str | None = None, **changes: Any) -> str:
        """A spec file: the world's spec (same name, same studies) with top-level changes."""
        path = self.tmp / "bad-spec.yaml"
        data = {**_spec_data(self.world.name), **changes}
        path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def run(self, spec: str, *flags: str) -> list[str]:
        """``tether run SPEC`` on the case's storage, searching only, on the CPU."""
        return ["run", spec, "--storage", self.url, "--devices", "cpu", "--no-evaluate",
                "--no-report", *flags]  # fmt: skip

    def recipe(self, text: str | None = None, **sections: Any) -> str:
        """A recipe file: a tiny digits recipe with some sections replaced."""
        data: dict[str, Any] = {
            "model": {"name": "digits-cnn", "weights": "none"},
            "data": {"kind": "digits", "shots": 5, "val_shots": 3},
            "train": {"epochs": 1, "batch_size": 16, "lr_step": 0},
            "constraint": {"norm": "mars", "radius": 0.5, "relative": True, "head_radius": 5.0},
        }
        data.update(sections)
        path = self.tmp / "bad-recipe.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def finetune(self, recipe: str, *flags: str) -> list[str]:
        return ["finetune", recipe, "--cache-dir", str(self.world.cache_dir), *flags]

    def folder(self, layout: dict[str, dict[str, int]]) -> Path:
        """An image folder ``{split: {class: count}}``; split ``""`` for a single tree."""
        root = self.tmp / "images"
        for split, classes in layout.items():
            for c, (name, count) in enumerate(classes.items()):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    color = (60 * c, 30 * i, 90)
                    Image.new("RGB", (8, 8), color).save(root / split / name / f"{i}.png")
        return root

    def folder_recipe(self, root: Path) -> list[str]:
        data = {"kind": "folder", "root": str(root), "image_size": 8}
        return self.finetune(self.recipe(data=data))

    def silent_host(self) -> str:
        """``host:port`` of a server that never answers (closed when the case ends)."""
        server = _SilentServer(drop_after=4.0)
        self.servers.append(server)
        return f"127.0.0.1:{server.port}"

    def checkpoint(self, content: object | None = None, *, raw: bytes | None = None) -> list[str]:
        """``tether finetune`` of the tiny digits recipe starting from a checkpoint file."""
        path = self.tmp / "bad.pt"
        if raw is not None:
            path.write_bytes(raw)
        else:
            torch.save(content, path)
        model = {"name": "digits-cnn", "weights": "none", "checkpoint": str(path)}
        return self.finetune(self.recipe(model=model))


Setup = Callable[[Ctx], list[str]]


def _three_splits(classes: dict[str, int]) -> dict[str, dict[str, int]]:
    return {"train": dict(classes), "val": dict(classes), "test": dict(classes)}


def _corrupt_image(ctx: Ctx) -> list[str]:
    root = ctx.folder(_three_splits({"ant": 2, "bee": 2}))
    png = root / "val" / "bee" / "1.png"
    Image.frombytes("RGB", (8, 8), random.Random(0).randbytes(192)).save(png)  # no run-lengths
    png.write_bytes(png.read_bytes()[:-40])  # PIL opens it; decoding the pixels fails
    return ctx.folder_recipe(root)


def _mismatched_classes(ctx: Ctx) -> list[str]:
    layout = _three_splits({"ant": 2, "bee": 2})
    layout["test"] = {"ant": 2, "wasp": 2}
    return ctx.folder_recipe(ctx.folder(layout))


def _empty_class(ctx: Ctx) -> list[str]:
    root = ctx.folder(_three_splits({"ant": 2, "bee": 2}))
    (root / "train" / "cicada").mkdir()
    for split in ("val", "test"):
        ctx.folder({split: {"cicada": 1}})
    return ctx.folder_recipe(root)


def _wrong_shapes(ctx: Ctx) -> list[str]:
    return ctx.checkpoint(DigitsCNN(5, widths=(8, 16, 32)).state_dict())


def _wrong_keys(ctx: Ctx) -> list[str]:
    state = {f"features.{k}": v for k, v in DigitsCNN(5).state_dict().items()}
    return ctx.checkpoint({"state_dict": state, "epoch": torch.tensor(3)})


def _missing_in_run(ctx: Ctx) -> list[str]:
    # Everything about the spec is valid; only the data is not there. The studies must not be
    # created (nor trials run and fail) in a new storage.
    changes = {"model.weights": "none", "data.kind": "folder", "data.image_size": 8,
               "data.root": str(ctx.tmp / "absent")}  # fmt: skip
    spec = ctx.spec(set={**_spec_data("x")["set"], **changes})
    new = f"sqlite:///{ctx.tmp}/new.db"
    return ["run", spec, "--storage", new, "--devices", "cpu", "--no-evaluate", "--no-report",
            "--methods", "standard", "--launcher", "subprocess"]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The table

SPEC = "spec"
RECIPE = "recipe"
FLAGS = "flags"
DATA = "data"
CHECKPOINT = "checkpoint"
STORAGE = "storage"
STUDY = "study"


@dataclass(frozen=True)
class Case:
    category: str
    setup: Setup
    expected: tuple[str, ...]
    postgres: bool = False  # run against (and snapshot) the PostgreSQL storage
    subprocess: bool = False  # through the console script in a fresh interpreter
    max_seconds: float | None = None
    env: tuple[tuple[str, str], ...] = ()


def _case(
    name: str,
    category: str,
    setup: Setup,
    *expected: str,
    xfail: str | None = None,
    **options: Any,
) -> Any:
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    return pytest.param(Case(category, setup, expected, **options), id=name, marks=marks)


_STORAGE_LINE = (
    "search/commands.py _open prints 'storage: <url>' on stderr before the spec's studies, "
    "--devices, --trials-per-device and --methods are checked: two lines"
)
_NO_STUDY = (
    "search/commands.py {verb}: a spec none of whose studies exist is not an error "
    "(exit 0, {what})"
)

WARM_MARS = {"relative": True, "radius": {"low": 0.05, "high": 1.0}, "head_radius": [1.0]}

CASES = [
    # --- study specs (tether run, against the storage holding the spec's studies)
    _case("spec-malformed-yaml", SPEC,
          lambda c: c.run(c.spec("name: x\nmethods: {standard: {}\n")),
          "bad-spec.yaml", "not valid YAML (line"),
    _case("spec-not-a-mapping", SPEC, lambda c: c.run(c.spec("- standard\n- l2-sp\n")),
          "bad-spec.yaml", "must be a mapping"),
    _case("spec-missing-file", SPEC, lambda c: c.run(str(c.tmp / "absent.yaml")),
          "absent.yaml", "does not exist"),
    _case("spec-unknown-top-level-key", SPEC,
          lambda c: c.run(c.spec(budgett={"n_trials": 3})), "unknown key budgett"),
    _case("spec-inverted-range", SPEC,
          lambda c: c.run(c.spec(methods={"mars-pgm": {"radius": {"low": 1.0, "high": 0.1},
                                                       "head_radius": [1.0]}})),
          "methods.mars-pgm.radius", "low=1.0, high=0.1"),
    _case("spec-empty-range", SPEC,
          lambda c: c.run(c.spec(methods={"l2-sp": {"alpha": {"low": 0.5, "high": 0.5},
                                                    "beta": [0.1]}})),
          "methods.l2-sp.alpha", "low must be < high"),
    _case("spec-log-range-from-zero", SPEC,
          lambda c: c.run(c.spec(methods={"mars-pgm": {"radius": {"low": 0.0, "high": 1.0},
                                                       "head_radius": [1.0]}})),
          "methods.mars-pgm.radius", "> 0 on a log scale"),
    _case("spec-unknown-method", SPEC,
          lambda c: c.run(c.spec(methods={"mars-pgn": {}})), "mars-pgn"),
    _case("spec-unknown-norm", SPEC,
          lambda c: c.run(c.spec(methods={"pgm": {"norm": ["mars", "l3"], "radius": [0.1],
                                                  "head_radius": [1.0]}})),
          "methods.pgm.norm", "'l3'"),
    _case("spec-wrong-type", SPEC, lambda c: c.run(c.spec(budget={"n_trials": "ten"})),
          "budget.n_trials", "'ten'"),
    _case("spec-zero-budget", SPEC, lambda c: c.run(c.spec(budget={"n_trials": 0})),
          "budget.n_trials must be >= 1"),
    _case("spec-negative-budget-by-set", SPEC,
          lambda c: c.run(str(c.world.spec), "--set", "budget.n_trials=-3"),
          "budget.n_trials", "-3"),
    _case("spec-zero-repeats", SPEC,
          lambda c: c.run(c.spec(budget={"n_trials": 2, "repeats": 0})),
          "budget.repeats must be >= 1, got 0"),
    _case("spec-fractional-repeats-by-set", SPEC,
          lambda c: c.run(str(c.world.spec), "--set", "budget.repeats=1.5"),
          "budget.repeats must be an integer", "1.5"),
    _case("spec-unknown-sampler", SPEC, lambda c: c.run(c.spec(sampler={"name": "tpee"})),
          "sampler.name", "'tpee'"),
    _case("spec-unknown-pruner", SPEC, lambda c: c.run(c.spec(pruner={"name": "medain"})),
          "pruner.name", "'medain'"),
    _case("spec-missing-recipe", SPEC, lambda c: c.run(c.spec(recipe="nowhere.yaml")),
          "nowhere.yaml"),
    _case("spec-enqueue-outside-range", SPEC,
          lambda c: c.run(c.spec(methods={"mars-pgm": {"radius": {"low": 0.05, "high": 1.0},
                                                       "head_radius": [1.0],
                                                       "enqueue": [{"radius": 5.0}]}})),
          "methods.mars-pgm.enqueue[0].radius", "5.0"),
    _case("spec-spd-strength-below-zero", SPEC,
          lambda c: c.run(c.spec(methods={"spd": {"lam": {"low": -0.5, "high": 1.0,
                                                          "log": False}}})),
          "methods.spd", "train.spd_lam", "-0.5"),
    _case("spec-tpgm-projection-every-0-steps", SPEC,
          lambda c: c.run(c.spec(methods={"tpgm": {"proj_freq": {"low": 0, "high": 4}}})),
          "methods.tpgm", "constraint.proj_freq", "0"),
    _case("spec-tpgm-holdout-reaching-1", SPEC,
          lambda c: c.run(c.spec(methods={"tpgm": {"holdout": {"low": 0.1, "high": 1.0}}})),
          "methods.tpgm", "constraint.holdout", "1.0"),
    _case("spec-warm-start-from-a-method-not-in-the-spec", SPEC,
          lambda c: c.run(c.spec(methods={"mars-pgm": {**WARM_MARS, "warm_start": "tpgm"}})),
          "methods.mars-pgm.warm_start", "tpgm is not a method of this spec"),
    _case("spec-warm-start-from-a-method-that-learns-no-radii", SPEC,
          lambda c: c.run(c.spec(methods={"standard": {},
                                          "mars-pgm": {**WARM_MARS, "warm_start": "standard"}})),
          "methods.mars-pgm.warm_start", "standard learns no radii"),
    _case("spec-warm-start-on-a-method-without-radii", SPEC,
          lambda c: c.run(c.spec(methods={"ftp": {}, "standard": {"warm_start": "ftp"}})),
          "methods.standard.warm_start", "searches no radii"),
    _case("spec-negative-radius-by-set", SPEC,
          lambda c: c.run(str(c.world.spec), "--set", "set.constraint.head_radius=-1"),
          "constraint.head_radius", "-1"),
    _case("spec-unknown-model", SPEC,
          lambda c: c.run(str(c.world.spec), "--set", "set.model.name=resnet5"), "resnet5"),
    _case("spec-through-the-console-script", SPEC,
          lambda c: c.run(c.spec(methods={"standard": {"lr": {"low": 1e-2, "high": 1e-3}}})),
          "methods.standard.lr", "low must be < high", subprocess=True),
    _case("spec-unknown-sampler-on-postgres", SPEC,
          lambda c: c.run(c.spec(sampler={"name": "bayes"})), "'bayes'", postgres=True),
    # --- recipes (tether finetune)
    _case("recipe-malformed-yaml", RECIPE, lambda c: c.finetune(c.recipe("model: [resnet\n")),
          "bad-recipe.yaml", "not valid YAML (line"),
    _case("recipe-missing-file", RECIPE, lambda c: c.finetune(str(c.tmp / "absent.yaml")),
          "absent.yaml", "does not exist"),
    _case("recipe-unknown-key", RECIPE,
          lambda c: c.finetune(c.recipe(), "--set", "train.epoch=3"), "unknown key train.epoch"),
    _case("recipe-wrong-type", RECIPE,
          lambda c: c.finetune(c.recipe(), "--set", "train.epochs=ten"),
          "train.epochs must be an integer", "'ten'"),
    _case("recipe-negative-radius", RECIPE,
          lambda c: c.finetune(c.recipe(), "--set", "constraint.radius=-1"),
          "constraint", "must be > 0", "-1"),
    _case("recipe-unknown-norm", RECIPE,
          lambda c: c.finetune(c.recipe(), "--set", "constraint.norm=l3"), "'l3'"),
    _case("recipe-unknown-model", RECIPE,
          lambda c: c.finetune(c.recipe(model={"name": "resnet5", "weights": "none"})),
          "resnet5"),
    _case("recipe-set-without-value", RECIPE,
          lambda c: c.finetune(c.recipe(), "--set", "train.epochs"), "key=value"),
    # --- command-line flags
    _case("flag-devices", FLAGS, lambda c: c.run(str(c.world.spec), "--devices", "gpu0"),
          "--devices", "'gpu0'"),
    _case("flag-negative-trials-per-device", FLAGS,
          lambda c: c.run(str(c.world.spec), "--trials-per-device", "-1"),
          "--trials-per-device", "-1"),
    _case("flag-unknown-method", FLAGS,
          lambda c: c.run(str(c.world.spec), "--methods", "delta"),
          "--methods", "'delta'"),
    _case("flag-not-an-integer", FLAGS,
          lambda c: c.run(str(c.world.spec), "--trials-per-device", "two"),
          "--trials-per-device", "'two'"),
    # --- datasets (tether finetune of a folder recipe)
    _case("data-root-missing", DATA, lambda c: c.folder_recipe(c.tmp / "absent"),
          "data.root", "absent", "does not exist"),
    _case("data-missing-train-split", DATA,
          lambda c: c.folder_recipe(c.folder({"val": {"ant": 1}, "test": {"ant": 1}})),
          "images", "missing train/"),
    _case("data-mismatched-classes", DATA, _mismatched_classes,
          "class folders differ", "wasp"),
    _case("data-empty-class-folder", DATA, _empty_class, "cicada", "holds no images"),
    _case("data-corrupt-image", DATA, _corrupt_image,
          "cannot decode image", "val/bee/1.png", "truncated"),
    _case("data-too-few-images", DATA,
          lambda c: c.folder_recipe(c.folder({"": {"ant": 1, "bee": 3}})),
          "'ant' has only 1 images", "data.val_fraction"),
    _case("data-missing-in-a-run", DATA, _missing_in_run, "data.root", "absent"),
    # --- checkpoints (tether finetune from model.checkpoint)
    _case("checkpoint-missing", CHECKPOINT,
          lambda c: c.finetune(c.recipe(model={"name": "digits-cnn", "weights": "none",
                                               "checkpoint": str(c.tmp / "absent.pt")})),
          "model.checkpoint", "absent.pt", "does not exist"),
    _case("checkpoint-not-a-torch-file", CHECKPOINT,
          lambda c: c.checkpoint(raw=b"weights, honest\n"),
          "bad.pt", "is not a file torch.load can read"),
    _case("checkpoint-no-state-dict", CHECKPOINT, lambda c: c.checkpoint([1, 2, 3]),
          "bad.pt", "holds no state dict", "a list"),
    _case("checkpoint-unsafe-pickle", CHECKPOINT, lambda c: c.checkpoint(PickledObject()),
          "bad.pt", "weights_only=True", "PickledObject"),
    _case("checkpoint-wrong-shapes", CHECKPOINT, _wrong_shapes,
          "does not fit digits-cnn", "block1.0.weight is [8, 3, 3, 3] in the file"),
    _case("checkpoint-wrong-keys", CHECKPOINT, _wrong_keys,
          "does not fit digits-cnn", "missing from the file", "features.block1"),
    # --- storage URLs
    _case("storage-unknown-role", STORAGE,
          lambda c: ["status", str(c.world.spec), "--storage",
                     f"postgresql+psycopg://nosuchuser:{SECRET}@{c.url.split('@', 1)[1]}"],
          "nosuchuser:***@", "does not exist", postgres=True, subprocess=True),
    _case("storage-port-refused", STORAGE,
          lambda c: ["compare", str(c.world.spec), "--storage",
                     f"postgresql+psycopg://root:{SECRET}@127.0.0.1:1/test"],
          "127.0.0.1:1", "refused", postgres=True),
    _case("storage-host-silent", STORAGE,
          lambda c: ["status", str(c.world.spec), "--storage",
                     f"postgresql+psycopg://root:{SECRET}@{c.silent_host()}/test"],
          "timeout",
          postgres=True, max_seconds=3.5, env=(("TETHER_CONNECT_TIMEOUT", "2"),)),
    _case("storage-unknown-scheme", STORAGE,
          lambda c: ["status", str(c.world.spec), "--storage", "redis://127.0.0.1/0"],
          "redis://127.0.0.1/0", "not a storage URL"),
    _case("storage-unknown-driver", STORAGE,
          lambda c: ["compare", str(c.world.spec), "--storage",
                     f"mysql+nope://tether:{SECRET}@127.0.0.1/x"],
          "mysql+nope://tether:***@127.0.0.1/x", "nope"),
    _case("storage-sqlite-folder-missing", STORAGE,
          lambda c: ["compare", str(c.world.spec), "--storage",
                     f"sqlite:///{c.tmp}/absent/tether.db"],
          "absent/tether.db", "no such file"),
    _case("storage-journal-without-file", STORAGE,
          lambda c: ["status", str(c.world.spec), "--storage", "journal:"], "needs a file"),
    _case("storage-sqlite-file-missing", STORAGE,
          lambda c: ["status", str(c.world.spec), "--storage", f"sqlite:///{c.tmp}/typo.db"],
          "typo.db", "no such file"),
    # --- studies that are not in the storage
    _case("study-unknown-compare", STUDY,
          lambda c: ["compare", c.spec(name=f"{c.world.name}-other"), "--storage", c.url],
          "-other/standard"),
    _case("study-unknown-compare-on-postgres", STUDY,
          lambda c: ["compare", c.spec(name=f"{c.world.name}-other"), "--storage", c.url],
          "-other/standard", postgres=True),
    _case("study-unknown-status", STUDY,
          lambda c: ["status", c.spec(name=f"{c.world.name}-other"), "--storage", c.url],
          "-other/standard"),
    _case("study-unknown-report", STUDY,
          lambda c: ["report", c.spec(name=f"{c.world.name}-other"), "--storage", c.url],
          "-other/standard"),
    _case("study-unknown-reap", STUDY,
          lambda c: ["reap", c.spec(name=f"{c.world.name}-other"), "--storage", c.url],
          "-other/standard"),
    _case("study-unknown-evaluate", STUDY,
          lambda c: ["evaluate", c.spec(name=f"{c.world.name}-other"), "--storage", c.url,
                     "--devices", "cpu", "--launcher", "subprocess"],
          "-other/standard", "does not exist"),
    _case("study-unknown-worker-on-postgres", STUDY,
          lambda c: ["worker", c.spec(name=f"{c.world.name}-other"), "--storage", c.url,
                     "--devices", "cpu", "--launcher", "subprocess"],
          "-other/standard", "does not exist", postgres=True),
    _case("study-changed-space-on-postgres", STUDY,
          lambda c: c.run(c.spec(budget={"n_trials": 2}, methods={
              "standard": {},
              "mars-pgm": {"relative": True, "radius": {"low": 0.05, "high": 2.0},
                           "head_radius": {"low": 1.0, "high": 10.0}}})),
          "/mars-pgm", "another search space", "space.radius.high: 1.0 -> 2.0",
          postgres=True),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Running a case


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float
    noise: list[str]  # warnings and log records that would reach a real stderr


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"log {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _listening() -> Iterator[list[str]]:
    """Collect the warnings and log records a command produces (a real run prints them)."""
    records = _Records()
    loggers = [logging.getLogger(), logging.getLogger("optuna")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                           ResourceWarning):  # fmt: skip
                warnings.simplefilter("ignore", hidden)  # as Python's default filters do
            yield records.lines
        records.lines += [f"warning {w.category.__name__}: {w.message}" for w in caught]
    finally:
        for logger in loggers:
            logger.removeHandler(records)


def _in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    started = time.perf_counter()
    crash = ""
    with _listening() as noise:
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse
            code = stop.code if isinstance(stop.code, int) else 1
        except Exception:
            code, crash = 1, traceback.format_exc()
    captured = capsys.readouterr()
    return Outcome(
        code, captured.out, captured.err + crash, time.perf_counter() - started, list(noise)
    )


def _through_console_script(argv: list[str], cwd: Path, env: dict[str, str]) -> Outcome:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tether", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    return Outcome(done.returncode, done.stdout, done.stderr, time.perf_counter() - started, [])


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: Case,
    world: World,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = request.getfixturevalue("pg_world") if case.postgres else world.sqlite_url
    work = tmp_path / "work"
    work.mkdir()
    ctx = Ctx(work, url, world)
    env = {"TETHER_CACHE_DIR": str(world.cache_dir), "TETHER_STORAGE": url, **dict(case.env)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(work)
    argv = case.setup(ctx)
    snapshot = _pg_rows(url, world.name) if case.postgres else _files(world.store)
    files = _files(work)
    try:
        if case.subprocess:
            outcome = _through_console_script(argv, work, {**os.environ, **env})
        else:
            outcome = _in_process(argv, capsys)
    finally:
        for server in ctx.servers:
            server.close()

    shown = f"argv: {argv}\nexit {outcome.code}\nstderr:\n{outcome.err}\nstdout:\n{outcome.out}"
    assert outcome.code == 2, shown
    assert "Traceback" not in outcome.err + outcome.out, shown
    lines = outcome.err.splitlines()
    assert len(lines) == 1, shown
    line = lines[0]
    assert line.startswith("tether: error: "), shown
    missing = [words for words in case.expected if words not in line]
    assert not missing, f"{missing} not in the message\n{shown}"
    assert SECRET not in outcome.err + outcome.out, shown
    assert outcome.out == "", shown
    assert outcome.noise == [], shown
    if case.max_seconds is not None:
        assert outcome.seconds < case.max_seconds, f"took {outcome.seconds:.1f} s\n{shown}"
    assert _files(work) == files, f"files written in the working folder\n{shown}"
    after = _pg_rows(url, world.name) if case.postgres else _files(world.store)
    assert after == snapshot, f"the storage changed\n{shown}"


def test_the_snapshots_see_a_write(world: World, pg_world: str) -> None:
    """The 'storage unchanged' check can fail: a new study changes both snapshots."""
    for url, snapshot in (
        (world.sqlite_url, lambda: _files(world.store)),
        (pg_world, lambda: _pg_rows(pg_world, world.name)),
    ):
        before = snapshot()
        storage = optuna.storages.RDBStorage(url)
        optuna.create_study(study_name=f"{world.name}-probe", storage=storage)
        try:
            assert snapshot() != before, url
        finally:
            optuna.delete_study(study_name=f"{world.name}-probe", storage=storage)
            storage.engine.dispose()


def test_the_table_covers_every_category() -> None:
    cases = [p.values[0] for p in CASES]
    counts = {c: sum(case.category == c for case in cases) for c in (SPEC, RECIPE, FLAGS, DATA,
              CHECKPOINT, STORAGE, STUDY)}  # fmt: skip
    assert len(cases) >= 25
    assert all(n >= 3 for n in counts.values()), counts
    assert sum(case.postgres for case in cases) >= 3
    assert any(case.subprocess for case in cases)


def test_the_listener_sees_warnings_and_log_records() -> None:
    """The 'no noise' check can fail: a warning and an Optuna log record are both seen."""
    with _listening() as noise:
        warnings.warn("loud", UserWarning, stacklevel=1)
        optuna.logging.get_logger("optuna.test").warning("also loud")
    assert any("loud" in line for line in noise)
    assert any("also loud" in line for line in noise)
