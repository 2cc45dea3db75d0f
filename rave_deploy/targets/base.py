"""What a target is: a small plugin that writes the file a host loads and checks it.

Adding a target is one module in ``rave_deploy/targets/`` (a :class:`Target` subclass
decorated with :func:`register`) and one folder in ``targets/<name>/`` (the host's
requirements, host-side examples). Nothing else is edited: the CLI's choices, listings
and help, the check's reading of files without a sidecar (``<name>.<target><suffix>``)
and the tests that check every target take the registry's targets.

In the decorated class's own body, written as string literals (also in a subclass of
another target class):

- ``name`` (required): ``-t NAME``, and the files' ``<name>.<target><suffix>``;
- ``description`` (required): its line in ``rave-deploy targets``;
- ``host`` (optional): the host its files are for, as ``rave-deploy --help`` names it
  (``"nn~"``, ``"the RAVE VST"``); without it, ``--help`` names the target.

The command line reads these from the module's source without importing it
(:func:`rave_deploy.targets.available_targets`): one computed, or only inherited, makes
every command (``--help`` included) import the plugins and torch first, 2.7 s instead of
0.17 s (tests/test_cli_startup.py fails then). ``suffix`` (``".ts"``, or ``""`` for a
folder) and everything else may be inherited. :func:`register` refuses a name already
registered (a copied module that kept its original's name) and a sidecar name ending
``.<target><suffix>.json`` too long for the longest ``--name`` (26 bytes:
:func:`rave_deploy.file_names.target_name_problem`).

A target implements :meth:`Target.export` and :meth:`Target.check`, and may override:

- :meth:`Target.unsupported_reason`: why it cannot serve a model (``-t all`` skips it);
- :meth:`Target.ignored_options`: the options given that do not change its export;
- :meth:`Target.host_latency`: what its host adds to the latency, where a contract states
  it (else :attr:`Target.host_latency_note`);
- :meth:`Target.folder_files`: ``kind = "folder"``: the files its export writes there;

and set the attributes :attr:`Target.kind`, :attr:`Target.chooses_engine`,
:attr:`Target.chooses_cpu_kernels`, :attr:`Target.style_learning` and
:attr:`Target.host_latency_note`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Set

if TYPE_CHECKING:   # (annotations only: the CLI imports this module without torch)
    from rave_core.models.rave import RAVE

    from ..check.result import CheckReport


class TargetUnsupported(Exception):
    """This model cannot be served by this target (the message names the property)."""


@dataclass
class ExportOptions:
    """Options of ``rave-deploy export`` (targets read what applies to them)."""

    streaming: bool = True
    fidelity: float = 0.95
    fidelity_given: bool = False      # --fidelity on the command line, even its default
    deterministic: bool = False
    sr: Optional[int] = None          # host sample rate (a multiple of the model's)
    channels: Optional[int] = None    # host channels
    ema_weights: bool = False
    name: Optional[str] = None
    block_size: Optional[int] = None  # anira: the fixed block; TorchScript: tuned for it
    engine: str = "onnx"
    cpu_kernels: str = "portable"     # TorchScript: see rave_deploy.model.CPU_KERNELS
    style_target: Optional[Path] = None  # v3: audio to teach the style (style_teaching)
    style_source: Optional[Path] = None


@dataclass
class CheckOptions:
    """Options of ``rave-deploy check``."""

    block_sizes: List[int] = field(default_factory=list)
    seconds: float = 4.0
    rtf_seconds: float = 2.0
    report: Optional[Path] = None


@dataclass(frozen=True)
class HostLatency:
    """What a target's host adds to the latency of the model it runs (its own buffering),
    as that host's contract states it (:meth:`Target.host_latency`): ``latency.forward``
    names the host and these figures, and the check's HTML page tabulates them."""

    #: the host, as the check's message names it (``"nn~"``, ``"SuperCollider"``)
    host: str
    #: where the figures are stated, and how they are computed (``"host contract 28"``)
    source: str
    #: each way of running the host, in the order the message states them: ``{mode:
    #: label}``, the label as it follows a figure (``"{block}"`` stands for the host block)
    modes: Dict[str, str]
    #: samples added, ``{str(host block): {mode: samples}}``
    added: Dict[str, Dict[str, int]]
    #: the key of ``latency.forward``'s details that holds :attr:`added`
    key: str = "host_adds"


