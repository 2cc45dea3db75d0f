"""`--config` and `--override` that name nothing, or nothing the config uses: each is a
one-line usage error (exit 2, no run folder), found before any training, where gin
accepted it silently or failed deep inside (docs/bad-input.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from rave_core.cli import main as core_cli
from rave_core.config_names import CONFIG_DIR, available_configs

from .test_bad_input_training import run_cli, train_args
from .test_cli_startup import run_script

pytestmark = pytest.mark.usefixtures("one_thread")


def refused(db, tmp_path: Path, args, expect) -> str:
    """`rave-core train` with ``args``: exit 2 with the words ``expect``, no run folder."""
    runs = tmp_path / "runs"
    out = run_cli(core_cli, train_args(db, runs, "r", *args), 2, expect)
    assert not runs.exists(), sorted(runs.rglob("*"))
    return out


# ============================================================ 1: overrides that do nothing
def test_an_override_of_a_configurable_the_config_does_not_use_is_refused(db, tmp_path):
    """brave builds the v1 encoder: an override of EncoderV2 trained as if not given
    (exit 0, no EncoderV2 line in config.gin)."""
    out = refused(db, tmp_path, ["--config", "brave", "--override",
                                 "rave.blocks.EncoderV2.capacity=8"],
                  ["--override 'rave.blocks.EncoderV2.capacity=8': this config does not use "
                   "rave.blocks.EncoderV2", "so the override would do nothing",
                   "it uses rave.blocks.Encoder"])
    assert len(out.strip().splitlines()) == 1, out


@pytest.mark.parametrize("override, expect", [
    # a scope the configurable is never called in
    ("foo/rave.blocks.Encoder.capacity=8",
     "uses rave.blocks.Encoder in scope variational, never in scope foo"),
    # a parameter the code always passes itself
    ("rave.discriminator.ConvNet.in_size=3",
     "the code always gives rave.discriminator.ConvNet its in_size itself"),
    # shadowed by the config's own, more specific, scoped binding
    ("rave.core.mean_difference.norm='L2'",
     "the config binds feature_matching/rave.core.mean_difference.norm, which wins over it"),
    # set by the dataset
    ("rave.model.RAVE.n_channels=2", "the dataset sets the channel count"),
])
def test_an_override_the_built_model_never_reads_is_refused(db, tmp_path, override, expect):
    refused(db, tmp_path, ["--config", "brave", "--override", override],
            [expect, "would do nothing" if "n_channels" not in override else "--channels"])


def test_an_override_of_a_macro_only_unused_bindings_refer_to_is_refused(tmp_path):
    from rave_core.config import ConfigError
    from rave_core.training.trainer import _build
    mine = tmp_path / "mine.gin"
    mine.write_text("include 'brave.gin'\nFOO = 3\nrave.blocks.EncoderV2.capacity = %FOO\n")
    with pytest.raises(ConfigError, match="nothing this config builds uses the macro FOO"):
        _build([str(mine)], ["CAPACITY=4", "FOO=5"], None, 1, 0)


def test_an_override_of_a_training_only_configurable_is_accepted(db, tmp_path):
    """The discriminator, the feature-matching distance and the beta schedule are used by
    the training only: their overrides take effect, and config.gin records them."""
    runs = tmp_path / "runs"
    overrides = ["feature_matching/rave.core.mean_difference.norm='L2'",
                 "rave.model.BetaWarmupCallback.warmup_len=7",
                 "rave.discriminator.ConvNet.n_layers=3"]
    args = [a for o in overrides for a in ("--override", o)]
    run_cli(core_cli, train_args(db, runs, "r", "--config", "brave", *args), 0, ["trained"])
    text = (runs / "r" / "config.gin").read_text()
    for line in ("feature_matching/mean_difference.norm = 'L2'",
                 "BetaWarmupCallback.warmup_len = 7", "ConvNet.n_layers = 3"):
        assert line in text, text


#: every shipped config; each modifier after a base it applies to
COMBINATIONS = [[c] for c in available_configs()
                if c not in ("causal", "spherical", "wasserstein")] + [
    ["v2", "spherical"], ["v2_nodisc", "wasserstein"], ["v3", "wasserstein"],
    ["v2_small", "spherical", "causal"]]


@pytest.mark.parametrize("configs", COMBINATIONS, ids="+".join)
def test_every_binding_a_shipped_config_uses_is_accepted_as_an_override(configs):
    """No false alarm: each binding of the operative config (config.gin: what the model,
    its discriminator, losses and schedule read), given as an override, is accepted and
    changes nothing."""
    from rave_core.training.trainer import _bindings, _build
    _, _, operative = _build(configs, ["CAPACITY=4"], None, 1, 0)
    overrides = [f"{key} = {value.replace(chr(92), '')}"
                 for key, value in _bindings(operative).items()
                 if key != "RAVE.n_channels"]   # the dataset's
    assert len(overrides) > 50
    _, _, again = _build(configs, ["CAPACITY=4", *overrides], None, 1, 0)
    assert again == operative


# ============================================================================ 2, 3: includes
def _edited_v1(folder: Path) -> Path:
    """A user's edited copy of v1.gin (latent size 5) in ``folder``."""
    text = (CONFIG_DIR / "v1.gin").read_text()
    assert "\nLATENT_SIZE = 128\n" in text
    (folder / "v1.gin").write_text(text.replace("\nLATENT_SIZE = 128\n", "\nLATENT_SIZE = 5\n"))
    return folder / "v1.gin"


