"""The README's main job, end to end at toy size: collect -> train -> export -> evaluate."""
import json

from launch.quickstart import QuickstartConfig, main, run_quickstart


def test_quickstart_produces_every_artifact(tmp_path):
    cfg = QuickstartConfig(out=tmp_path / "qs", frames=40, epochs=1, img_size=32, arch="simple_cnn",
                           weights="none", res=(160, 120))
    result = run_quickstart(cfg)
    assert (result.dataset / "manifest.csv").is_file() and (result.dataset / "contact_sheet.png").is_file()
    assert result.checkpoint.is_file() and result.checkpoint.name == "best.pt"
    assert result.onnx.is_file() and result.onnx.suffix == ".onnx"
    report = result.report.read_text()
    for gate in ("hard", "soft", "oracle", "curve", "straight"):
        assert f"| {gate} |" in report
    metrics = json.loads((result.report.parent / "metrics.json").read_text())
    assert "Town02" in json.dumps(metrics)
    (video,) = result.videos.values()
    assert video.is_file() and video.stat().st_size > 0
    towns = {line.split(",")[2] for line in (result.dataset / "manifest.csv").read_text().splitlines()[1:]}
    assert towns == {"Town01", "Town02", "Town03", "Town04"}  # Town02 is collected, but only as the test town


def test_quickstart_rejects_bad_flags_in_one_line(capsys):
    for argv, needle in ((["--frames", "7"], "--frames 7"), (["--epochs", "0"], "--epochs 0")):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 2
        assert needle in capsys.readouterr().err
