"""Data pipeline: synthetic audio -> preprocess -> AudioDataset windows."""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from rave_core.data import AudioDataset, DataError, preprocess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from synth_dataset import synthesize  # noqa: E402

# `rave_core.data.preprocess` is the function (re-exported); we need the module to patch it.
preprocess_module = importlib.import_module("rave_core.data.preprocess")

SR = 44100
SYNTH_SECONDS = 10.0
STEREO_SECONDS = 2.0
STEREO_SR = 22050


def _write_messy_folder(root: Path) -> Path:
    """Synth audio plus one file of each kind preprocess must skip or convert."""
    synthesize(root / "synth", seconds=SYNTH_SECONDS, sr=SR, seed=0, n_files=2)
    odd = root / "odd"
    odd.mkdir()
    rng = np.random.default_rng(1)
    (odd / "corrupt.wav").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    sf.write(odd / "empty.wav", np.zeros((0, 1), np.float32), SR)
    sf.write(odd / "silent.wav", np.zeros(SR, np.float32), SR)
    (odd / "notes.mp3").write_text("this is not an mp3\n" * 50)
    (odd / "readme.txt").write_text("ignored: not an audio extension")
    t = np.arange(int(STEREO_SECONDS * STEREO_SR)) / STEREO_SR
    sine = np.sin(2 * np.pi * 440 * t)
    # Different levels per channel: a mixdown averages to 0.4, taking the left would give 0.6.
    sf.write(odd / "STEREO.WAV", np.stack([0.6 * sine, 0.2 * sine], axis=1).astype(np.float32), STEREO_SR)
    return root


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    return _write_messy_folder(tmp_path_factory.mktemp("input"))


@pytest.fixture(scope="module")
def built(messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("db") / "dataset"
    report = preprocess([str(messy)], str(out), progress=False)
    return out, report


def _index(db: Path) -> list[dict]:
    return json.loads((db / "index.json").read_text())["files"]


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name and p.name.startswith(path.name))


# --- synthesiser -------------------------------------------------------------------------


def test_synthesize_is_deterministic_and_normalised(tmp_path):
    a = synthesize(tmp_path / "a", seconds=4, seed=3, n_files=2)
    b = synthesize(tmp_path / "b", seconds=4, seed=3, n_files=2)
    c = synthesize(tmp_path / "c", seconds=4, seed=4, n_files=2)
    assert [p.name for p in a] == ["synth_000.wav", "synth_001.wav"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    x, sr = sf.read(a[0])
    assert sr == SR and x.ndim == 1 and len(x) == 2 * SR
    assert np.abs(x).max() == pytest.approx(0.8, abs=1e-3)


# --- preprocess --------------------------------------------------------------------------


def test_bad_files_are_skipped_with_reasons(built):
    out, report = built
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "silent.wav", "notes.mp3"}
    assert reasons["corrupt.wav"].startswith("unreadable")
    assert reasons["notes.mp3"].startswith("unreadable")
    assert reasons["empty.wav"].startswith("empty")
    assert reasons["silent.wav"].startswith("silent")
    assert sorted(Path(p).name for p in report.kept) == ["STEREO.WAV", "synth_000.wav", "synth_001.wav"]
    lines = (out / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in lines) == sorted(reasons)


def test_metadata_index_and_length(built):
    out, report = built
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert set(meta) == {"channels", "n_seconds", "sr", "lazy", "files", "format"}
    assert meta["channels"] == 1 and meta["sr"] == SR and meta["lazy"] is False
    assert meta["files"] == 3 and meta["format"] == "float32"
    expected = SYNTH_SECONDS + STEREO_SECONDS
    assert meta["n_seconds"] == pytest.approx(expected, rel=0.01)
    assert report.n_seconds == pytest.approx(meta["n_seconds"])

    index = _index(out)
    offsets = np.cumsum([0] + [e["length"] for e in index])
    assert [e["offset"] for e in index] == offsets[:-1].tolist()  # contiguous, no gaps
    assert (out / "audio.bin").stat().st_size == offsets[-1] * 4
    assert not _siblings(out)  # no partial or old folders left behind


