"""Names a package exports without importing them: PEP 562 ``__getattr__`` and ``__dir__``.

``import tether`` (and the ``tether`` command's start) must not pay the seconds torch and
torchvision take to import. A package lists its exports as ``{name: module}``; the first
access to ``package.name`` imports ``module``, reads ``name`` from it and keeps it in the
package's namespace, so the next access is an ordinary attribute. For type checkers the
package repeats the imports under ``if TYPE_CHECKING:`` (tests/test_api.py checks that the two
agree).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import importlib
import sys
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that resolve ``exports`` on first use.

    Args:
        package: the package's ``__name__``.
        exports: each exported name and the module that defines it.

    Example:
        >>> import types
        >>> sys.modules["lazy_demo"] = types.ModuleType("lazy_demo")
        >>> getattr_, dir_ = lazy_exports("lazy_demo", {"sqrt": "math"})
        >>> getattr_("sqrt")(4.0), "sqrt" in vars(sys.modules["lazy_demo"])
        (2.0, True)
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