def test_an_include_reads_the_file_next_to_the_including_one_first(tmp_path):
    """`include 'v1.gin'` in top.gin read the shipped v1.gin, not the edited v1.gin next to
    top.gin."""
    from rave_core.config import parse_config
    _edited_v1(tmp_path)
    top = tmp_path / "top.gin"
    top.write_text("include 'v1.gin'\nCAPACITY = 4\n")
    text = parse_config([str(top)])
    assert "LATENT_SIZE = 5" in text and "LATENT_SIZE = 128" not in text
    # a file of another name still finds the shipped one
    other = tmp_path / "sub"
    other.mkdir()
    (other / "top.gin").write_text("include 'v1.gin'\n")
    assert "LATENT_SIZE = 128" in parse_config([str(other / "top.gin")])


def test_a_file_including_its_own_name_extends_the_shipped_config(tmp_path):
    from rave_core.config import parse_config
    mine = tmp_path / "v2.gin"
    mine.write_text("include 'v2.gin'\nLATENT_SIZE = 5\n")
    text = parse_config([str(mine)])
    assert "rave.blocks.EncoderV2" in text and text.rstrip().endswith("LATENT_SIZE = 5")


@pytest.mark.parametrize("files, expect", [
    ({"a.gin": "include 'a.gin'\n"},
     ["config include loop: a.gin -> a.gin (", "a.gin, line 1)"]),
    ({"a.gin": "CAPACITY = 4\ninclude 'b.gin'\n", "b.gin": "\ninclude 'a.gin'\n"},
     ["config include loop: a.gin -> b.gin -> a.gin (b.gin, line 2)"]),
])
def test_an_include_loop_is_a_usage_error(db, tmp_path, files, expect):
    """It was `unexpected RecursionError ... report it`, exit 1."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    refused(db, tmp_path, ["--config", tmp_path / "a.gin"], expect + ["remove one of these"])


# ============================================================================ 4: modifiers by path
@pytest.mark.parametrize("configs, expect", [
    ([CONFIG_DIR / "brave.gin", "wasserstein"],
     "wasserstein applies to v2, v2_small, v2_nodisc, v3, not to "
     f"{CONFIG_DIR / 'brave.gin'} (the shipped brave)"),
    ([CONFIG_DIR / "wasserstein.gin"],
     f"{CONFIG_DIR / 'wasserstein.gin'} (the shipped wasserstein) is a modifier: give a base "
     "config before it, e.g. --config v2 --config wasserstein"),
    (["v1", CONFIG_DIR / ".." / "configs" / "spherical.gin"],
     "(the shipped spherical) applies to v2, v2_small, v2_nodisc, v3, not to v1"),
])
def test_a_shipped_modifier_given_by_its_path_is_checked_as_by_its_name(db, tmp_path, configs,
                                                                        expect):
    """gin said "EncoderV2.__init__() missing 6 required positional arguments"."""
    args = [a for c in configs for a in ("--config", c)]
    refused(db, tmp_path, args, [expect])


# ============================================================================ 5: config names
@pytest.mark.parametrize("config, expect", [
    ("V2", "unknown config 'V2': not a shipped config nor a file. Did you mean v2?"),
    ("nothere/x.gin", "config file nothere/x.gin does not exist: give an existing .gin file"),
    ("v2.gin", "config file v2.gin does not exist; for the shipped config v2, give --config v2"),
    ("", "--config '' is empty: give a shipped config name"),
])
def test_a_config_that_names_nothing_says_what_to_give(db, tmp_path, config, expect):
    out = refused(db, tmp_path, ["--config", config], [expect])
    if config == "nothere/x.gin":
        assert "c1024_r10" not in out   # not the list of every shipped name


@pytest.mark.parametrize("configs", [["V2"], ["nothere/x.gin"], [""], ["v1", "spherical"]])
def test_a_config_name_error_answers_without_importing_torch(db, tmp_path, configs):
    """The README says usage errors answer at once; a config name was checked after torch
    was imported (seconds)."""
    args = ["train", "--db_path", db, "--name", "r", "--out_path", tmp_path / "runs"]
    args += [a for c in configs for a in ("--config", c)]
    ran = run_script("rave-core", args, tmp_path)
    assert ran.code == 2, ran.stderr
    assert ran.stderr.startswith("Error: ") and len(ran.stderr.strip().splitlines()) == 1
    assert ran.heavy == [], ran.heavy
    assert not (tmp_path / "runs").exists()


# ========================================================= 6: override keys and %MACROs
def test_an_override_with_no_key_says_the_form(db, tmp_path):
    """It said "override '': the config has no macro ; macros: ..."."""
    refused(db, tmp_path, ["--config", "brave", "--override", "=5"],
            ["override '=5' has no key before '=': give KEY=VALUE",
             "e.g. --override 'CAPACITY=32'"])


@pytest.mark.parametrize("value, expect", [
    ("%NOPE", "its value refers to %NOPE, but the config has no macro NOPE; macros: CAPACITY"),
    ("%CAPACITI", "its value refers to %CAPACITI, but the config has no macro CAPACITI; "
                  "nearest: CAPACITY"),
])
def test_an_override_referring_to_an_unknown_macro_is_refused(db, tmp_path, value, expect):
    """It failed in gin: "macro() missing 1 required positional argument: 'value'"."""
    refused(db, tmp_path, ["--config", "brave", "--override", f"CAPACITY={value}"], [expect])


def test_an_override_referring_to_a_known_macro_or_a_quoted_percent_is_taken():
    from rave_core.config import parse_config
    from rave_core.training.trainer import check_overrides
    text = parse_config(["brave"])
    check_overrides(text, ["LATENT_SIZE=%CAPACITY",
                           "rave.model.RAVE.phase_1_duration=%PHASE_1_DURATION",
                           "cached_conv.convs.get_padding.mode='%NOPE'"])


# ============================================================================ 7: descriptions
def test_a_modifiers_description_names_the_bases_it_applies_to():
    """spherical and wasserstein said "after v2, v2_small or v3"; v2_nodisc is taken too."""
    from rave_core.config_names import MODIFIERS, config_description
    for name, bases in MODIFIERS.items():
        if bases is None:
            assert config_description(name).startswith("Modifier: ")
            continue
        words = f"{', '.join(bases[:-1])} or {bases[-1]}"
        assert config_description(name).startswith(f"Modifier (after {words}): "), name