def test_stereo_22k_is_resampled_and_mixed_down(built):
    out, _ = built
    entry = next(e for e in _index(out) if e["path"].endswith("STEREO.WAV"))
    assert (entry["source_sr"], entry["source_channels"]) == (STEREO_SR, 2)
    assert entry["length"] == pytest.approx(STEREO_SECONDS * SR, rel=0.01)
    audio = np.fromfile(out / "audio.bin", dtype="<f4")
    x = audio[entry["offset"] : entry["offset"] + entry["length"]]
    middle = x[SR // 4 : -SR // 4]  # away from resampler edges
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.02)
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.fft.rfftfreq(len(middle), 1 / SR)[spectrum.argmax()] == pytest.approx(440, abs=2)


def test_stereo_output_duplicates_mono(messy, tmp_path):
    out = tmp_path / "stereo"
    preprocess([str(messy / "synth")], str(out), channels=2, sampling_rate=22050, progress=False)
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert (meta["channels"], meta["sr"]) == (2, 22050)
    assert meta["n_seconds"] == pytest.approx(SYNTH_SECONDS, rel=0.01)
    frames = np.fromfile(out / "audio.bin", dtype="<f4").reshape(-1, 2)
    np.testing.assert_array_equal(frames[:, 0], frames[:, 1])


def test_rerun_rebuilds_identically_without_duplication(messy, tmp_path):
    out = tmp_path / "db"
    # Overlapping inputs name each synth file twice: still stored once.
    first = preprocess([str(messy), str(messy / "synth")], str(out), progress=False)
    data, index = (out / "audio.bin").read_bytes(), _index(out)
    second = preprocess([str(messy), str(messy / "synth")], str(out), progress=False)
    assert (out / "audio.bin").read_bytes() == data
    assert _index(out) == index
    assert first.kept == second.kept and len(first.kept) == 3
    assert not _siblings(out)


