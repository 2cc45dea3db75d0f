"""Run folders as acids-rave 2.3.1's `rave train` really writes them, from an audit of the
promise that any such run exports (README, "Export a model you already have"):

1. its config.gin binds the dataset configurables train.py calls before it writes gin's
   operative config (`dataset.get_dataset.augmentations`, `dataset.split_dataset.
   max_residual`, the augmentations a config names): refused as unknown configurables;
2. `--ema_weights` on a run trained with `--ema`: acids-rave's EMA holds the parameters
   only (no buffers), and export said `key 'latent_pca' ... is missing`;
3. a stereo run: train.py passes n_channels to RAVE itself, so config.gin does not bind
   it, and export failed with a shape mismatch that said nothing of channels;
4. which checkpoint a run folder exports was silent (acids-rave's `rave export` takes the
   newest, we take best.ckpt);
5. a checkpoint `torch.load(weights_only=True)` refuses: the message dropped the line
   naming the cause, kept torch's terminal escape codes in --json, and advised a re-save
   that does not fit a Lightning checkpoint.

The config.gin files are the reference runs' (/work/shared/reference/acids_rave_runs) with
the lines a real run adds (as gin 0.5.0 writes them: checked against a simulation of
train.py's calls) and the small sizes of the oracle fixtures. Each test of a fix fails on
the code before it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rave_core import RunError, open_run
from rave_core.config import ConfigError, build_model, parse_config
from rave_deploy.cli import main as deploy_cli

from .conftest import NO_TRAINING_MODULES, ORACLE, SMALL, randomize, reference_dir

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE_CONFIGS = ("brave", "c128_r10", "discrete", "v1", "v2", "v2_causal", "v2_small", "v3")
RULE = "# " + "=" * 78

#: what `rave train` adds to the operative config (its dataset, built before the config is
#: written): by default, `augmentations` bound to [] by train.py and v1.gin's max_residual
TRAIN_LINES = f"""
# Parameters for dataset.get_dataset:
{RULE}
dataset.get_dataset.augmentations = []

# Parameters for dataset.split_dataset:
{RULE}
dataset.split_dataset.max_residual = 1000
"""
#: with `--augment mute`: the augmentation objects gin cannot write, and a config that
#: does not include v1.gin (no max_residual bound: gin writes its default)
AUGMENT_LINES = f"""
# Parameters for dataset.get_dataset:
{RULE}
# None.

# Parameters for dataset.split_dataset:
{RULE}
dataset.split_dataset.max_residual = None
"""
#: a config that names augmentations (v2_with_augs, normalize_ambient): gin writes the
#: list over several lines, and each augmentation's parameters in its scope
CONFIG_AUGMENTATION_LINES = f"""
# Parameters for augmentations/transforms.Compress:
{RULE}
augmentations/transforms.Compress.gain = '0'
augmentations/transforms.Compress.lookup = '6:-30,-15,-10,-8,0,-5'
augmentations/transforms.Compress.sr = %SAMPLING_RATE
augmentations/transforms.Compress.time = '0.01,0.01'

# Parameters for dataset.get_dataset:
{RULE}
dataset.get_dataset.augmentations = \\
    [@augmentations/transforms.RandomCompress(),
     @augmentations/transforms.Compress()]

# Parameters for augmentations/transforms.RandomCompress:
{RULE}
augmentations/transforms.RandomCompress.amp_range = [-60, -10]
augmentations/transforms.RandomCompress.attack = 0.1
augmentations/transforms.RandomCompress.prob = 0.5
augmentations/transforms.RandomCompress.release = 0.1
augmentations/transforms.RandomCompress.sr = 44100
augmentations/transforms.RandomCompress.threshold = -40

# Parameters for dataset.split_dataset:
{RULE}
dataset.split_dataset.max_residual = 1000
"""


def _small(cfg: str) -> Sequence[str]:
    """The oracle fixtures' small sizes for reference config ``cfg``."""
    return json.loads((ORACLE / "overrides.json").read_text())[cfg]


