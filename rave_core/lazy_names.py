"""A package's public names imported from their modules on first use (PEP 562), so that
importing the package, for a command line's ``--help`` say, imports no torch."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Tuple


def lazy_names(namespace: Dict[str, object], modules: Dict[str, str]
               ) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose globals are ``namespace``
    and whose public names come from its modules: ``modules`` maps each name to its
    module, relative to the package (``{"open_run": "run"}``). A name is imported once,
    then found as a global.

    >>> __getattr__, __dir__ = lazy_names(globals(), {"open_run": "run"})
    """
    package = namespace["__name__"]

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