class Target:
    """Base class of an export target.

    Subclasses set ``name``, ``suffix`` (file suffix, or ``""`` for a folder) and
    ``description`` (``name``, ``description`` and ``host`` as literals in their own body:
    see the module's docstring), and implement :meth:`export` and :meth:`check`; a target
    whose host's contract states what the host adds to the model's latency says so in
    :meth:`host_latency` (else in :attr:`host_latency_note`).
    """

    name: str = ""
    suffix: str = ""
    description: str = ""
    #: the host its files are for, as ``rave-deploy --help`` names it; read from the
    #: class's own body only (:func:`rave_deploy.targets.shown_host`; empty: the name)
    host: str = ""
    #: Whether ``--engine`` chooses this target's runtime (anira's); export refuses another
    #: engine than ONNX Runtime when no target exported reads it.
    chooses_engine: bool = False
    #: Whether ``--cpu-kernels`` chooses the ops of this target's file (the TorchScript
    #: targets'); given to another target, export warns that it was not used.
    chooses_cpu_kernels: bool = False
    #: ``"file"`` or ``"folder"``: what :meth:`export` writes at ``path``.
    kind: str = "file"
    #: why the host cannot teach a v3 file a style itself (None: it can, through the
    #: file's attributes); export then warns when ``--style-*`` leaves a side untaught
    style_learning: Optional[str] = "its host sends no attributes"
    #: what the host's contract says of the latency the host adds where it states no
    #: figure (:meth:`host_latency` is None): ``latency.forward`` quotes it after the
    #: model's latency; None: nothing to say
    host_latency_note: Optional[str] = None

    def unsupported_reason(self, model: RAVE, options: ExportOptions) -> Optional[str]:
        """Why this model cannot be served (``None`` if it can)."""
        return None

    def ignored_options(self, options: ExportOptions) -> List[str]:
        """The options given that do not change this target's export, each said as the
        warning export gives (``-t onnx --block-size 512``: the offline graph takes any
        length). By default ``--cpu-kernels`` where :attr:`chooses_cpu_kernels` is False; a
        subclass that adds its own extends this list."""
        if self.chooses_cpu_kernels or options.cpu_kernels == ExportOptions.cpu_kernels:
            return []
        from . import registry as every_target   # (all plugins loaded)
        readers = [t.name for t in every_target().values() if t.chooses_cpu_kernels]
        return [f"--cpu-kernels {options.cpu_kernels} does not apply to {self.name}: it "
                f"chooses the ops of the TorchScript files ({', '.join(readers)}); "
                f"the {self.name} export runs on its host's own kernels"]

    def host_latency(self, ratio: int, blocks: Sequence[int]) -> Optional[HostLatency]:
        """What this target's host adds to the model's latency at each host block of
        ``blocks`` (samples; ``ratio``: the model's ratio at the host's rate), where the
        host's contract states it. None (the default): no contract states a figure, so
        ``latency.forward`` states the model's latency alone (and
        :attr:`host_latency_note`)."""
        return None

    def folder_files(self, sidecar: Dict[str, object]) -> Set[str]:
        """``kind == "folder"``: the names of the files an export of this target writes in
        its folder besides the sidecar (``sidecar``: that export's). An existing folder is
        replaced by a new export only when it holds the sidecar of this target and no
        other file than these: anything else in it is the user's."""
        return set()

    def export(self, model: RAVE, options: ExportOptions, path: Path) -> Dict[str, object]:
        """Write the artefact at ``path`` (a temporary path; the caller moves it into
        place). Returns target-specific fields for the JSON sidecar, plus ``"_core"``: the
        :class:`~rave_deploy.model.DeployModel` exported (its latency, ratio, latent size
        fill the common sidecar fields)."""
        raise NotImplementedError

    def check(self, artifact: Path, sidecar: Dict[str, object], model: RAVE,
              options: CheckOptions):
        """Load ``artifact`` as its host does and return a
        :class:`rave_deploy.check.result.CheckReport`."""
        raise NotImplementedError


_REGISTRY: Dict[str, Target] = {}


def register(cls):
    """Class decorator: make a :class:`Target` available to the CLI by its ``name``.

    Raises:
        ValueError: no name; a name another class registered (a copied module that kept
            its original's name would replace that target); a name and suffix that leave
            no room for the longest ``--name`` in a file name.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    other = _REGISTRY.get(cls.name)
    if other is not None and _origin(type(other)) != _origin(cls):   # (not a reload)
        raise ValueError(f"target {cls.name!r} is registered twice: by {_origin(type(other))} "
                         f"and by {_origin(cls)}; give each target its own name")
    from ..file_names import target_name_problem
    problem = target_name_problem(cls.name, cls.suffix)
    if problem is not None:
        raise ValueError(f"{_origin(cls)}: {problem}")
    _REGISTRY[cls.name] = cls()
    return cls


def _origin(cls) -> str:
    """Where ``cls`` is defined, as a message names it (``module.Class``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def registry() -> Dict[str, Target]:
    return dict(_REGISTRY)


def usable_block_sizes(requested: Sequence[int], unit: int, defaults: Sequence[int],
                       report: Optional["CheckReport"] = None, takes: str = "") -> List[int]:
    """The block sizes of ``requested`` an artefact can take (multiples of ``unit``), else
    ``defaults``. With ``report`` (the sizes a user asked for), those it cannot take are a
    failed ``blocks.sizes`` saying what it takes (``takes``, e.g. "multiples of the ratio
    128: the graph cannot run them") and which were checked instead; sizes from elsewhere
    (a sidecar's) are passed over without a word."""
    sizes = [b for b in requested if b > 0 and b % unit == 0] or list(defaults)
    bad = [b for b in requested if b <= 0 or b % unit]
    if bad and report is not None:
        report.add("blocks.sizes", False, f"block sizes {bad} are not {takes} (checked "
                   f"{', '.join(str(b) for b in sizes)})")
    return sizes
