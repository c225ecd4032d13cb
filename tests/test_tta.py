"""Flip test-time augmentation (``tta: hflip``): a checkpoint that carries it gives a frame and its mirror
image the same p(curve) on every path -- training's final evaluation, the calibration CLI, the ONNX export
and the classifier backends -- while its weights stay those of the plain network."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.preprocess import check_tta, preprocess
from tests.synthetic_data import FAST, break_config, make_dataset, tiny_checkpoint
from training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from training.models import FlipAverage, base_model, create_model, with_tta

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(path: Path, tta: str = "hflip") -> Path:
    return tiny_checkpoint(path, tta=tta)


def _frame(seed: int = 3) -> np.ndarray:
    """A frame whose left and right halves differ, so a plain network scores it and its mirror apart."""
    f = np.random.default_rng(seed).integers(0, 255, (60, 80, 4), dtype=np.uint8)
    f[:, :30] = 240
    return f


def test_flip_average_is_the_mean_of_both_views_and_mirror_invariant():
    torch.manual_seed(0)
    net = create_model("simple_cnn", weights="none").eval()
    x = torch.randn(3, 3, 32, 32)
    mirror = torch.flip(x, dims=[3])
    with torch.no_grad():
        got = FlipAverage(net)(x)
        torch.testing.assert_close(got, (net(x) + net(mirror)) / 2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(FlipAverage(net)(mirror), got, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(net(x), net(mirror), atol=1e-4)        # the plain network is not invariant
    assert with_tta(net, "none") is net and base_model(with_tta(net, "hflip")) is net


@pytest.mark.parametrize("bad", ["flip", "", None, "HFLIP"])
def test_unknown_tta_is_one_line_with_the_choices(bad):
    with pytest.raises(ValueError, match="valid: none, hflip") as e:
        check_tta(bad)
    assert "\n" not in str(e.value)


def test_checkpoint_keeps_plain_weights_and_loads_wrapped(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt")
    raw = torch.load(ckpt, weights_only=True)
    assert not any(k.startswith("net.") for k in raw["state_dict"])
    model, cfg = load_checkpoint(ckpt)
    assert isinstance(model, FlipAverage) and cfg["tta"] == "hflip"
    save_checkpoint(tmp_path / "again.pt", model, cfg, 1, {})             # a wrapped model saves unwrapped
    assert torch.load(tmp_path / "again.pt", weights_only=True)["state_dict"].keys() == raw["state_dict"].keys()
    break_config(ckpt, "tta", "rot90")
    with pytest.raises(CheckpointError, match="tta 'rot90'"):
        read_checkpoint(ckpt)


def test_tta_travels_checkpoint_onnx_and_backends(tmp_path):
    pytest.importorskip("onnxruntime")
    from perception.classifier import CurveClassifier
    from perception.export import ExportConfig, export
    from perception.meta import read_model_meta

    ckpt = _checkpoint(tmp_path / "m.pt")
    plain = _checkpoint(tmp_path / "plain.pt", tta="none")
    onnx_path = tmp_path / "m.onnx"
    export(ExportConfig(checkpoint=ckpt, out=onnx_path, parity_frames=2))
    assert read_model_meta(onnx_path).tta == "hflip" == read_model_meta(ckpt).tta
    frame = _frame()
    mirror = np.ascontiguousarray(frame[:, ::-1])
    p_plain = CurveClassifier.load(plain, backend="torch", warmup=1)
    assert p_plain.predict(frame).p_curve != pytest.approx(p_plain.predict(mirror).p_curve, abs=1e-4)
    x = preprocess(frame, 32, "BGRA", [0.5] * 3, [0.25] * 3)
    want = (p_plain.logits(x) + p_plain.logits(np.ascontiguousarray(x[..., ::-1]))) / 2
    for source, backend in ((onnx_path, "onnxruntime"), (ckpt, "torch")):
        clf = CurveClassifier.load(source, backend=backend, warmup=1)
        np.testing.assert_allclose(clf.logits(x), want, rtol=1e-4, atol=1e-4)
        a, b = clf.predict(frame).p_curve, clf.predict(mirror).p_curve
        assert a == pytest.approx(b, abs=1e-5)
        batch = clf.predict_batch([frame, mirror, frame])                  # dynamic batch: 2N rows inside
        assert [p.p_curve for p in batch] == pytest.approx([a, a, a], abs=1e-5)


def test_training_with_tta_stores_it_and_calibrates_on_the_averaged_logits(tmp_path):
    from training import train as T
    from training.evaluate import main as evaluate_main
    data = make_dataset(tmp_path / "ds", episodes=3, frames_per_episode=8)
    out = tmp_path / "run"
    T.main(["--data", str(data), "--val-towns", "Town03", "--epochs", "1", "--out", str(out), *FAST,
            "--tta", "hflip"])
    best = out / "weights" / "best.pt"
    model, cfg = load_checkpoint(best)
    assert isinstance(model, FlipAverage) and cfg["tta"] == "hflip"
    evaluate_main(["--checkpoint", str(best), "--data", str(data), "--out", str(tmp_path / "ev"), "--workers", "0",
                   "--no-progress"])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["tta"] == "hflip"
    # the stored temperature was fitted on the flip-averaged val logits: refitting them gives it back
    from training.calibration import CalibrateConfig, calibrate_checkpoint
    refit = calibrate_checkpoint(CalibrateConfig(str(best), split=str(out / "split.json"), device="cpu", workers=0,
                                                 out=str(tmp_path / "refit.pt")))
    assert refit["temperature"] == pytest.approx(cfg["temperature"], rel=1e-3)
    plain = calibrate_checkpoint(CalibrateConfig(str(best), split=str(out / "split.json"), device="cpu", workers=0,
                                                 tta="none", out=str(tmp_path / "plain.pt")))
    assert plain["temperature"] != pytest.approx(cfg["temperature"], rel=1e-3)


def test_calibration_cli_switches_a_copy_to_tta_on_the_runs_val_split(tmp_path):
    from training import train as T
    data = make_dataset(tmp_path / "ds", episodes=3, frames_per_episode=8)
    out = tmp_path / "run"
    T.main(["--data", str(data), "--val-towns", "Town03", "--epochs", "1", "--out", str(out), *FAST])
    best, copy = out / "weights" / "best.pt", out / "weights" / "best_hflip.pt"
    before = best.read_bytes()
    r = subprocess.run([sys.executable, "-m", "training.calibration", "--checkpoint", str(best), "--split",
                        str(out / "split.json"), "--tta", "hflip", "--out", str(copy), "--device", "cpu",
                        "--workers", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    val_frames = json.loads((out / "split.json").read_text())["val"]["frames"]
    assert f"on {val_frames} frames" in r.stdout
    assert best.read_bytes() == before                                    # the original is untouched
    cfg = torch.load(copy, weights_only=True)["config"]
    assert cfg["tta"] == "hflip" and cfg["temperature"] > 0
    assert torch.load(best, weights_only=True)["config"].get("tta", "none") == "none"


def test_calibration_cli_bad_input_is_one_line(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt")
    for args, needle in ((["--tta", "rot90"], "invalid choice: 'rot90'"),
                         ([], "--data DIR [DIR ...] or --split"),
                         (["--split", str(tmp_path / "nope.json")], "nope.json")):
        r = subprocess.run([sys.executable, "-m", "training.calibration", "--checkpoint", str(ckpt), *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, (args, r.stderr)
