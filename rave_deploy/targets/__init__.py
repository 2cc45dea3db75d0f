"""Export targets, one module each (a plugin: :mod:`.base` says what one is).

Two ways in, so that the command line lists the targets without importing torch:

- :func:`available_targets`: each target's name and description, what ``rave-deploy
  targets``, ``export --help`` and ``--target``'s choices need. Importing a plugin takes
  seconds (torch, onnx), so they are read from each plugin module's source instead, as
  the plugin declares them anyway: the class decorated with :func:`register`, its
  ``name`` and ``description`` written as literal strings in its body. Nothing is
  declared twice, and nothing is hard-coded here: a new module in this folder is found as
  before. A module whose targets cannot be read that way (a name or description computed,
  or inherited; ``register`` called otherwise than as a class decorator; no source) is
  imported instead: slower, as right. Once the plugins are imported, the registry itself
  answers.
- everything else (:func:`registry`, :func:`get_target`, :class:`Target`,
  :class:`ExportOptions`, ...): the first use of any of these names imports :mod:`.base`
  and every plugin, which registers them all. Importing the package alone imports
  neither (PEP 562 module ``__getattr__``).

tests/test_cli_startup.py checks that what is read equals the registry.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import pkgutil
import threading
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from .base import CheckOptions, ExportOptions, Target, TargetUnsupported, register

#: The names of :mod:`.base` this package offers (imported with the plugins, when first used).
_BASE_NAMES = ("CheckOptions", "ExportOptions", "Target", "TargetUnsupported", "register")

#: What :func:`available_targets` reads of each target class (in this order).
_DECLARED = ("name", "description")

_lock = threading.RLock()
_loaded = False


def _plugin_modules() -> List[str]:
    """The plugin modules' names (``onnx``, ``vst``, ...), without importing them."""
    return [info.name for info in pkgutil.iter_modules(__path__)
            if info.name != "base" and not info.name.startswith("_")]


def _load() -> None:
    """Import :mod:`.base` and every plugin (each registers its targets)."""
    global _loaded
    with _lock:
        if _loaded:
            return
        from . import base
        # first: plugin modules may import this package's names
        globals().update({name: getattr(base, name) for name in _BASE_NAMES})
        for name in _plugin_modules():
            importlib.import_module(f"{__name__}.{name}")
        _loaded = True


def __getattr__(name: str):
    if name in _BASE_NAMES:
        _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def registry() -> Dict[str, "Target"]:
    """Every target, by name (imports them all: torch)."""
    _load()
    from .base import registry as registered
    return registered()


def get_target(name: str) -> "Target":
    targets = registry()
    if name not in targets:
        raise KeyError(name)
    return targets[name]


def available_targets() -> Dict[str, str]:
    """Every target's name and description, sorted by name, without importing the
    plugins unless they are already imported (see the module's docstring)."""
    if _loaded:
        found = {name: target.description for name, target in registry().items()}
    else:
        found = {}
        for module in _plugin_modules():
            declared = _declared_targets(module)
            found.update(_imported_targets(module) if declared is None else dict(declared))
    return dict(sorted(found.items()))


def _imported_targets(module: str) -> Dict[str, str]:
    """The targets ``module`` registers, by importing it (and the base)."""
    importlib.import_module(f"{__name__}.{module}")
    from .base import registry as registered
    return {name: target.description for name, target in registered().items()
            if type(target).__module__ == f"{__name__}.{module}"}


@functools.lru_cache(maxsize=None)
def _declared_targets(module: str) -> Optional[Tuple[Tuple[str, str], ...]]:
    """``(name, description)`` of each target ``module`` registers, read from its source
    without running it; None where that cannot be read for sure."""
    spec = importlib.util.find_spec(f"{__name__}.{module}")
    try:
        source = spec.loader.get_source(spec.name) if spec and spec.loader else None
    except (ImportError, OSError):
        return None
    return None if source is None else _declarations(source)


def _declarations(source: str) -> Optional[Tuple[Tuple[str, str], ...]]:
    """:func:`_declared_targets` of a module's ``source``."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    uses = sum(1 for node in ast.walk(tree) if _is_register(node))
    declared = []
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef)
                and any(_is_register(d) for d in node.decorator_list)):
            continue
        # each of `name` and `description` set once in the class body, to a literal
        values = {}
        for statement in node.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target, value = statement.targets[0], statement.value
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                target, value = statement.target, statement.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in _DECLARED:
                values.setdefault(target.id, []).append(value)
        if (any(len(values.get(key, ())) != 1 for key in _DECLARED)
                or _assignments(node.body) != len(_DECLARED)):
            return None   # inherited, or set twice, or otherwise (`+=`, in an `if`)
        try:
            name, description = (ast.literal_eval(values[key][0]) for key in _DECLARED)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None   # not a literal
        if not (isinstance(name, str) and name and isinstance(description, str)):
            return None
        declared.append((name, description))
    # `register` used otherwise (a call, a class in an `if`): what it does is known only
    # by running the module
    return tuple(declared) if len(declared) == uses else None


def _assignments(statements) -> int:
    """How many times ``statements`` (a class body) bind ``name`` or ``description``,
    methods and nested classes left out (their names are their own)."""
    count, stack = 0, list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if (isinstance(node, ast.Name) and node.id in _DECLARED
                and isinstance(node.ctx, ast.Store)):
            count += 1
        stack.extend(ast.iter_child_nodes(node))
    return count


def _is_register(node: ast.AST) -> bool:
    """Whether ``node`` names :func:`register` (``register``, ``base.register``)."""
    return ((isinstance(node, ast.Name) and node.id == "register")
            or (isinstance(node, ast.Attribute) and node.attr == "register"))


__all__ = ["CheckOptions", "ExportOptions", "Target", "TargetUnsupported", "available_targets",
           "get_target", "register", "registry"]
