"""`rave-core preprocess` on the files user folders really hold: names that are not UTF-8,
linked folders, every extension libsndfile reads, macOS metadata, broken links, files
we may not read, channels that cancel, float samples beyond full scale."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from rave_core.cli import main as core_cli
from rave_core.data import DataError, preprocess
from rave_core.data.preprocess import read_audio
from rave_deploy.style_teaching import StyleAudioError, fingerprint, style_files

SR = 44100
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def tone(path: Path, level: float = 0.5, seconds: float = 0.5, channels: int = 1,
         **write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = level * np.sin(2 * np.pi * 440 * np.arange(int(seconds * SR)) / SR)
    sf.write(path, np.stack([x] * channels, 1).astype(np.float32), SR, **write)
    return path


def run(*args, code: int = 0):
    result = CliRunner().invoke(core_cli, ["preprocess", *map(str, args), "--no-progress"])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "unexpected" not in result.output, result.output
    return result


def reasons(report) -> dict:
    return {Path(p).name: r for p, r in report.skipped}


# --- 1. names that are not UTF-8 --------------------------------------------------------------
def latin1_name(folder: Path, source: Path) -> Path:
    """Rename ``source`` to ``café<suffix>`` spelt in Latin-1 (one byte 0xE9, not UTF-8)."""
    target = os.fsencode(folder) + b"/caf\xe9" + os.fsencode(source.suffix)
    os.rename(os.fsencode(source), target)
    return Path(os.fsdecode(target))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file names are bytes")
def test_a_name_that_is_not_utf8_is_read_and_printed(tmp_path):
    audio = tmp_path / "in"
    tone(audio / "good.wav")
    cafe = latin1_name(audio, tone(audio / "t.wav", level=0.25))
    (audio / "other").mkdir()
    (audio / "other" / "x.wav").write_text("not audio")
    bad = latin1_name(audio / "other", audio / "other" / "x.wav")

    result = run("--input_path", audio, "--output_path", tmp_path / "db")
    assert result.output.startswith("2 files"), result.output   # café.wav is kept
    assert "skipped " + str(audio / "other") + "/caf\\xe9.wav: unreadable or not audio" in result.output
    index = json.loads((tmp_path / "db" / "index.json").read_text())
    assert cafe.name in [Path(entry["path"]).name for entry in index["files"]]
    # skipped.txt names the very file: its own bytes
    line = (tmp_path / "db" / "skipped.txt").read_bytes().splitlines()[0]
    assert line.split(b"\t")[0] == os.fsencode(bad)

    # the same reader teaches a v3 style from such a folder
    assert cafe in style_files(audio)
    assert read_audio(cafe, SR, 1).shape == (1, SR // 2)
    assert len(fingerprint(audio)) == 64


# --- 2. linked folders, loops, folders that cannot be entered ---------------------------------
def test_linked_folders_are_followed_once(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "samples"
    tone(elsewhere / "a.wav")
    audio = tmp_path / "in"
    audio.mkdir()
    (audio / "samples").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(elsewhere.parent, target_is_directory=True)  # an ancestor
    (audio / "again").symlink_to(elsewhere, target_is_directory=True)
    report = preprocess([str(audio)], str(tmp_path / "db"), progress=False)
    assert [Path(p).name for p in report.kept] == ["a.wav"] and not report.skipped


def _deny(monkeypatch, folder: Path) -> None:
    """Make os.walk find ``folder`` unreadable (chmod does not stop root)."""
    scandir = os.scandir

    def refusing(path="."):
        if Path(os.fsdecode(path)) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return scandir(path)
    monkeypatch.setattr(os, "scandir", refusing)


def test_a_folder_that_cannot_be_entered_is_named(tmp_path, monkeypatch):
    audio = tmp_path / "in"
    tone(audio / "a.wav")
    tone(audio / "private" / "b.wav")
    _deny(monkeypatch, audio / "private")
    result = run("--input_path", audio, "--output_path", tmp_path / "db")
    assert result.output.startswith("1 file, "), result.output
    expected = f"skipped {audio / 'private'}: folder not searched (permission denied)"
    assert expected in result.output
    assert (tmp_path / "db" / "skipped.txt").read_text().startswith(f"{audio / 'private'}\t")
    with pytest.raises(StyleAudioError, match="private: folder not searched"):
        style_files(audio)

    _deny(monkeypatch, audio)  # nothing found at all: the error says why
    with pytest.raises(DataError, match=r"no audio files .* in .*in: folder not searched "
                                        r"\(permission denied\)"):
        preprocess([str(audio)], str(tmp_path / "db2"), progress=False)


@pytest.mark.skipif(IS_ROOT or os.name != "posix", reason="root enters any folder")
def test_a_folder_without_permission_is_named(tmp_path):
    audio = tmp_path / "in"
    tone(audio / "a.wav")
    tone(audio / "private" / "b.wav")
    (audio / "private").chmod(0)
    try:
        report = preprocess([str(audio)], str(tmp_path / "db"), progress=False)
    finally:
        (audio / "private").chmod(0o755)
    assert reasons(report) == {"private": reasons(report)["private"]}
    assert "permission denied" in reasons(report)["private"]


# --- 3. every extension libsndfile reads; what a folder holds instead -------------------------
@pytest.mark.parametrize("name,options", [
    ("a.opus", dict(format="OGG", subtype="OPUS", samplerate=48000)),
    ("a.oga", dict(format="OGG", subtype="VORBIS")),
    ("a.wave", dict(format="WAV")),
    ("a.caf", dict(format="CAF")),
    ("a.aifc", dict(format="AIFF")),
    ("a.w64", dict(format="W64")),
    ("a.rf64", dict(format="RF64")),
])
def test_other_libsndfile_extensions_are_found(tmp_path, name, options):
    rate = options.pop("samplerate", SR)
    path = tmp_path / "in" / name
    path.parent.mkdir()
    sf.write(path, 0.5 * np.sin(np.arange(rate // 2) / 10), rate, **options)
    report = preprocess([str(path.parent)], str(tmp_path / "db"), progress=False)
    assert [Path(p).name for p in report.kept] == [name]


def test_no_audio_says_which_other_files_are_there(tmp_path):
    audio = tmp_path / "in"
    (audio / "sub").mkdir(parents=True)
    for i in range(5):
        (audio / f"take{i}.m4a").write_bytes(b"\0" * 10)
    (audio / "sub" / "notes.TXT").write_text("hi")
    (audio / "._take0.m4a").write_bytes(b"\0")  # macOS metadata: not counted
    with pytest.raises(DataError, match=r"found in .*in: it has 6 files with other extensions "
                                        r"\(5 \.m4a, 1 \.txt\); convert any audio"):
        preprocess([str(audio)], str(tmp_path / "db"), progress=False)


# --- 4. macOS metadata files ------------------------------------------------------------------
def test_macos_metadata_files_are_passed_over_silently(tmp_path):
    audio = tmp_path / "in"
    tone(audio / "a.wav")
    (audio / "._a.wav").write_bytes(b"\0\5\26\7" + b"\0" * 80)  # AppleDouble header
    (audio / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 40)
    report = preprocess([str(audio)], str(tmp_path / "db"), progress=False)
    assert [Path(p).name for p in report.kept] == ["a.wav"] and report.skipped == []


# --- 5, 6. each skipped file once, with the real reason ---------------------------------------
def test_skipped_files_are_listed_once_with_their_reason(tmp_path):
    audio = tmp_path / "in"
    tone(audio / "good.wav")
    (audio / "notes.mp3").write_text("this is not an mp3\n" * 50)
    (audio / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (audio / "text.wav").write_text("not audio")
    result = run("--input_path", audio, "--output_path", tmp_path / "db")
    out = result.output
    assert out.count(str(audio / "text.wav")) == 1, out  # not logged on stderr as well
    link = f"skipped {audio / 'dangling.wav'}: a broken symbolic link (to {tmp_path / 'gone.wav'}, "
    assert out.count(link) == 1, out
    mp3 = f"skipped {audio / 'notes.mp3'}: unreadable or not audio (not a valid mp3 file"
    assert out.count(mp3) == 1, out
    assert "System error" not in out and "does not exist or is not a regular" not in out


def test_a_file_we_may_not_read_says_permission_denied(tmp_path, monkeypatch):
    audio = tmp_path / "in"
    tone(audio / "good.wav")
    locked = tone(audio / "locked.wav")
    if IS_ROOT:  # chmod does not stop root: refuse the open as the kernel would
        real_open = os.open

        def refusing(path, flags, *args, **kwargs):
            if Path(os.fsdecode(path)) == locked:
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", refusing)
    locked.chmod(0)
    try:
        report = preprocess([str(audio)], str(tmp_path / "db"), progress=False)
    finally:
        locked.chmod(0o644)
    assert reasons(report)["locked.wav"].startswith("permission denied: make it readable")


# --- 7. channels that cancel when mixed down --------------------------------------------------
def test_channels_that_cancel_in_the_mixdown_are_named(tmp_path):
    audio = tmp_path / "in"
    tone(audio / "good.wav")
    x = 0.5 * np.sin(np.arange(SR // 2) / 10)
    sf.write(audio / "inverted.wav", np.stack([x, -x], 1), SR, subtype="FLOAT")
    sf.write(audio / "quiet.wav", np.zeros((SR // 2, 2)), SR)
    report = preprocess([str(audio)], str(tmp_path / "db"), progress=False)
    why = reasons(report)
    assert why["inverted.wav"].startswith("silent after mixing to mono (peak ")
    assert "its 2 channels cancel (peak 0.50 before mixing" in why["inverted.wav"]
    assert why["quiet.wav"].startswith("silent (peak 0.0e+00")  # silent in itself: as before
    stereo = preprocess([str(audio)], str(tmp_path / "db2"), channels=2, progress=False)
    assert "inverted.wav" not in reasons(stereo)  # kept as it is


# --- 8. float samples beyond full scale -------------------------------------------------------
def test_a_float_file_beyond_full_scale_is_kept_with_a_warning(tmp_path):
    audio = tmp_path / "in"
    tone(audio / "good.wav", seconds=3)   # a dataset long enough to train: no note on that
    tone(audio / "hot.wav", level=5.3, subtype="FLOAT")
    tone(audio / "edge.wav", level=1.005, subtype="FLOAT")  # rounding-sized overshoot: no note
    result = run("--input_path", audio, "--output_path", tmp_path / "db")
    assert result.output.startswith("3 files")
    line = f"warning {audio / 'hot.wav'}: peak 5.30 (+14.5 dBFS) is above full scale (1.0): kept as is"
    assert result.output.count(line) == 1 and result.output.count("warning") == 1, result.output
    audio_bin = np.fromfile(tmp_path / "db" / "audio.bin", dtype="<f4")
    assert np.abs(audio_bin).max() == pytest.approx(5.3, rel=1e-3)  # not clipped


# --- 9. files that end before their header says ------------------------------------------------
def test_a_truncated_file_is_kept_with_a_warning(tmp_path):
    """Half an mp3 (an interrupted download) or half a WAV gave what decodes, silently. A
    WAV a recorder streamed (its sizes unknown, 0xFFFFFFFF) is whole, and is not noted."""
    audio = tmp_path / "in"
    for name, fmt in [("cut.mp3", "MP3"), ("cut.wav", "WAV"), ("whole.wav", "WAV")]:
        tone(audio / name, seconds=4, format=fmt)
    for name in ("cut.mp3", "cut.wav"):
        data = (audio / name).read_bytes()
        (audio / name).write_bytes(data[: len(data) // 2])
    streamed = bytearray(tone(tmp_path / "s.wav", seconds=1).read_bytes())
    at = streamed.find(b"data")
    streamed[4:8] = streamed[at + 4: at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    (audio / "streamed.wav").write_bytes(streamed)
    result = run("--input_path", audio, "--output_path", tmp_path / "db")
    assert result.output.startswith("4 files"), result.output
    for name, decoded in [("cut.mp3", "1.8"), ("cut.wav", "2.00")]:
        assert (f"warning {audio / name}: decoded {decoded}" in result.output
                and "but its header states 4.0" in result.output), result.output
    assert "looks truncated" in result.output
    assert result.output.count("warning") == 2, result.output