def real_config(cfg: str, lines: str = TRAIN_LINES, no_channels: bool = False) -> str:
    """Reference run ``cfg``'s config.gin as `rave train` writes it: its lines plus
    ``lines``; ``no_channels``: without `model.RAVE.n_channels` (train.py passes the count
    to RAVE itself, so a real run's config.gin has no such line); with the small sizes of
    the oracle fixtures at its end."""
    text = (reference_dir() / "acids_rave_runs" / cfg / "config.gin").read_text()
    if no_channels:
        text = "".join(line for line in text.splitlines(keepends=True)
                       if not line.startswith("model.RAVE.n_channels"))
    if "transforms." in lines:
        text = text.replace("from rave import pqmf\n", "from rave import pqmf\n"
                            "from rave import transforms\n", 1)
    return text + lines + "\n# small sizes\n" + "\n".join(_small(cfg)) + "\n"


def lightning_checkpoint(sd: Dict[str, torch.Tensor], step: int = 1000,
                         ema: Optional[Dict[str, torch.Tensor]] = None) -> dict:
    """A checkpoint laid out as PyTorch Lightning 1.9 saves acids-rave's (the keys that
    matter here), with its `EMA` callback's state when ``ema`` is given."""
    callbacks: dict = {"WarmupCallback": {"training_steps": step},
                       "BetaWarmupCallback": {"training_steps": step}}
    if ema is not None:
        callbacks["EMA"] = ema
    return {"epoch": step // 1000, "global_step": step, "pytorch-lightning_version": "1.9.0",
            "state_dict": sd, "callbacks": callbacks, "optimizer_states": [],
            "lr_schedulers": []}


def write_run(root: Path, text: str, sd: Dict[str, torch.Tensor], name: str = "run",
              files: Sequence[str] = ("best.ckpt",), **checkpoint) -> Path:
    """``root/name`` with ``text`` as its config.gin and ``files`` as checkpoints of
    ``sd`` in version_0/checkpoints, each saved after the one before it (older
    modification times first). Returns the run directory."""
    run = root / name
    folder = run / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    (run / "config.gin").write_text(text)
    now = time.time()
    for i, file in enumerate(files):
        torch.save(lightning_checkpoint(sd, step=1000 * (i + 1), **checkpoint), folder / file)
        stamp = now - 100 * (len(files) - i)
        os.utime(folder / file, (stamp, stamp))
    return run


def random_weights(text: str, overrides: Sequence[str] = (), seed: int = 0):
    """The state dict of a random model built from ``text``, with latent statistics."""
    model = randomize(build_model(text=text, overrides=list(overrides),
                                  build_discriminator=False), seed)
    n = model.latent_size
    g = torch.Generator().manual_seed(seed)
    model.latent_pca.copy_(torch.linalg.qr(torch.randn(n, n, generator=g))[0])
    model.fidelity.copy_(torch.linspace(0.5, 1.0, n))
    return model.state_dict()


def _invoke(args):
    """stdout and stderr apart (click 8.2 keeps both)."""
    result = CliRunner().invoke(deploy_cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


# ============================================================ 1. the dataset's lines
@pytest.mark.parametrize("cfg", REFERENCE_CONFIGS)
def test_a_real_config_gin_with_the_dataset_lines_builds(cfg):
    """`dataset.get_dataset.augmentations = []` and `dataset.split_dataset.max_residual =
    1000`, which every real run's config.gin holds: `unknown configurable
    'rave.dataset.get_dataset'`."""
    model = build_model(text=real_config(cfg), build_discriminator=False)
    plain = build_model(text=real_config(cfg, lines=""), build_discriminator=False)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}


@pytest.mark.parametrize("lines", [AUGMENT_LINES, CONFIG_AUGMENTATION_LINES],
                         ids=["augment_flag", "config_augmentations"])
