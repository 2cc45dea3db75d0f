"""Gin configs: our shipped configs, and acids-rave / BRAVE ``config.gin`` files.

Our configurables are registered under acids-rave's names (``rave.blocks.GeneratorV2``,
``rave.model.RAVE``, ``cached_conv.Conv1d``, ...). acids-rave writes its operative config
with ``dynamic_registration`` and module aliases (``from rave import blocks`` then
``blocks.GeneratorV2.capacity = 96``); :func:`translate_acids_config` resolves the aliases
to full names and drops the imports, so the same text binds to our classes without
acids-rave installed.
"""
from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import torch

# torch-free, for the CLI
from .config_names import (CONFIG_DIR, MODIFIERS, available_configs,  # noqa: F401
                           config_problem, modifier_problem, shipped_config)


class ConfigError(ValueError):
    """A config that cannot be read or mapped onto our model family. ``line``: the line
    of the text it was raised for (1-based), when one line is to blame."""

    def __init__(self, message: str, line: Optional[int] = None) -> None:
        super().__init__(message)
        self.line = line


def read_text_file(path) -> str:
    """A config file's text: UTF-8, with a leading byte-order mark dropped. Anything else
    (Latin-1, a binary file) is a :class:`ConfigError` naming the line to fix."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path} is not UTF-8 text (line {line}, byte "
                          f"0x{data[err.start]:02x}): save it as UTF-8") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ConfigError(f"{path} is not a text file (a NUL byte on line {line}): give a gin "
                          "config saved as UTF-8 text")
    return text


def _register_externals() -> None:
    for obj, module in ((torch.nn.Conv1d, "torch.nn"), (torch.nn.Conv2d, "torch.nn")):
        try:
            gin.external_configurable(obj, module=module)
        except ValueError:
            pass  # already registered (module re-import)


#: acids-rave 2.3.1's configurables that its ``rave train`` calls to build the dataset,
#: before it writes gin's operative config (scripts/train.py: ``get_dataset`` with the
#: augmentations a config names, then ``split_dataset``), with their parameters: a real
#: run's config.gin binds them (``dataset.get_dataset.augmentations = []``,
#: ``dataset.split_dataset.max_residual = 1000``, ``augmentations/transforms.RandomCompress.
#: prob = 0.5`` ...), though no model reads them. (Its callbacks, also built before, are
#: not configurable but ``rave.model.BetaWarmupCallback``, which we register in
#: :mod:`rave_core.training.schedule`; ``add_augmentation``'s bindings are cleared before
#: the config is written.)
ACIDS_DATASET_CONFIGURABLES: Dict[str, Tuple[str, ...]] = {
    "rave.dataset.get_dataset": ("db_path", "sr", "n_signal", "derivative", "normalize",
                                 "rand_pitch", "augmentations", "n_channels"),
    "rave.dataset.split_dataset": ("dataset", "percent", "max_residual"),
    "rave.transforms.Compress": ("time", "lookup", "gain", "sr"),
    "rave.transforms.RandomCompress": ("threshold", "amp_range", "attack", "release", "prob",
                                       "sr"),
    "rave.transforms.RandomGain": ("gain_range", "prob", "limit"),
    "rave.transforms.RandomMute": ("prob",),
    "rave.transforms.FrequencyMasking": ("prob", "max_size"),
}


def _register_dataset_configurables() -> None:
    """Register :data:`ACIDS_DATASET_CONFIGURABLES` as inert configurables: never called
    (nothing here builds acids-rave's dataset), they only let a run's config.gin bind them.

    Registered rather than stripped from the text: gin still checks each binding's
    parameter name (``dataset.split_dataset.max_residul`` stays an error) and value, a
    value that gin wrote over several lines (``augmentations = \\`` and a list of
    ``@augmentations/transforms.RandomCompress()`` references) parses as gin reads it, and
    a configurable that is not acids-rave's is refused as before."""
    for selector, params in ACIDS_DATASET_CONFIGURABLES.items():
        module, name = selector.rsplit(".", 1)
        try:
            gin.external_configurable(_inert(selector, params), name=name, module=module)
        except ValueError:
            pass  # already registered


def acids_dataset_bindings() -> List[str]:
    """The parameters of :data:`ACIDS_DATASET_CONFIGURABLES` that the config parsed last
    binds (out of any scope), as ``dataset.split_dataset.max_residual``: what
    ``rave-core train`` ignores, and says it does."""
    bound = []
    for selector, params in ACIDS_DATASET_CONFIGURABLES.items():
        for param in params:
            try:
                gin.query_parameter(f"{selector}.{param}")
            except ValueError:
                continue
            bound.append(f"{selector.split('.', 1)[1]}.{param}")
    return bound


def _inert(selector: str, params: Sequence[str]):
    """A function taking ``params`` (keywords, all optional) that is never to be called."""
    def inert(**kwargs: object) -> None:
        raise ConfigError(f"{selector} configures acids-rave's training data, which "
                          "rave-core does not build")

    inert.__name__ = inert.__qualname__ = selector.rsplit(".", 1)[1]
    # gin reads the parameter names from the signature (inspect honours __signature__)
    inert.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, default=None) for p in params])
    return inert


