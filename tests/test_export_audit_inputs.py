"""`rave-deploy export` given what a user audit gave it: an exported file as RUN (it
said "no config.gin", then, beside one, torch's warning and "truncated or corrupted"), an
empty checkpoint ("truncated or corrupted (EOFError)"), flags that change nothing for the
targets exported (`-t onnx --engine executorch`, `-t onnx --block-size 100`,
`--cpu-kernels onednn` for ONNX or Minifusion, `check x.onnx --block-size`, `--fidelity`
on a discrete run, whose sidecar then claimed it), a target given twice (exported and
printed twice), an --output named like an audio or model file (a folder `one.wav/` was
made) and `-o one.ts` under `-t all` ("7 targets are exported", counting one that would
be skipped). Each test fails against the code before the fix.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from rave_core.run import RunError, read_checkpoint
from rave_deploy.export import export_run, resolve_targets
from rave_deploy.sidecar import read_sidecar, shown_path
from rave_deploy.targets import ExportOptions, registry

from .runs import export_quietly, make_run
from .test_bad_input_export import cli

pytestmark = pytest.mark.usefixtures("one_thread")

NOT_A_CHECKPOINT = ["no config.gin", "truncated or corrupted", "torch.load", "TorchScript archive"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), ("brave",), name="brave", unit_gains=True)


@pytest.fixture(scope="module")
def exports(run, tmp_path_factory) -> Path:
    """A TorchScript, an ONNX and an HDF5 export of ``run``, each with its sidecar."""
    out = tmp_path_factory.mktemp("exports")
    export_quietly(run, ["nn_tilde", "onnx", "minifusion"], out)
    return out


def _says_only(result, *expected: str) -> None:
    for text in expected:
        assert text in result.output, result.output
    for text in NOT_A_CHECKPOINT:
        assert text not in result.output, result.output


# ============================================================ 1. an export given as RUN
@pytest.mark.parametrize("artefact, kind", [("brave.nn_tilde.ts", "TorchScript"),
                                            ("brave.onnx.onnx", "ONNX"),
                                            ("brave.minifusion.h5", "HDF5")])
def test_an_export_given_as_run_names_the_run_it_came_from(run, exports, tmp_path,
                                                           monkeypatch, artefact, kind):
    """`export exports/brave.nn_tilde.ts` said "no config.gin ... copy it next to the
    checkpoint" (the ONNX and HDF5 files: "is not a checkpoint")."""
    monkeypatch.chdir(tmp_path)
    result = cli(["export", exports / artefact, "-t", "onnx", "-o", "out"], code=2)
    # as `check` shows a sidecar's checkpoint: from here, else as the sidecar records it
    recorded = read_sidecar(exports / artefact)["source"]["checkpoint"]
    checkpoint = (run / "version_0" / "checkpoints" / "best.ckpt").resolve()
    shown = shown_path(checkpoint, recorded)
    _says_only(result, f"{exports / artefact} is an exported file ({kind}), not a training "
                       f"checkpoint: export from the run it came from (its sidecar names it: "
                       f"{shown})")
    assert not (tmp_path / "out").exists()


def test_an_exported_file_beside_a_config_gin_is_not_read_as_a_checkpoint(run, exports,
                                                                         tmp_path):
    """Following the advice (the .ts and a config.gin in one folder) gave torch's warning
    `'torch.load' received a zip file that looks like a TorchScript archive` and "the file
    is truncated or corrupted (Cannot use weights_only=True with TorchScript archives)"."""
    folder = tmp_path / "fold"
    folder.mkdir()
    shutil.copy(exports / "brave.nn_tilde.ts", folder)
    shutil.copy(run / "config.gin", folder)
    result = cli(["export", folder / "brave.nn_tilde.ts", "-t", "onnx", "-o", tmp_path / "out"],
                 code=2)
    _says_only(result, f"{folder / 'brave.nn_tilde.ts'} is an exported file (TorchScript), "
                       "not a training checkpoint: export from the run it came from (a run "
                       "directory holding config.gin, or one of its .ckpt files)")
    assert not (tmp_path / "out").exists()


def test_a_torchscript_archive_is_refused_by_the_checkpoint_reader_without_torchs_warning(
        tmp_path):
    """rave-core train --ckpt reads checkpoints with read_checkpoint: torch warned, then
    it said the file was truncated or corrupted."""
    path = tmp_path / "model.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # torch.jit's own
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RunError, match=r"is an exported file \(TorchScript\), not a "
                                           "training checkpoint: give a checkpoint of the run"):
            read_checkpoint(path)
    assert not caught, [str(w.message) for w in caught]