def test_augmentation_lines_of_a_real_config_gin_build(lines):
    """`rave train --augment ...` (gin writes `# None.`: the objects are not literals) and
    a config naming augmentations (a list over several lines, each augmentation's
    parameters under `augmentations/transforms.*`)."""
    build_model(text=real_config("v2_small", lines), build_discriminator=False)


def test_a_run_with_the_dataset_lines_exports(tmp_path):
    """The whole way: `rave-deploy export RUN` of a BRAVE run whose config.gin has them."""
    text = real_config("brave")
    run = write_run(tmp_path, text, random_weights(text))
    result = _invoke(["export", run, "-t", "onnx", "-o", tmp_path / "out", "--json"])
    assert result.exit_code == 0, result.output
    assert Path(json.loads(result.stdout)[0]["path"]).is_file()


@pytest.mark.parametrize("line, said", [
    ("dataset.get_datasett.augmentations = []", "unknown configurable 'rave.dataset.get_datasett'"),
    ("dataset.split_dataset.max_residul = 1000",
     "rave.dataset.split_dataset has no parameter 'max_residul'"),
    ("augmentations/transforms.RandomCompres.prob = 0.5",
     "unknown configurable 'rave.transforms.RandomCompres'"),
    ("foo.Bar.size = 3", "unknown configurable 'foo.Bar'"),
])
def test_a_typo_or_a_configurable_that_is_not_acids_raves_is_still_refused(line, said):
    """Guard: only acids-rave's own dataset configurables, with their own parameters, are
    taken."""
    with pytest.raises(ConfigError, match=re.escape(said)):
        build_model(text=real_config("brave", CONFIG_AUGMENTATION_LINES) + line + "\n",
                    build_discriminator=False)


# ============================================================ 2. EMA weights
@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A v2_small run trained with `--ema`: its EMA callback holds the parameters only,
    each unlike the state dict's."""
    text = real_config("v2_small")
    model = build_model(text=text, build_discriminator=False)
    sd = random_weights(text)
    params = [k for k, _ in model.named_parameters()]
    ema = {k: sd[k] * 0.5 + 0.01 for k in params}
    run = write_run(tmp_path_factory.mktemp("ema"), text, sd, ema=ema)
    return run, sd, ema


def test_ema_weights_are_laid_over_the_state_dict(ema_run):
    """acids-rave's EMA has no buffers (latent_pca, fidelity, PQMF filters): export said
    `key 'latent_pca' (shape ...) is missing`. The parameters now come from the EMA, the
    buffers from the state dict."""
    run, sd, ema = ema_run
    opened = open_run(run, ema=True)
    assert opened.ema
    weights = opened.model.state_dict()
    for key, value in ema.items():
        assert torch.equal(weights[key], value), key
    buffers = [k for k in weights if k not in ema]
    assert "latent_pca" in buffers and "fidelity" in buffers
    for key in buffers:
        assert torch.equal(weights[key], sd[key]), key
    plain = open_run(run).model.state_dict()   # without --ema_weights: the state dict
    assert not plain["decoder.waveform_module.weight_v"].equal(weights["decoder.waveform_module.weight_v"])