def _import_model_modules() -> None:
    """Import every module that registers configurables, so any config can bind."""
    from . import losses  # noqa: F401
    from .models import (discriminators, encoders, generators, pqmf, quantization,  # noqa: F401
                         rave)
    from .nn import conv  # noqa: F401
    from .training import schedule  # noqa: F401
    _register_externals()
    _register_dataset_configurables()


# Modules a config.gin may import (acids-rave's operative configs import exactly these).
ALLOWED_IMPORTS = ("rave", "cached_conv", "torch")

_IMPORT_RE = re.compile(r"^\s*(from\s+(?P<pkg>[\w.]+)\s+import\s+(?P<names>[\w ,]+)|"
                        r"import\s+(?P<mod>[\w.]+)(\s+as\s+(?P<alias>\w+))?)\s*$")


def translate_acids_config(text: str) -> str:
    """Rewrite an acids-rave gin text (aliases, dynamic registration) into full names.

    ``from rave import blocks`` + ``blocks.Generator.capacity`` -> ``rave.blocks.Generator.capacity``.
    """
    aliases: Dict[str, str] = {}
    body: List[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0].rstrip()
        if re.match(r"^\s*include\s", code):
            # Shipped configs are expanded before this point; a run's config.gin is an
            # operative config and never includes: an include could import code.
            raise ConfigError(f"config includes another file ({line.strip()!r}): give the "
                              "operative config.gin of the run, with no include lines", number)
        if re.match(r"^\s*(import|from)\s", code):
            m = _IMPORT_RE.match(code)
            if m is None:
                raise ConfigError(f"cannot read the config line {line.strip()!r}", number)
            module = m.group("pkg") or m.group("mod")
            if module != "__gin__" and module.split(".")[0] not in ALLOWED_IMPORTS:
                raise ConfigError(
                    f"config imports {module!r}: a RAVE config may only name rave, cached_conv "
                    "and torch modules (a config that imports other code could run it)", number)
        else:
            m = None
        if m:
            # an import line becomes an empty one: line numbers still point into the source
            body.append("")
            if m.group("pkg") == "__gin__":
                continue
            if m.group("pkg"):
                for name in m.group("names").split(","):
                    name = name.strip()
                    if name:
                        aliases[name] = f"{m.group('pkg')}.{name}"
            else:
                mod = m.group("mod")
                aliases[m.group("alias") or mod.split(".")[0]] = (
                    mod if m.group("alias") else mod.split(".")[0])
            continue
        body.append(line)
    if not aliases:
        return "\n".join(body)
    names = "|".join(sorted(map(re.escape, aliases), key=len, reverse=True))
    # A selector starts a line (optionally after `scope/`) or follows `@` (idem).
    pattern = re.compile(rf"(^|@)((?:[\w]+/)*)({names})\.(?=[A-Za-z_])", re.MULTILINE)

    def repl(m: re.Match) -> str:
        return f"{m.group(1)}{m.group(2)}{aliases[m.group(3)]}."

    return pattern.sub(repl, "\n".join(body))


# One line of a config with where it comes from: (text, source, line number in source).
_Line = Tuple[str, str, int]


def _read_config(name_or_path: str) -> List[_Line]:
    problem = config_problem(name_or_path)
    if problem is not None:
        raise ConfigError(problem)
    path = shipped_config(name_or_path)
    if path is None:
        path = Path(name_or_path)
        return _expand_includes(read_text_file(path), path.parent, name_or_path, [path])
    return _expand_includes(read_text_file(path), path.parent, f"shipped config {path.name}",
                            [path])


