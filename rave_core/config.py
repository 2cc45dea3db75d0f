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
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import gin
import torch

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be read or mapped onto our model family."""


def _register_externals() -> None:
    for obj, module in ((torch.nn.Conv1d, "torch.nn"), (torch.nn.Conv2d, "torch.nn")):
        try:
            gin.external_configurable(obj, module=module)
        except ValueError:
            pass  # already registered (module re-import)


def _import_model_modules() -> None:
    """Import every module that registers configurables, so any config can bind."""
    from . import losses  # noqa: F401
    from .models import (discriminators, encoders, generators, pqmf, quantization,  # noqa: F401
                         rave)
    from .nn import conv  # noqa: F401
    from .training import schedule  # noqa: F401
    _register_externals()


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
    for line in text.splitlines():
        code = line.split("#", 1)[0].rstrip()
        if re.match(r"^\s*include\s", code):
            # Shipped configs are expanded before this point; a run's config.gin is an
            # operative config and never includes: an include could import code.
            raise ConfigError(f"config includes another file ({line.strip()!r}): give the "
                              "operative config.gin of the run, with no include lines")
        if re.match(r"^\s*(import|from)\s", code):
            m = _IMPORT_RE.match(code)
            if m is None:
                raise ConfigError(f"cannot read the config line {line.strip()!r}")
            module = m.group("pkg") or m.group("mod")
            if module != "__gin__" and module.split(".")[0] not in ALLOWED_IMPORTS:
                raise ConfigError(
                    f"config imports {module!r}: a RAVE config may only name rave, cached_conv "
                    "and torch modules (a config that imports other code could run it)")
        else:
            m = None
        if m:
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


def _shipped(name: str) -> Optional[Path]:
    path = CONFIG_DIR / f"{name}.gin"
    return path if path.exists() else None


def available_configs() -> List[str]:
    """Names accepted by ``--config`` (our shipped gin files)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.gin") if not p.stem.startswith("_"))


def _read_config(name_or_path: str) -> str:
    path = _shipped(name_or_path)
    if path is None:
        path = Path(name_or_path)
        if not path.exists():
            close = difflib.get_close_matches(name_or_path, available_configs(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config {name_or_path!r}: not a shipped config "
                              f"({', '.join(available_configs())}) nor a file.{hint}")
    return _expand_includes(path.read_text(), path.parent)


def _expand_includes(text: str, folder: Path) -> str:
    out = []
    for line in text.splitlines():
        m = re.match(r"""^\s*include\s+['"](.+)['"]\s*$""", line)
        if m:
            target = m.group(1)
            candidates = [CONFIG_DIR / Path(target).name, folder / target]
            found = next((c for c in candidates if c.exists()), None)
            if found is None:
                raise ConfigError(f"config include {target!r} not found")
            out.append(_expand_includes(found.read_text(), found.parent))
        else:
            out.append(line)
    return "\n".join(out)


def _known_selectors() -> List[str]:
    registry = getattr(gin.config, "_REGISTRY", None)
    return sorted(sel for sel, _ in registry.items()) if registry is not None else []


def _explain_gin_error(err: Exception, overrides: Sequence[str]) -> ConfigError:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    m = re.search(r"No configurable matching '([^']+)'", str(err))
    if m:
        wanted = m.group(1)
        close = difflib.get_close_matches(wanted, _known_selectors(), n=3, cutoff=0.5)
        hint = f"; nearest valid: {', '.join(close)}" if close else ""
        return ConfigError(f"unknown configurable {wanted!r}{hint}")
    m = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", str(err))
    if m:
        return ConfigError(f"{m.group(1)} has no parameter {m.group(2)!r} (check the config or "
                           "--override)")
    return ConfigError(f"invalid gin config: {msg}")


def parse_config(configs: Sequence[str] = (), overrides: Sequence[str] = (),
                 text: Optional[str] = None) -> str:
    """Clear gin and bind ``configs`` (names or paths, composed in order), ``text``
    (e.g. a run's ``config.gin``) and ``overrides`` (``'KEY = VALUE'`` strings).

    Returns the combined gin text that was parsed.
    """
    _import_model_modules()
    parts = [translate_acids_config(_read_config(c)) for c in configs]
    if text is not None:
        parts.append(translate_acids_config(text))
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form 'KEY = VALUE'")
        parts.append(translate_acids_config(o.strip()))
    full = "\n".join(parts)
    gin.clear_config()
    try:
        gin.parse_config(full)
    except Exception as err:  # gin raises ValueError, KeyError, SyntaxError...
        gin.clear_config()
        raise _explain_gin_error(err, overrides) from None
    return full


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
