"""A package's public names imported from their modules on first use (PEP 562), so that
importing the package, for a command line's ``--help`` say, imports no torch."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Tuple


def lazy_names(package: str, modules: Dict[str, str]
               ) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose public names come from
    its modules: ``modules`` maps each name to its module, relative to ``package``
    (``{"open_run": "run"}``). A name is imported once, then found as a global.

    >>> __getattr__, __dir__ = lazy_names(__name__, {"open_run": "run"})
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value   # imported once
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(modules))

    return __getattr__, __dir__
