"""The closed-loop benchmark: one configuration, and classifier thread counts compared in alternating blocks."""
from __future__ import annotations

import pytest

from launch.bench import BenchConfig, format_bench, main, run_bench
from launch.loop import DriveConfig
from test_launch_drive import tiny_onnx  # noqa: F401  (module fixture)


def _drive(model, frames=8):
    return DriveConfig(town="Town02", sim="embedded", model=str(model), gate="hard", frames=frames, res=(160, 120),
                       display=False, realtime=False, seed=3, warmup=1)


def test_thread_counts_are_compared_block_by_block_on_the_same_drive(tiny_onnx):
    out = run_bench(BenchConfig(drive=_drive(tiny_onnx), warmup_frames=2, record=False, threads=("auto", "1", "2"),
                                blocks=2))
    rows = out["compare"]
    assert [r["threads"] for r in rows] == ["auto", 1, 2]
    assert all(r["blocks"] == 2 and r["loop_fps"] > 0 for r in rows)
    assert rows[0]["fps_ratio"] == 1.0                                 # the baseline against itself
    assert "1 intra-op threads" in rows[1]["host"] and "2 intra-op threads" in rows[2]["host"]
    assert all(r["stages"]["tick"]["count"] == 8 and r["stages"]["infer"]["count"] == 8 for r in rows)   # 2 blocks of 4
    assert out["frames"] == 8 and out["stages"] == rows[0]["stages"]   # the top-level figures are the baseline's
    text = format_bench(out)
    assert "compared in 2 alternating blocks each" in text and text.count("intra-op threads") >= 3


@pytest.mark.parametrize("argv, message", [
    (["--perception-threads", "auto,0"], "--perception-threads '0': want 'auto' or a positive integer"),
    (["--perception-threads", "auto,auto"], "a configuration is repeated"),
    (["--perception-threads", "1,2"], "compares classifiers: give --model"),
    (["--frames", "2", "--blocks", "3"], "--frames 2 is fewer than --blocks 3"),
    (["--blocks", "0"], "--blocks 0: must be >= 1"),
])
def test_bad_flags_get_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["--sim", "embedded", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