def test_ema_weights_export_from_the_cli(ema_run, tmp_path):
    run, _, _ = ema_run
    result = _invoke(["export", run, "-t", "onnx", "-o", tmp_path / "out", "--ema_weights"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith("(step 1000, EMA weights)"), result.stdout


@pytest.mark.parametrize("change, said", [
    (lambda ema: ema.update({"encoder.nothing_here": torch.zeros(3)}),
     "--ema_weights: the checkpoint's EMA weights hold 'encoder.nothing_here', which its "
     "state_dict lacks"),
    (lambda ema: ema.update({"latent_pca": torch.zeros(2, 2)}),
     "--ema_weights: the checkpoint's EMA weight 'latent_pca' has shape (2, 2) but (8, 8) in "
     "its state_dict"),
])
def test_ema_weights_that_do_not_match_the_state_dict_are_named(ema_run, tmp_path, change,
                                                                 said):
    run, sd, ema = ema_run
    ema = dict(ema)
    change(ema)
    other = write_run(tmp_path, (run / "config.gin").read_text(), sd, ema=ema)
    with pytest.raises(RunError, match=re.escape(said)):
        open_run(other, ema=True)


def test_a_checkpoint_without_ema_weights_says_so(tmp_path):
    """rave-core train keeps no EMA (guard: said as before, and why)."""
    from .runs import make_run
    run = make_run(tmp_path, ("brave",))
    with pytest.raises(RunError, match=r"--ema_weights: this checkpoint carries no EMA weights "
                                       r"\(acids-rave's `rave train --ema` saves them"):
        open_run(run, ema=True)


def test_an_ema_holding_every_weight_still_loads(ema_run, tmp_path):
    """An EMA callback state holding the whole state dict (under `weights`) loads as it
    did."""
    run, sd, _ = ema_run
    every = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    other = write_run(tmp_path, (run / "config.gin").read_text(), sd, ema={"weights": every})
    weights = open_run(other, ema=True).model.state_dict()
    assert torch.equal(weights["latent_pca"], every["latent_pca"])


# ============================================================ 3. stereo runs
def _our_text(configs: Sequence[str]) -> str:
    """Our composed configs' text (acids-rave composes `--config v2 --config wasserstein`
    the same way), which does not bind n_channels either."""
    return parse_config(list(configs), SMALL + NO_TRAINING_MODULES + ["NOISE_AUGMENTATION = 4"])


STEREO_CASES = [*REFERENCE_CONFIGS, "v2+wasserstein", "v2+spherical"]


def _stereo_text(case: str) -> str:
    if "+" in case:
        return _our_text(case.split("+"))
    return real_config(case, no_channels=True)


@pytest.mark.parametrize("case", STEREO_CASES)
def test_a_stereo_run_whose_config_does_not_say_so_loads_as_stereo(case, tmp_path):
    """Every encoder and decoder the shipped configs use: a 2-channel checkpoint with a
    config.gin that does not bind model.RAVE.n_channels failed with `... has shape (4, 32,
    7) in the checkpoint but (4, 16, 7)`; it loads as a 2-channel model, and says so."""
    text = _stereo_text(case)
    assert "n_channels" not in text
    sd = random_weights(text, ["rave.model.RAVE.n_channels = 2"])
    run = write_run(tmp_path, text, sd)
    with pytest.warns(UserWarning, match=r"config.gin does not say how many audio channels "
                                         r"the run has .*: its checkpoint is a 2-channel "
                                         r"model's, exported as such"):
        model = open_run(run).model
    assert model.n_channels == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_a_mono_run_whose_config_does_not_say_so_loads_silently(tmp_path):
    text = real_config("v2_small", no_channels=True)   # no n_channels line, mono weights
    run = write_run(tmp_path, text, random_weights(text))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert open_run(run).model.n_channels == 1
    assert not [w for w in caught if "channel" in str(w.message)], caught


def test_a_stereo_run_exports_from_the_cli_and_says_so(tmp_path):
    text = real_config("brave", no_channels=True)
    run = write_run(tmp_path, text, random_weights(text, ["rave.model.RAVE.n_channels = 2"]))
    result = _invoke(["export", run, "-t", "onnx", "-o", tmp_path / "out", "--json"])
    assert result.exit_code == 0, result.output
    (done,) = json.loads(result.stdout)
    assert any("2-channel model's" in w for w in done["warnings"]), done
    assert json.loads(Path(done["sidecar"]).read_text())["channels"] == 2


def test_a_stereo_run_that_differs_otherwise_says_what_it_looks_like(tmp_path):
    """Inference impossible (a weight of the run is missing too): the error says the run
    looks like a 2-channel run, and the line to add."""
    text = real_config("brave", no_channels=True)
    sd = random_weights(text, ["rave.model.RAVE.n_channels = 2"])
    del sd["latent_mean"]
    run = write_run(tmp_path, text, sd)
    with pytest.raises(RunError) as err:
        open_run(run)
    message = str(err.value)
    assert "has shape (4, 32, 7) in the checkpoint but (4, 16, 7)" in message, message
    assert "the run looks like a 2-channel run" in message, message
    assert "even as one it does not fit (key 'latent_mean' (shape (8,)) is missing)" in message
    assert f"add the line `model.RAVE.n_channels = 2` to {run / 'config.gin'}" in message


@pytest.mark.parametrize("weights, config_line", [
    (["CAPACITY = 8"], ""),                                  # another size, not channels
    (["rave.model.RAVE.n_channels = 2"], "model.RAVE.n_channels = 1\n"),  # the config says 1
])
def test_other_misfits_are_not_said_to_be_channels(tmp_path, weights, config_line):
    """Guard: a checkpoint twice as wide for another reason, and a config that binds the
    count, keep the plain shape error."""
    text = real_config("brave", no_channels=True) + config_line
    run = write_run(tmp_path, text, random_weights(text, weights))
    with pytest.raises(RunError, match="does not fit the config") as err:
        open_run(run)
    assert "channel" not in str(err.value)


# ============================================================ 4. which checkpoint
ACIDS_LAYOUT = ("best.ckpt", "epoch_500000.ckpt", "epoch-epoch=0040.ckpt")   # oldest first


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory):
    """acids-rave's default layout (save_every 500000): best.ckpt, then the periodic
    epoch_500000.ckpt, then the newest, epoch-epoch=0040.ckpt; no last.ckpt."""
    text = real_config("brave")
    return write_run(tmp_path_factory.mktemp("layout"), text, random_weights(text),
                     files=ACIDS_LAYOUT)


def test_export_says_which_checkpoint_and_that_a_newer_one_is_there(layout_run, tmp_path):
    result = _invoke(["export", layout_run, "-t", "onnx", "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    folder = layout_run / "version_0" / "checkpoints"
    assert result.stdout.splitlines()[0] == f"Checkpoint: {folder / 'best.ckpt'} (step 1000)", \
        result.stdout
    newer = folder / "epoch-epoch=0040.ckpt"
    assert result.stdout.splitlines()[1] == (f"            newer in the run folder: {newer} "
                                             "(give its path as RUN to export that one)")
    assert "warning" not in result.output.lower(), result.output


def test_the_json_result_names_the_checkpoint_and_its_step(layout_run, tmp_path):
    result = _invoke(["export", layout_run, "-t", "onnx", "-t", "onnx_streaming",
                      "-o", tmp_path / "out", "--json"])
    assert result.exit_code == 0, result.output
    best = layout_run / "version_0" / "checkpoints" / "best.ckpt"
    for done in json.loads(result.stdout):
        assert done["checkpoint"] == str(best) and done["step"] == 1000, done
        assert done["newer_checkpoint"] == str(best.parent / "epoch-epoch=0040.ckpt"), done
        assert done["warnings"] == [], done


def test_a_checkpoint_given_by_path_is_exported_without_the_warning(layout_run, tmp_path):
    newest = layout_run / "version_0" / "checkpoints" / "epoch-epoch=0040.ckpt"
    result = _invoke(["export", newest, "-t", "onnx", "-o", tmp_path / "out", "--json"])
    assert result.exit_code == 0, result.output
    (done,) = json.loads(result.stdout)
    assert done["checkpoint"] == str(newest) and done["step"] == 3000
    assert done["newer_checkpoint"] is None and done["warnings"] == [], done


def test_a_newer_copy_of_the_checkpoint_is_not_named(tmp_path):
    """Guard: our trainer copies an improved best.ckpt to last.ckpt (same bytes, a later
    time): nothing newer to say."""
    from .runs import make_run
    run = make_run(tmp_path, ("brave",))
    folder = run / "version_0" / "checkpoints"
    (folder / "last.ckpt").write_bytes((folder / "best.ckpt").read_bytes())
    later = time.time() + 10
    os.utime(folder / "last.ckpt", (later, later))
    result = _invoke(["export", run, "-t", "onnx", "-o", tmp_path / "out", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["newer_checkpoint"] is None


# ============================================================ 5. refused pickles
@pytest.fixture
def numpy_run(tmp_path):
    """PyTorch Lightning stores a NumPy scalar in a callback's state when the monitored
    value was one: `torch.load(weights_only=True)` refuses the file."""
    text = real_config("brave")
    run = write_run(tmp_path, text, random_weights(text))
    ckpt = run / "version_0" / "checkpoints" / "best.ckpt"
    payload = torch.load(ckpt, weights_only=True)
    payload["callbacks"]["ModelCheckpoint"] = {"best_model_score": np.float32(1.25)}
    torch.save(payload, ckpt)
    return run


def test_a_refused_pickle_names_its_global_without_escape_codes(numpy_run, tmp_path):
    result = _invoke(["export", numpy_run, "-t", "onnx", "-o", tmp_path / "out", "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert "\x1b" not in error and "\x1b" not in result.stderr, error
    assert "(unsupported global numpy." in error, error
    assert "torch.save(model.state_dict()" not in error, error
    assert "If you trust the file, keep its weights in a plain checkpoint" in error, error


def test_the_advice_for_a_trusted_refused_checkpoint_works(numpy_run, tmp_path):
    """The one-liner given (for a file the user trusts) writes a checkpoint that exports."""
    with pytest.raises(RunError) as err:
        open_run(numpy_run)
    command = re.search(r"plain checkpoint: (python -c '[^']*'), then give (\S+) in place "
                        r"of this file$", str(err.value))
    assert command, str(err.value)
    shell = command.group(1).replace("python -c", f"{sys.executable} -c", 1)
    subprocess.run(shell, shell=True, check=True, cwd=os.getcwd(), timeout=300)
    opened = open_run(Path(command.group(2)))
    assert opened.step == 1000 and opened.checkpoint_path.name == "best_weights.ckpt"


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_named_and_never_run(tmp_path):
    """A checkpoint whose pickle calls os.system: refused, naming the call (it said only
    `Weights only load failed. ...`), and nothing runs."""
    text = real_config("brave")
    run = write_run(tmp_path, text, random_weights(text))
    ckpt = run / "version_0" / "checkpoints" / "best.ckpt"
    payload = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned"
    payload["state_dict"]["payload"] = _Exploit(marker)
    torch.save(payload, ckpt)   # torch's own pickle protocol
    with pytest.raises(RunError, match=r"\(unsupported global (posix|nt)\.system\), which only "
                                       "running code could rebuild: loading it could run any "
                                       "code; use another checkpoint of the run") as err:
        open_run(run)
    assert "weights_only=False" not in str(err.value)
    assert not marker.exists()


def test_training_says_it_ignores_acids_rave_dataset_lines(tmp_path):
    """A config of one's own copied from acids-rave's (its v1.gin binds
    dataset.split_dataset.max_residual) trains, saying that line is not read; a config
    without such lines says nothing."""
    import warnings as python_warnings
    from rave_core.training.trainer import _build
    mine = tmp_path / "mine.gin"
    mine.write_text("include 'brave.gin'\ndataset.split_dataset.max_residual = 1000\n")
    with pytest.warns(UserWarning, match=r"the config binds dataset\.split_dataset\."
                                         r"max_residual: acids-rave's dataset settings, which "
                                         r"rave-core train does not read"):
        _build([str(mine)], [], None, 1, 0)
    with python_warnings.catch_warnings():
        python_warnings.simplefilter("error")
        _build(["brave"], [], None, 1, 0)