def test_an_export_folder_given_as_run_is_said_so(run, tmp_path):
    """An anira folder (its sidecar inside) said "no checkpoint (*.ckpt) found under"."""
    folder = tmp_path / "brave.anira"
    folder.mkdir()
    (folder / "forward.onnx").write_bytes(b"\x08\x07")
    (folder / "rave-deploy.json").write_text(json.dumps({
        "format": "rave-deploy-sidecar/1", "target": "anira",
        "source": {"checkpoint": "../brave/version_0/checkpoints/best.ckpt"}}))
    result = cli(["export", folder, "-t", "onnx", "-o", tmp_path / "out"], code=2)
    _says_only(result, f"{folder} is an exported folder (anira), not a training run "
                       "directory: export from the run it came from (its sidecar names it: ")
    assert "no checkpoint" not in result.output


# ============================================================ 2. an empty checkpoint
def test_an_empty_checkpoint_is_said_empty(run, tmp_path):
    """It said "the file is truncated or corrupted (EOFError)" (given the run folder) and
    "is not a checkpoint" (given the file)."""
    copy = Path(shutil.copytree(run, tmp_path / "brave"))
    best = copy / "version_0" / "checkpoints" / "best.ckpt"
    best.write_bytes(b"")
    for given in (copy, best):
        result = cli(["export", given, "-t", "onnx", "-o", tmp_path / "out"], code=2)
        _says_only(result, f"cannot read checkpoint {best}: the file is empty (0 bytes), as an "
                           "interrupted copy or save leaves it; copy it again, or use another "
                           "checkpoint of the run, or train it again")
    shutil.copy(run / "version_0" / "checkpoints" / "best.ckpt", best.with_name("last.ckpt"))
    cli(["export", best, "-t", "onnx", "-o", tmp_path / "out"], code=2,
        expect="use another checkpoint of the run: last.ckpt beside it (give its path)")
    with pytest.raises(RunError, match=r"the file is empty \(0 bytes\)"):
        read_checkpoint(best)
    assert not (tmp_path / "out").exists()


# ============================================================ 3. flags that change nothing
def test_engine_executorch_without_anira_is_refused(run, tmp_path):
    """`-t onnx --engine executorch` exported the ONNX graph as if it was not given
    (README: executorch "is refused, with the reason")."""
    cli(["export", run, "-t", "onnx", "--engine", "executorch", "-o", tmp_path / "out"],
        code=2, expect="--engine executorch: --engine chooses the runtime of anira's graphs, "
                       "and anira is not among the targets (onnx); no target exports for "
                       "ExecuTorch yet: drop --engine")
    assert not (tmp_path / "out").exists()


def test_block_size_for_the_offline_onnx_graph_is_said_unused(run, tmp_path):
    """`-t onnx --block-size 100` was ignored without a word."""
    result = cli(["export", run, "-t", "onnx", "--block-size", "100", "-o", tmp_path / "a"],
                 code=0, expect="warning: --block-size does not apply to onnx (offline graph): "
                                "it takes a whole signal of any length")
    assert "--block-size 100 was not used" in result.output
    result = cli(["export", run, "-t", "onnx", "-o", tmp_path / "b"], code=0)
    assert "--block-size" not in result.output


def test_cpu_kernels_for_a_target_that_does_not_read_it_is_said_unused(run, tmp_path):
    """`-t onnx -t minifusion --cpu-kernels onednn` was ignored without a word; a
    TorchScript target takes it (its own warning says where the file loads)."""
    result = cli(["export", run, "-t", "onnx", "-t", "minifusion", "-t", "nn_tilde",
                  "--cpu-kernels", "onednn", "-o", tmp_path / "a"], code=0)
    # (every target that reads it, as the registry has them: nn_tilde, supercollider, vst)
    readers = ", ".join(t.name for t in registry().values() if t.chooses_cpu_kernels)
    assert {"nn_tilde", "supercollider", "vst"} <= set(readers.split(", "))
    for target in ("onnx", "minifusion"):
        assert (f"warning: --cpu-kernels onednn does not apply to {target}: it chooses the "
                f"ops of the TorchScript files ({readers}); the "
                f"{target} export runs on its host's own kernels") in result.output
    assert "does not apply to nn_tilde" not in result.output
    result = cli(["export", run, "-t", "onnx", "-o", tmp_path / "b"], code=0)
    assert "--cpu-kernels" not in result.output


def test_block_size_given_to_check_an_offline_onnx_graph_is_said_unused(run, exports):
    """`check brave.onnx.onnx --block-size 100` passed over the size without a word."""
    result = cli(["check", exports / "brave.onnx.onnx", "--block-size", "100"], code=0,
                 expect="blocks.sizes                     --block-size 100 does not apply "
                        "to the offline graph: it runs a whole signal in one call")
    assert "check the onnx_streaming graph for host blocks" in result.output
    assert "blocks.sizes" not in cli(["check", exports / "brave.onnx.onnx"], code=0).output


@pytest.fixture(scope="module")
def discrete_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), ("discrete",), name="disc",
                    unit_gains=True)