def _expand_includes(text: str, folder: Path, source: str, chain: List[Path]) -> List[_Line]:
    """``text``'s lines, each ``include`` replaced by the included file's (recursively).

    An included path is relative to the including file's folder, as gin reads it; a
    name found nowhere there (or only as a file being expanded) is one of our shipped
    configs (acids-rave's configs include ``configs/v1.gin``, from its package). ``chain``:
    the files being expanded, outermost first (``text`` is the last one's), to refuse an
    include loop."""
    out: List[_Line] = []
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"""^\s*include\s+['"](.+)['"]\s*$""", line)
        if m:
            target = m.group(1)
            candidates = [c for c in (folder / target, CONFIG_DIR / Path(target).name)
                          if c.is_file()]
            if not candidates:
                raise ConfigError(f"config include {target!r} not found ({source}, line {number})")
            # a file including its own name (a local v1.gin that includes 'v1.gin' to
            # extend it) means the shipped one
            found = next((c for c in candidates
                          if not any(_same_file(c, earlier) for earlier in chain)), None)
            if found is None:
                names = " -> ".join(p.name for p in [*chain, candidates[0]])
                raise ConfigError(f"config include loop: {names} ({source}, line {number}): "
                                  "remove one of these include lines")
            out += _expand_includes(read_text_file(found), found.parent, found.name,
                                    [*chain, found])
        else:
            out.append((line, source, number))
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


def _known_selectors() -> List[str]:
    registry = getattr(gin.config, "_REGISTRY", None)
    return sorted(sel for sel, _ in registry.items()) if registry is not None else []


def _at(origins: Sequence[Tuple[str, int]], line: int) -> str:
    """``SOURCE, line N`` for line ``line`` (1-based) of a parsed part."""
    source, number = origins[line - 1]
    return f"{source}, line {number}" if number else source


def _line_and_message(err: Exception) -> Tuple[Optional[int], str]:
    """The line of the parsed part that gin's error names (1-based, ``None`` if none) and
    its one-line message, without gin's own line count."""
    args = err.args
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], tuple) \
            and len(args[1]) == 2 and all(isinstance(v, int) for v in args[1]):
        return args[1][0], args[0]  # a tokenizer error: (message, (line, column))
    text = str(err).strip()
    msg = text.splitlines()[0] if text else type(err).__name__
    line = err.lineno if isinstance(err, SyntaxError) else None
    if line is None:
        m = re.search(r"line (\d+)", text)
        line = int(m.group(1)) if m else None
    return line, re.sub(r"\s*\(line \d+\)$", "", msg)


def _where(line: Optional[int], origins: Sequence[Tuple[str, int]]) -> str:
    """`` (SOURCE, line N)`` for ``line`` of a parsed part."""
    if line is not None and line > len(origins) and origins:  # an unclosed bracket
        source, number = origins[-1]
        return f" ({source}, at its end)" if not number else f" ({source}, after line {number})"
    if line is None or not 1 <= line <= len(origins):
        sources = sorted({source for source, _ in origins})
        return f" ({', '.join(sources)})" if len(sources) == 1 else ""
    return f" ({_at(origins, line)})"


def _explain_gin_error(err: Exception, origins: Sequence[Tuple[str, int]]) -> ConfigError:
    line, msg = _line_and_message(err)
    where = _where(line, origins)
    m = re.search(r"No configurable matching '([^']+)'", str(err))
    if m:
        wanted = m.group(1)
        close = difflib.get_close_matches(wanted, _known_selectors(), n=3, cutoff=0.5)
        hint = f"; nearest valid: {', '.join(close)}" if close else ""
        return ConfigError(f"unknown configurable {wanted!r}{hint}{where}")
    m = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", str(err))
    if m:
        return ConfigError(f"{m.group(1)} has no parameter {m.group(2)!r} (check the config or "
                           f"--override){where}")
    return ConfigError(f"invalid gin config{where}: {msg}")


#: gin's words for a value it cannot read (``ast.literal_eval``'s, with the repr of a
#: syntax-tree node, for a bare name or a call)
_NOT_A_VALUE = re.compile(r"malformed node or string|Unable to parse value")
_VALUES = ("a number, a 'quoted string', a [list], True, False, None, @configurable "
           "or %MACRO")


