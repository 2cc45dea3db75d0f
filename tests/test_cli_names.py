"""The rules of an artefact's file name are stated once (rave_deploy.file_names): what
`rave-deploy export --name` refuses and what the default name (the run folder's) is made
plain by cannot drift apart. Before, `_check_name` in the CLI and `plain_file_name` each
stated them, and both failed on a name that is not UTF-8 (UnicodeEncodeError: a traceback
for --name, 'unexpected ... report it' for a Latin-1 run folder)."""
from __future__ import annotations

import string

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rave_deploy.cli import main as deploy_cli
from rave_deploy.file_names import (MAX_NAME_BYTES, is_windows_device, name_problem,
                                     plain_file_name)

from .test_robustness import assert_clean

# names as a run folder may be called: the characters every rule is about, and the rest
AWKWARD = st.text(st.one_of(st.sampled_from('<>:"|?*/\\.- \t\n\x00\x1b\x7f\x85éü€'),
                            st.sampled_from(string.ascii_letters + string.digits),
                            st.characters()), max_size=80)
DEVICES = st.builds(lambda d, rest: d + rest,
                    st.sampled_from(["CON", "nul", "Com1", "lpt9", " aux", "prn "]),
                    st.sampled_from(["", ".x", ".nn_tilde.ts", "  ", "-1", "."]))


@settings(max_examples=500, deadline=None)
@given(st.one_of(AWKWARD, DEVICES, st.text(min_size=150, max_size=260)))
@example("caf\udce9")   # a Latin-1 run folder, as Python reads its name
@example("é" * 150)      # cut at a character boundary
@example("-live:v2?")
@example(" . ")
def test_a_name_made_plain_is_a_name_export_accepts(text):
    name = plain_file_name(text)
    assert name_problem(name) is None, (text, name, name_problem(name))
    assert len(name.encode()) <= MAX_NAME_BYTES


@settings(max_examples=300, deadline=None)
@given(st.text(string.ascii_letters + string.digits + "_é€ ", min_size=1, max_size=60))
def test_a_plain_name_without_spaces_is_kept_as_it_is(text):
    name = text.replace(" ", "_").strip("_") or "x"
    if is_windows_device(name):
        return
    assert plain_file_name(name) == name and name_problem(name) is None


@pytest.mark.parametrize("name, expect", [
    ("caf\udce9", "--name 'caf\\xe9': not UTF-8 text, which Windows and macOS need in a file "
                  "name; give a plain name, e.g. --name my_model"),
    ("\udcff" * 300, "not UTF-8 text"),
])
def test_export_refuses_a_name_that_is_not_utf8(tmp_path, name, expect):
    """(It was a UnicodeEncodeError's traceback.)"""
    result = CliRunner().invoke(deploy_cli, ["export", str(tmp_path / "nope"), "--name", name])
    assert_clean(result)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: --name '") and expect in result.stderr


def test_every_refusal_is_what_the_cli_says():
    """The CLI says name_problem's words, and only for names it finds a problem in."""
    for name in ["a*b", "CON", "-x", "x" * 300, "a\nb", ".x", "", "a/b", "my run", "ok"]:
        result = CliRunner().invoke(deploy_cli, ["export", "/nonexistent/run", "--name", name])
        assert_clean(result)
        problem = name_problem(name)
        if problem is None:   # then the missing run is the error
            assert "/nonexistent/run does not exist" in result.stderr, result.stderr
        else:
            assert result.stderr == f"Error: {problem}\n"
