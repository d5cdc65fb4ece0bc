"""The public API: ``import tether`` stays cheap, every exported name resolves, and the lazy
packages' type-checking imports say what their runtime tables do."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
import subprocess
import sys

import pytest

import tether


LAZY_PACKAGES = [
    "tether",
    "tether.finetune.data",
    "tether.finetune.models",
    "tether.finetune.regularizers",
]


def _imports_in(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in done.stdout.split()}


@pytest.mark.parametrize(
    "code",
    [
        "import tether",
        "import tether; tether.ConfigError, tether.__version__",
        "from tether import load_recipe; load_recipe('configs/digits.yaml')",
        "from tether import load_specs; load_specs('studies/digits.yaml')",
        "import tether.finetune.data, tether.finetune.models, tether.finetune.regularizers",
        "from tether.finetune.regularizers import PenaltyConfig, list_penalties; list_penalties()",
    ],
)
def test_these_import_no_torch(code: str) -> None:
    loaded = _imports_in(code)
    assert "torch" not in loaded
    assert "torchvision" not in loaded


def test_a_torch_name_is_imported_when_it_is_first_used() -> None:
    loaded = _imports_in("import tether; tether.DistanceConstraint")
    assert "torch" in loaded


@pytest.mark.parametrize("name", tether.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(tether, name) is not None
    assert name in dir(tether)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'DistanceConstrain'"):
        _ = tether.DistanceConstrain


def _type_checking_imports(package: str) -> dict[str, str]:
    """``{name: module}`` of the imports under ``if TYPE_CHECKING:`` in a package's source."""
    tree = ast.parse(Path(inspect.getfile(importlib.import_module(package))).read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom)
                for alias in statement.names:
                    found[alias.asname or alias.name] = str(statement.module)
    return found


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_the_type_checking_imports_match_the_lazy_table(package: str) -> None:
    module = importlib.import_module(package)
    exports = module._EXPORTS
    assert _type_checking_imports(package) == exports
    for name in exports:
        assert name in module.__all__
        assert getattr(module, name) is getattr(importlib.import_module(exports[name]), name)


def test_the_version_has_one_source() -> None:
    from importlib.metadata import version

    assert tether.__version__ == version("tether")