def _not_a_value(err: Exception, origins: Sequence[Tuple[str, int]], override: Optional[str],
                 earlier: str) -> Optional[ConfigError]:
    """For a value gin cannot read, an error saying what a value may be, with an example
    (for an ``override``: its key's value in the config text ``earlier``, when there is
    one on one line); None for other errors."""
    if not _NOT_A_VALUE.search(str(err)):
        return None
    if override is None:
        line, _ = _line_and_message(err)
        return ConfigError(f"invalid gin config{_where(line, origins)}: a value is not a "
                           f"Python literal nor a gin reference ({_VALUES}); a string "
                           "needs quotes")
    key, value = (part.strip() for part in override.split("=", 1))
    bound = re.findall(rf"^[ \t]*{re.escape(key)}[ \t]*=[ \t]*(\S.*?)[ \t]*$", earlier, re.M)
    current = bound[-1] if bound else None
    constant = difflib.get_close_matches(value.capitalize(), ("True", "False", "None"), 1, 0.75)
    if re.fullmatch(r"[A-Za-z_]\w*", value) and constant:   # false, Fals
        example, why = f"{key}={constant[0]}", ""
    elif re.fullmatch(r"[A-Za-z_]\w*", value):
        example, why = f"{key}='{value}'", " (a string needs quotes)"
    elif current is not None and len(current) <= 60 and all(
            current.count(a) == current.count(b) for a, b in ("[]", "()", "{}")):
        example, why = f"{key}={current}", " (its current value)"
    else:
        example, why = f"{key}=32", ""
    quote = '"' if "'" in example else "'"
    return ConfigError(f"--override {override!r}: its value {value or '(none)'} is not a "
                       f"Python literal nor a gin reference ({_VALUES}); e.g. --override "
                       f"{quote}{example}{quote}{why}")


def parse_config(configs: Sequence[str] = (), overrides: Sequence[str] = (),
                 text: Optional[str] = None) -> str:
    """Clear gin and bind ``configs`` (names or paths, composed in order), ``text``
    (e.g. a run's ``config.gin``) and ``overrides`` (``'KEY = VALUE'`` strings).

    Returns the combined gin text that was parsed.
    """
    _import_model_modules()
    # (gin text, where each of its lines comes from): parsed one after the other, so that
    # an error names the file and line the user wrote (later bindings override earlier
    # ones, and macros resolve when used, as in one text)
    parts: List[Tuple[str, List[Tuple[str, int]]]] = []
    given: List[Optional[str]] = []   # per part: the --override it is, None for a config

    def add(part: str, origins: List[Tuple[str, int]], override: Optional[str] = None) -> None:
        try:
            parts.append((translate_acids_config(part), origins))
            given.append(override)
        except ConfigError as err:
            if err.line is None or not 1 <= err.line <= len(origins):
                raise
            raise ConfigError(f"{err} ({_at(origins, err.line)})") from None

    _check_modifiers(configs)
    for c in configs:
        lines = _read_config(c)
        add("\n".join(line for line, _, _ in lines),
            [(source, number) for _, source, number in lines])
    if text is not None:
        add(text, [("config.gin", n) for n in range(1, len(text.splitlines()) + 1)])
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form 'KEY = VALUE'")
        add(o.strip(), [(f"--override {o.strip()!r}", 0)], o.strip())
    gin.clear_config()
    for i, (part, origins) in enumerate(parts):
        try:
            gin.parse_config(part)
        except Exception as err:  # gin raises ValueError, KeyError, SyntaxError...
            gin.clear_config()
            earlier = "\n".join(text for text, _ in parts[:i])
            raise (_not_a_value(err, origins, given[i], earlier)
                   or _explain_gin_error(err, origins)) from None
    return "\n".join(part for part, _ in parts)


def _check_modifiers(configs: Sequence[str]) -> None:
    """A modifier alone, or after a base it does not apply to, fails deep inside gin
    ("missing 4 required positional arguments"): say what to give instead."""
    problem = modifier_problem(configs)
    if problem is not None:
        raise ConfigError(problem)


def build_model(configs: Sequence[str] = (), overrides: Sequence[str] = (),
                text: Optional[str] = None, build_discriminator: bool = True):
    """Build a :class:`~rave_core.models.rave.RAVE` from configs (offline, eval mode)."""
    from .models.rave import RAVE
    parse_config(configs, overrides, text)
    try:
        model = RAVE(build_discriminator=build_discriminator)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config does not build a RAVE model: {err}") from None
    return model.eval()


def operative_config() -> str:
    """The operative config (what was actually used) of the last model built."""
    return gin.operative_config_str()
