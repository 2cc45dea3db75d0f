"""Export targets, one module each (a plugin: :mod:`.base` says what one is).

Two ways in, so that the command line lists the targets without importing torch:

- :func:`available_targets` (each target's name and description), :func:`target_hosts`
  (the host each target's files are for) and :func:`name_width`: what ``rave-deploy
  targets``, ``rave-deploy --help``, ``export --help`` and ``--target``'s choices need.
  Importing a plugin takes seconds (torch, onnx), so they are read from each plugin
  module's source instead, as the plugin declares them anyway: the class decorated with
  :func:`register`, its ``name`` and ``description`` (and, optionally, ``host``) written
  as literal strings in its body. Nothing is declared twice, and nothing is hard-coded
  here: a new module in this folder is found as before. A module whose targets cannot be
  read that way (a name or description computed, or inherited; a ``host`` computed;
  ``register`` called otherwise than as a class decorator; no source) is imported
  instead: slower, as right. Once the plugins are imported, the registry itself answers
  (:func:`shown_host` reads ``host`` from the class body as the source reading does).
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
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Tuple

if TYPE_CHECKING:
    from .base import CheckOptions, ExportOptions, Target, TargetUnsupported, register

#: The names of :mod:`.base` this package offers (imported with the plugins, when first used).
_BASE_NAMES = ("CheckOptions", "ExportOptions", "Target", "TargetUnsupported", "register")

#: What :func:`available_targets` reads of each target class (in this order): each set
#: exactly once in the class body, to a literal string.
_DECLARED = ("name", "description")
#: What it reads too where the class body sets it (at most once, to a literal string);
#: a target that does not set it gets the default (:func:`shown_host`: its name).
_OPTIONAL = ("host",)
#: The narrowest column that holds a target's name in the CLI's listings (``targets``,
#: export's lines): wider where a target's name is longer (:func:`name_width`).
NAME_COLUMN = 15


class Declared(NamedTuple):
    """A target as its plugin declares it (:func:`_declarations`)."""

    name: str
    description: str
    #: the ``host`` its class body sets; None: none (:func:`shown_host` then says its name)
    host: Optional[str] = None


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
    return {name: declared.description for name, declared in _catalogue().items()}


def target_hosts() -> Dict[str, str]:
    """The host each target's files are for, as ``rave-deploy --help`` names it (``nn~``,
    ``the RAVE VST``; a target that declares none: its name), sorted by target name,
    read as :func:`available_targets` reads the descriptions (torch-free)."""
    return {name: declared.host or name for name, declared in _catalogue().items()}


def name_width() -> int:
    """The width of the column of target names in the CLI's listings: the longest
    target's name, at least :data:`NAME_COLUMN` (torch-free)."""
    return max([NAME_COLUMN, *map(len, _catalogue())])


def shown_host(target: "Target") -> Optional[str]:
    """The ``host`` ``target``'s own class body sets (a literal, as the source reading
    takes it; None: not set there): an inherited ``host`` (``TorchScriptTarget``'s
    ``"nn~"``, for messages) is not its host's name in ``--help``."""
    host = vars(type(target)).get("host")
    return host if isinstance(host, str) and host else None


def _catalogue() -> Dict[str, Declared]:
    """Every target as declared, sorted by name (see :func:`available_targets`)."""
    if _loaded:
        found = {name: _as_declared(target) for name, target in registry().items()}
    else:
        found = {}
        for module in _plugin_modules():
            declared = _declared_targets(module)
            found.update(_imported_targets(module) if declared is None
                         else {d.name: d for d in declared})
    return dict(sorted(found.items()))


def _as_declared(target: "Target") -> Declared:
    return Declared(target.name, target.description, shown_host(target))


def _imported_targets(module: str) -> Dict[str, Declared]:
    """The targets ``module`` registers, by importing it (and the base)."""
    importlib.import_module(f"{__name__}.{module}")
    from .base import registry as registered
    return {name: _as_declared(target) for name, target in registered().items()
            if type(target).__module__ == f"{__name__}.{module}"}


@functools.lru_cache(maxsize=None)
def _declared_targets(module: str) -> Optional[Tuple[Declared, ...]]:
    """Each target ``module`` registers (:class:`Declared`), read from its source without
    running it; None where that cannot be read for sure."""
    spec = importlib.util.find_spec(f"{__name__}.{module}")
    try:
        source = spec.loader.get_source(spec.name) if spec and spec.loader else None
    except (ImportError, OSError):
        return None
    return None if source is None else _declarations(source)


def _declarations(source: str) -> Optional[Tuple[Declared, ...]]:
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
        # each of `name` and `description` set once in the class body, to a literal, and
        # `host` at most once, to a literal
        values = {}
        for statement in node.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target, value = statement.targets[0], statement.value
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                target, value = statement.target, statement.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in _FIELDS:
                values.setdefault(target.id, []).append(value)
        if (any(len(values.get(key, ())) != 1 for key in _DECLARED)
                or any(len(values.get(key, ())) > 1 for key in _OPTIONAL)
                or _assignments(node.body) != sum(map(len, values.values()))):
            return None   # inherited, or set twice, or otherwise (`+=`, in an `if`)
        try:
            read = {key: ast.literal_eval(value[0]) for key, value in values.items()}
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None   # not a literal
        name, description, host = read["name"], read["description"], read.get("host")
        if not (isinstance(name, str) and name and isinstance(description, str)
                and (host is None or (isinstance(host, str) and host))):
            return None
        declared.append(Declared(name, description, host))
    # `register` used otherwise (a call, a class in an `if`): what it does is known only
    # by running the module
    return tuple(declared) if len(declared) == uses else None


#: Every name :func:`_declarations` reads of a class body.
_FIELDS = _DECLARED + _OPTIONAL


def _assignments(statements) -> int:
    """How many times ``statements`` (a class body) bind one of :data:`_FIELDS` (``name``,
    ``description``, ``host``), methods and nested classes left out (their names are
    their own)."""
    count, stack = 0, list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if (isinstance(node, ast.Name) and node.id in _FIELDS
                and isinstance(node.ctx, ast.Store)):
            count += 1
        stack.extend(ast.iter_child_nodes(node))
    return count


def _is_register(node: ast.AST) -> bool:
    """Whether ``node`` names :func:`register` (``register``, ``base.register``)."""
    return ((isinstance(node, ast.Name) and node.id == "register")
            or (isinstance(node, ast.Attribute) and node.attr == "register"))


__all__ = ["CheckOptions", "ExportOptions", "Target", "TargetUnsupported", "available_targets",
           "get_target", "name_width", "register", "registry", "shown_host", "target_hosts"]
