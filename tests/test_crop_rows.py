"""A model trained on a band of the frame's rows (``--crop-rows``) sees that band everywhere: the training
cache, evaluation, calibration, the ONNX export and every classifier backend."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.dataset import build_cache, load_frames
from datasets.preprocess import FULL_FRAME, check_crop_rows, crop_band, preprocess, to_rgb_resized
from tests.synthetic_data import FAST, break_config, make_dataset, tiny_checkpoint
from training.checkpoint import CheckpointError, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BAND = (0.3, 0.8)


def _frame(h: int = 60, w: int = 80, channels: int = 4) -> np.ndarray:
    """Rows that differ from each other, so a wrong band gives other pixels."""
    rng = np.random.default_rng(3)
    f = rng.integers(0, 255, (h, w, channels), dtype=np.uint8)
    f[: h // 3] = 250                      # a bright top third: the band leaves most of it out
    return f


def _checkpoint(path: Path, crop_rows=BAND, img_size: int = 32) -> Path:
    return tiny_checkpoint(path, crop_rows=list(crop_rows), img_size=img_size)


def test_crop_band_keeps_the_rows_asked_for_without_copying():
    f = _frame()
    band = crop_band(f, BAND)
    assert band.shape == (30, 80, 4) and np.shares_memory(band, f)
    np.testing.assert_array_equal(band, f[18:48])
    assert crop_band(f, FULL_FRAME) is f and crop_band(f, None) is f


def test_preprocess_of_a_band_is_the_resize_of_those_rows():
    f = _frame()
    got = to_rgb_resized(f, 32, "BGRA", crop_rows=BAND)
    want = cv2.resize(cv2.cvtColor(np.ascontiguousarray(f[18:48]), cv2.COLOR_BGRA2RGB), (32, 32),
                      interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, to_rgb_resized(f, 32, "BGRA"))


def test_band_resized_on_two_threads_is_bit_identical():
    from concurrent.futures import ThreadPoolExecutor
    f = np.random.default_rng(5).integers(0, 255, (600, 800, 4), dtype=np.uint8)
    with ThreadPoolExecutor(1) as pool:
        np.testing.assert_array_equal(to_rgb_resized(f, 128, "BGRA", pool, crop_rows=BAND),
                                      to_rgb_resized(f, 128, "BGRA", crop_rows=BAND))


@pytest.mark.parametrize("bad", [(0.8, 0.3), (-0.1, 0.5), (0.2, 1.5), (0.5, 0.52), ("a", 1), (0.1,)])
def test_bad_band_is_one_line_naming_it(bad):
    with pytest.raises(ValueError, match="--crop-rows") as e:
        check_crop_rows(bad)
    assert "\n" not in str(e.value) and "0 <= TOP < BOTTOM <= 1" in str(e.value)


def test_cache_of_a_band_is_its_own_file_with_the_band_pixels(tmp_path):
    data = make_dataset(tmp_path / "ds", towns=("Town01",), episodes=1, frames_per_episode=4)
    table = load_frames([data])
    full = build_cache(table, 32, progress=False)
    band = build_cache(table, 32, progress=False, crop_rows=BAND)
    assert full.npy_paths[0] != band.npy_paths[0] and band.crop_rows == BAND
    img = cv2.imread(str(data / table.image[0]))
    np.testing.assert_array_equal(band.get(0, int(table.row[0])), to_rgb_resized(img, 32, "BGR", crop_rows=BAND))
    assert not np.array_equal(band.get(0, int(table.row[0])), full.get(0, int(table.row[0])))
    again = build_cache(table, 32, progress=False, crop_rows=BAND)       # reused, not rebuilt
    assert again.npy_paths == band.npy_paths
    assert json.loads(band.npy_paths[0].with_suffix(".json").read_text())["crop_rows"] == list(BAND)


def test_training_stores_the_band_and_evaluation_uses_it(tmp_path):
    from training import train as T
    from training.evaluate import main as evaluate_main
    data = make_dataset(tmp_path / "ds", episodes=3, frames_per_episode=8)
    out = tmp_path / "run"
    T.main(["--data", str(data), "--val-towns", "Town03", "--epochs", "1", "--out", str(out), *FAST,
            "--crop-rows", "0.3", "0.8"])
    ckpt = torch.load(out / "weights" / "best.pt", weights_only=True)
    assert ckpt["config"]["crop_rows"] == [0.3, 0.8]
    assert list((data / "cache").glob("frames_32_rows0.3000-0.8000.npy"))
    assert not list((data / "cache").glob("frames_32.npy"))          # the whole-frame cache was never built
    evaluate_main(["--checkpoint", str(out / "weights" / "best.pt"), "--data", str(data), "--out", str(tmp_path / "ev"),
                   "--workers", "0", "--no-progress"])
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["crop_rows"] == [0.3, 0.8]


def test_train_cli_rejects_a_bad_band_in_one_line(tmp_path):
    data = make_dataset(tmp_path / "ds", towns=("Town01",), episodes=1, frames_per_episode=4)
    r = subprocess.run([sys.executable, "-m", "training.train", "--data", str(data), "--crop-rows", "0.8", "0.3",
                        "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--crop-rows 0.8 0.3" in r.stderr and "0 <= TOP < BOTTOM <= 1" in r.stderr


def test_checkpoint_with_a_broken_band_is_a_checkpoint_error(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt")
    break_config(ckpt, "crop_rows", [0.9, 0.1])
    with pytest.raises(CheckpointError, match="crop_rows"):
        read_checkpoint(ckpt)


def test_band_travels_checkpoint_onnx_and_every_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    from perception.classifier import CurveClassifier
    from perception.export import ExportConfig, export
    from perception.meta import read_model_meta

    ckpt = _checkpoint(tmp_path / "m.pt")
    onnx_path = tmp_path / "m.onnx"
    export(ExportConfig(checkpoint=ckpt, out=onnx_path, parity_frames=2))
    assert read_model_meta(onnx_path).crop_rows == BAND == read_model_meta(ckpt).crop_rows
    frame = _frame()
    want = preprocess(frame, 32, "BGRA", [0.5] * 3, [0.25] * 3, crop_rows=BAND)
    whole = preprocess(frame, 32, "BGRA", [0.5] * 3, [0.25] * 3)
    for source, backend in ((onnx_path, "onnxruntime"), (ckpt, "torch")):
        clf = CurveClassifier.load(source, backend=backend, warmup=1)
        np.testing.assert_array_equal(clf.preprocess(frame), want)
        logits = clf.logits(want)
        assert not np.allclose(logits, clf.logits(whole), atol=1e-4)     # the band changes what the model sees
        pred = clf.predict(frame)
        assert pred.p_curve == pytest.approx(float(torch.softmax(torch.from_numpy(logits), 1)[0, 0]), abs=1e-5)
        assert clf.predict_batch([frame, frame])[1].p_curve == pytest.approx(pred.p_curve, abs=1e-5)


def test_gpu_frame_path_crops_like_the_host_path(tmp_path):
    """torch-cuda's raw-frame path (run on the CPU here: the same code) stages only the band and gives the
    host path's logits."""
    from perception.backends.torch_backend import TorchCudaBackend
    from perception.classifier import CurveClassifier
    from perception.meta import load_checkpoint

    model, meta = load_checkpoint(_checkpoint(tmp_path / "m.pt"))
    clf = CurveClassifier(TorchCudaBackend(model, fp16=False, device="cpu"), meta, tmp_path / "m.pt")
    frame = _frame(120, 160)
    assert clf.takes_frame(frame)
    pred = clf.predict(frame)
    assert clf.backend._frame["key"][0] == (60, 160, 4)
    want = clf.logits(preprocess(frame, 32, "BGRA", meta.mean, meta.std, crop_rows=BAND))
    assert pred.p_curve == pytest.approx(float(torch.softmax(torch.from_numpy(want), 1)[0, 0]), abs=2e-3)


def test_calibration_cli_fits_on_the_band(tmp_path):
    from training.calibration import main as calibrate_main
    data = make_dataset(tmp_path / "ds", towns=("Town01",), episodes=2, frames_per_episode=8)
    ckpt = _checkpoint(tmp_path / "m.pt")
    calibrate_main(["--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu", "--workers", "0"])
    cfg = torch.load(ckpt, weights_only=True)["config"]
    assert cfg["temperature"] > 0 and cfg["crop_rows"] == list(BAND)
    assert list((data / "cache").glob("frames_32_rows0.3000-0.8000.npy"))