class _InterruptAfter:
    """Stand-in writer that writes ``n`` blocks, then acts like Ctrl-C."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0
        self.write = preprocess_module._write_block

    def __call__(self, fh, block):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        self.write(fh, block)


def test_interrupted_run_leaves_no_output(messy, tmp_path, monkeypatch):
    out = tmp_path / "db"
    monkeypatch.setattr(preprocess_module, "_write_block", _InterruptAfter(3))
    with pytest.raises(KeyboardInterrupt):
        preprocess([str(messy)], str(out), progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no .partial-<pid> folder either


def test_interrupted_rebuild_keeps_previous_dataset(messy, tmp_path, monkeypatch):
    out = tmp_path / "db"
    preprocess([str(messy / "synth")], str(out), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(preprocess_module, "_write_block", _InterruptAfter(2))
    with pytest.raises(KeyboardInterrupt):
        preprocess([str(messy)], str(out), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not _siblings(out)


def test_missing_input_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=r"input path not found: .*nope; check the path"):
        preprocess([str(missing)], str(tmp_path / "db"), progress=False)
    assert not (tmp_path / "db").exists()


def test_no_audio_and_all_skipped_are_clear_errors(tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hi")
    with pytest.raises(DataError, match="no audio files .* found"):
        preprocess([str(tmp_path / "text")], str(tmp_path / "db"), progress=False)
    (tmp_path / "bad").mkdir()
    sf.write(tmp_path / "bad" / "quiet.wav", np.zeros(1000, np.float32), SR)
    with pytest.raises(DataError, match=r"the only audio file was skipped .*quiet.wav: silent"):
        preprocess([str(tmp_path / "bad")], str(tmp_path / "db"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "text"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_dataset(messy, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a dataset"):
        preprocess([str(messy / "synth")], str(out), progress=False)
    assert (out / "thesis.tex").read_text() == "precious"


def test_memory_stays_flat_for_a_long_file(tmp_path):
    """10 minutes of noise (~106 MB as float32) must not be held in memory."""
    path = tmp_path / "long" / "noise.wav"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        for _ in range(60):  # 60 chunks of 10 s
            f.write(rng.uniform(-0.5, 0.5, 10 * SR).astype(np.float32))
    tracemalloc.start()
    try:
        # Resampling too, so the streaming resampler is covered.
        report = preprocess([str(path.parent)], str(tmp_path / "db"), sampling_rate=22050, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.n_seconds == pytest.approx(600, rel=1e-3)
    assert peak < 50 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"


# --- dataset -----------------------------------------------------------------------------


N_SIGNAL = 8192


def test_windows_have_the_right_shape_and_content(built):
    out, _ = built
    ds = AudioDataset(out, N_SIGNAL)
    x = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (1, N_SIGNAL) and x.dtype == torch.float32
    audio = np.fromfile(out / "audio.bin", dtype="<f4")
    start = int(ds.starts[len(ds) // 2])
    np.testing.assert_array_equal(ds[len(ds) // 2].numpy()[0], audio[start : start + N_SIGNAL])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, 1, N_SIGNAL)


def test_train_and_valid_windows_do_not_overlap(built):
    out, _ = built
    train = AudioDataset(out, N_SIGNAL, split="train", valid_fraction=0.1)
    valid = AudioDataset(out, N_SIGNAL, split="valid", valid_fraction=0.1)
    n_windows = train.n_frames // N_SIGNAL
    assert len(train) + len(valid) == n_windows and len(valid) == round(0.1 * n_windows)
    starts = np.sort(np.concatenate([train.starts, valid.starts]))
    assert np.all(np.diff(starts) >= N_SIGNAL)  # disjoint intervals
    assert starts[-1] + N_SIGNAL <= train.n_frames
    again = AudioDataset(out, N_SIGNAL, split="valid", valid_fraction=0.1)
    other = AudioDataset(out, N_SIGNAL, split="valid", valid_fraction=0.1, seed=1)
    np.testing.assert_array_equal(valid.starts, again.starts)  # deterministic
    assert not np.array_equal(valid.starts, other.starts)


def test_stereo_windows_are_channels_first(messy, tmp_path):
    out = tmp_path / "stereo"
    preprocess([str(messy / "odd")], str(out), channels=2, progress=False)
    x = AudioDataset(out, 4096)[0]
    assert x.shape == (2, 4096)
    frames = np.fromfile(out / "audio.bin", dtype="<f4").reshape(-1, 2)
    start = int(AudioDataset(out, 4096).starts[0])
    np.testing.assert_array_equal(x.numpy(), frames[start : start + 4096].T)


def test_pickling_does_not_copy_the_audio(built):
    out, _ = built
    ds = AudioDataset(out, N_SIGNAL)
    ds[0]  # opens the memmap
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 100_000
    assert torch.equal(clone[1], ds[1])


def test_random_gain_only_attenuates_training_windows(built):
    out, _ = built
    plain = AudioDataset(out, N_SIGNAL)
    gained = AudioDataset(out, N_SIGNAL, random_gain_db=12)
    torch.manual_seed(0)
    ratios = [gained[i].abs().max() / plain[i].abs().max() for i in range(8)]
    assert all(10 ** (-12 / 20) - 1e-6 <= r <= 1 + 1e-6 for r in ratios)
    assert len({round(float(r), 4) for r in ratios}) > 1
    valid = AudioDataset(out, N_SIGNAL, split="valid", random_gain_db=12)
    assert torch.equal(valid[0], AudioDataset(out, N_SIGNAL, split="valid")[0])


def test_dataset_shorter_than_one_window_is_a_clear_error(built):
    out, _ = built
    with pytest.raises(DataError, match=r"has 12\.\d\d s of audio but one window .* needs 22\.\d\d s"):
        AudioDataset(out, 1_000_000)


def test_incomplete_dataset_says_to_rerun_preprocess(messy, tmp_path):
    out = tmp_path / "db"
    preprocess([str(messy / "synth")], str(out), progress=False)
    (out / "metadata.yaml").unlink()
    with pytest.raises(DataError, match=r"incomplete.*rave-core preprocess"):
        AudioDataset(out, N_SIGNAL)
    with pytest.raises(DataError, match="dataset not found"):
        AudioDataset(tmp_path / "missing", N_SIGNAL)
