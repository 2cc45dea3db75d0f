"""benchmarks/profile_block.py and benchmarks/streaming_rtf.py on real exports: what they print."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest


from .runs import export_quietly, make_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_block  # noqa: E402


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    return export_quietly(make_run(root, ("brave",)), ["nn_tilde", "onnx_streaming"], root / "out")


@pytest.mark.parametrize("target,product", [("nn_tilde", "aten::mm"),
                                            ("onnx_streaming", "Conv")])
def test_profile_names_the_products(exports, target, product, capsys):
    assert profile_block.main([str(exports[target]), "--block", "256", "--calls", "3",
                               "--top", "40"]) == 0
    out = capsys.readouterr().out
    assert f"{exports[target].name} @ block 256:" in out and "ms per block unprofiled" in out
    table = out.split("heaviest products")[0]
    assert any(line.split()[0] == product for line in table.splitlines()[2:] if line.strip())
    assert "heaviest products" in out and product in out.split("heaviest products")[1]


def test_profile_refuses_what_it_cannot_read(tmp_path, capsys):
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"not a model")
    with pytest.raises(SystemExit) as exit_info:
        profile_block.main([str(odd)])
    assert exit_info.value.code == 2
    assert "expected a .ts (TorchScript) or .onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        profile_block.main([str(tmp_path / "missing.ts")])
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("args, expected", [
    (["--configs", "nosuch"], "--configs nosuch: not a config of rave_core"),
    (["--seconds", "0"], "--seconds 0.0: give the seconds of audio"),
    (["--repeats", "0"], "--repeats 0: give at least 1"),
    (["--targets", "bogus"], "--targets bogus: benchmarked targets are nn_tilde"),
    (["--blocks", "0"], "block sizes are positive"),
    (["--configs", "brave", "--reference-ts", "brave=/nonexistent.ts"],
     "/nonexistent.ts does not exist"),
    (["--configs", "brave", "--run", "v2=x"], "v2 is not among --configs (brave)"),
    (["--configs", "brave", "--run", "brave"], "give CONFIG=PATH"),
])
def test_streaming_rtf_refuses_bad_options_before_building_anything(args, expected, capsys):
    import streaming_rtf
    with pytest.raises(SystemExit) as exit_info:
        streaming_rtf.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err


def test_streaming_rtf_prints_phase_and_table(tmp_path, capsys):
    """benchmarks/streaming_rtf.py end to end on a small run: the machine's phase line,
    then a row per target and floor with a positive real-time factor, and with
    ``--markdown`` the same rows as a Markdown table."""
    import streaming_rtf

    run = make_run(tmp_path, ("brave",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert streaming_rtf.main(["--configs", "brave", "--run", f"brave={run}",
                                   "--blocks", "100", "128", "--targets", "nn_tilde",
                                   "onnx_streaming", "--seconds", "0.1",
                                   "--repeats", "1", "--markdown"]) == 0
    captured = capsys.readouterr()
    assert "brave: block(s) 100 skipped: not a multiple of its ratio 128" in captured.err
    out = captured.out
    table, markdown = out.split("\n\n")
    lines = table.splitlines()
    assert lines[0].startswith("machine phase, one thread reading: 8 MB at ")
    assert lines[0].count("GB/s") == 6
    # config, target (may hold spaces), then 7 cells: block, RTF, mean, p99, budget, ...
    rows = {" ".join(cells[1:-7]): float(cells[-6])
            for cells in (line.split() for line in lines[3:] if line.strip())}
    assert set(rows) == {"nn_tilde", "onnx_streaming", "floor: read weights",
                         "floor: folded (ONNX)"}
    for name, rtf in rows.items():
        assert rtf > 0, name
    md = [line.split("|")[1:-1] for line in markdown.strip().splitlines()]
    assert [c.strip() for c in md[0]][:4] == ["config", "target", "block", "RTF"]
    assert {c[1].strip(): float(c[3]) for c in md[2:]} == pytest.approx(rows, abs=0.006)
    assert all(c[5].strip() == "-" for c in md[2:] if c[1].strip().startswith("floor"))