def test_fidelity_on_a_discrete_run_is_said_unused_and_the_sidecar_says_what_was_done(
        discrete_run, tmp_path):
    """`--fidelity 0.5` on a discrete run exported it whole and its sidecar said
    `fidelity: 0.5`."""
    with pytest.warns(UserWarning, match=r"--fidelity 0.5 does not apply to this discrete "
                                         r"\(quantised\) run.*exported whole.*sidecars record "
                                         "fidelity 1"):
        results = export_run(discrete_run, ["onnx"], tmp_path / "a",
                             ExportOptions(fidelity=0.5))
    sidecar = json.loads(Path(f"{results[0].path}.json").read_text())
    assert sidecar["fidelity"] == 1.0
    assert sidecar["latent_size"] == sidecar["full_latent_size"]
    # the default: no warning of it, and the sidecar says 1 too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = export_run(discrete_run, ["onnx"], tmp_path / "b", ExportOptions())
    assert not [w for w in caught if "--fidelity" in str(w.message)]
    assert json.loads(Path(f"{results[0].path}.json").read_text())["fidelity"] == 1.0


def test_fidelity_given_at_its_default_on_a_discrete_run_is_said_unused(discrete_run,
                                                                       tmp_path):
    """`--fidelity 0.95` (the default's value, typed) on a discrete run was not warned of,
    as if it had not been given; left out, nothing is said."""
    said = "--fidelity 0.95 does not apply to this discrete (quantised) run"
    result = cli(["export", discrete_run, "-t", "onnx", "-o", tmp_path / "a",
                  "--fidelity", "0.95"], code=0)
    assert said in result.output
    result = cli(["export", discrete_run, "-t", "onnx", "-o", tmp_path / "b"], code=0)
    assert "--fidelity" not in result.output


def test_fidelity_still_applies_to_a_variational_run(run, tmp_path):
    paths = export_quietly(run, ["onnx"], tmp_path, ExportOptions(fidelity=0.5))
    sidecar = json.loads(Path(f"{paths['onnx']}.json").read_text())
    assert sidecar["fidelity"] == 0.5 and sidecar["latent_size"] < sidecar["full_latent_size"]


# ============================================================ 4. a target given twice
def test_a_target_given_twice_is_exported_once(run, tmp_path):
    """`-t minifusion -t minifusion` exported and printed it twice."""
    result = cli(["export", run, "-t", "minifusion", "-t", "minifusion", "-o", tmp_path],
                 code=0)
    assert result.output.count("ok    minifusion") == 1, result.output
    assert [t.name for t in resolve_targets(["onnx", "minifusion", "onnx", "nn_tilde",
                                             "minifusion"])] == ["onnx", "minifusion",
                                                                 "nn_tilde"]


# ============================================================ 5. -o named like a file
@pytest.mark.parametrize("given", ["one.wav", "model.pt", "take.FLAC", "run.ckpt", "x.zip"])
def test_an_output_named_like_a_file_no_target_writes_is_refused(run, tmp_path, given):
    """`-o one.wav -t nn_tilde` made a folder `one.wav/`."""
    out = tmp_path / given
    cli(["export", run, "-t", "minifusion", "-o", out], code=2,
        expect=[f"--output {out}: no target writes a {Path(given).suffix.lower()} file; -o is "
                "a folder (created as needed), or, for one target, the file it writes, named "
                "with that target's suffix (.h5, .onnx, .ts)", "(other dots, as in v1.2, are "
                "fine)"])
    assert not out.exists()


@pytest.mark.parametrize("given, existing", [("ex.wav", True), ("v1.2", False),
                                             ("exports.old", False)])
def test_an_existing_folder_or_a_dotted_folder_name_is_still_a_folder(run, tmp_path, given,
                                                                      existing):
    out = tmp_path / given
    if existing:
        out.mkdir()
    cli(["export", run, "-t", "minifusion", "-o", out], code=0)
    assert (out / "brave.minifusion.h5").is_file()


# ============================================================ 6. -o FILE under -t all
def test_a_file_output_under_all_does_not_count_targets_that_would_be_skipped(run, tmp_path):
    """It said "7 targets are exported" for a run that 6 targets serve."""
    out = tmp_path / "one.ts"
    # (every target that writes .ts files, as the registry has them: nn_tilde, supercollider,
    # vst)
    writers = " or ".join(f"-t {t.name}" for t in registry().values() if t.suffix == ".ts")
    assert {"-t nn_tilde", "-t supercollider", "-t vst"} <= set(writers.split(" or "))
    result = cli(["export", run, "-o", out], code=2,
                 expect=f"--output {out} names one .ts file, but -t all exports every target "
                        "that can serve the model: give a folder for them, or one target that "
                        f"writes .ts files ({writers})")
    assert "targets are exported" not in result.output
    assert not out.exists()
