"""ONNX export: metadata, checker, parity with torch on frames through a TRAINED checkpoint, CLI."""
from __future__ import annotations

import csv
import hashlib
import json

import cv2
import numpy as np
import onnx
import pytest
import torch

from perception.export import ExportConfig, export, main, parse_size
from perception.meta import MARKER_KEY, load_checkpoint, read_onnx_meta
from test_perception_support import batch, frames_and_labels, trained_ckpt  # noqa: F401  (session fixture)


def _ort_logits(path, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    if isinstance(sess.get_inputs()[0].shape[0], int):
        return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    return sess.run(None, {name: x})[0]


@pytest.fixture(scope="module")
def frames():
    return frames_and_labels(200, seed=7)[0]


@pytest.fixture(scope="module")
def torch_logits(trained_ckpt, frames):
    model, _ = load_checkpoint(trained_ckpt)
    with torch.inference_mode():
        return model(torch.from_numpy(batch(frames))).numpy()


def test_export_writes_metadata_and_passes_checker(trained_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    result = export(ExportConfig(checkpoint=trained_ckpt, out=out, parity_frames=0))
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props[MARKER_KEY] == "1"
    assert json.loads(props["classes"]) == ["curve", "straight"]
    assert props["img_size"] == "64" and props["color_order"] == "RGB" and props["arch"] == "simple_cnn"
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert props["checkpoint_sha256"] == hashlib.sha256(trained_ckpt.read_bytes()).hexdigest()
    assert "BGRA" in props["frame_note"] and "torch" in props["exporter"]
    assert read_onnx_meta(out) == result.meta


def test_fp32_parity_with_torch_on_frames(trained_ckpt, tmp_path, frames, torch_logits):
    out = tmp_path / "fp32.onnx"
    export(ExportConfig(checkpoint=trained_ckpt, out=out, parity_frames=0))
    margin = torch_logits[:, 0] - torch_logits[:, 1]
    assert margin.std() > 1.0, "logits must vary across frames, else parity proves nothing"
    got = _ort_logits(out, batch(frames))
    assert np.abs(got - torch_logits).max() <= 1e-3


def test_fp16_onnx_keeps_the_class(trained_ckpt, tmp_path, frames, torch_logits):
    out = tmp_path / "fp16.onnx"
    export(ExportConfig(checkpoint=trained_ckpt, out=out, fp16=True, dynamic_batch=True, parity_frames=0))
    proto = onnx.load(str(out))
    dtypes = {init.data_type for init in proto.graph.initializer if len(init.dims) == 4}
    assert dtypes == {onnx.TensorProto.FLOAT16}, "conv weights must be stored as float16"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "IO stays float32"
    assert read_onnx_meta(out).precision == "fp16"
    got = _ort_logits(out, batch(frames))
    agreement = np.mean(got.argmax(1) == torch_logits.argmax(1))
    assert agreement >= 0.995, f"FP16 ONNX agrees with torch FP32 on only {agreement:.3%} of {len(frames)} frames"


def test_dynamic_batch_runs_any_batch(trained_ckpt, tmp_path, frames):
    out = tmp_path / "dyn.onnx"
    export(ExportConfig(checkpoint=trained_ckpt, out=out, dynamic_batch=True, parity_frames=0))
    assert _ort_logits(out, batch(frames[:5])).shape == (5, 2)
    assert read_onnx_meta(out).dynamic_batch is True


def test_dynamo_exporter_matches(trained_ckpt, tmp_path, frames, torch_logits):
    out = tmp_path / "dynamo.onnx"
    export(ExportConfig(checkpoint=trained_ckpt, out=out, exporter="dynamo", parity_frames=0))
    assert "dynamo" in read_onnx_meta(out).exporter
    assert np.abs(_ort_logits(out, batch(frames[:8])) - torch_logits[:8]).max() <= 1e-3


def test_parity_report_uses_recorded_frames_from_a_dataset_dir(trained_ckpt, tmp_path):
    data = tmp_path / "ds"
    (data / "images").mkdir(parents=True)
    rows = []
    for i, (f, lab) in enumerate(zip(*frames_and_labels(12, seed=3))):
        name = f"images/{i:03d}.png"
        cv2.imwrite(str(data / name), cv2.cvtColor(f, cv2.COLOR_BGRA2BGR))
        rows.append({"image": name, "label": lab})
    with open(data / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    result = export(ExportConfig(checkpoint=trained_ckpt, out=tmp_path / "m.onnx", frames=data, parity_frames=10))
    assert result.parity.frames == 10 and "recorded frames" in result.parity.source
    assert result.parity.max_abs_dlogit <= 1e-3 and result.parity.class_agreement == 1.0
    assert result.parity.logit_std > 0.5
    assert result.parity.runtime == "CPUExecutionProvider, fp32"
    # the session CurveClassifier builds by default here is the measured decision (perception.cpu_tune): when
    # it is not the exact CPU EP fp32 one above, its parity is reported too (and only then)
    chosen = result.cpu_decision.chosen
    default_is_exact = chosen.provider == "CPUExecutionProvider" and chosen.precision == "fp32"
    assert (result.parity_default is None) == default_is_exact, (chosen, result.parity_default)
    if result.parity_default is not None:
        assert result.parity_default.class_agreement == 1.0
        assert result.parity_default.runtime.startswith(chosen.provider)


def test_cli_prints_parity_and_metadata(trained_ckpt, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["--checkpoint", str(trained_ckpt), "--out", str(out), "--parity-frames", "8"]) == 0
    text = capsys.readouterr().out
    assert "onnx.checker OK" in text and "max |dlogit|" in text and "DRAWN" in text
    assert out.is_file()


@pytest.mark.parametrize("argv, message", [
    (["--out", "m.pth"], "--out must end in .onnx"),
    (["--engine", "m.trt"], "--engine must end in .engine"),
    (["--workspace", "lots"], "bad size 'lots'"),
    (["--opset", "7"], "--opset 7 unsupported"),
])
def test_cli_rejects_bad_flags_with_one_line(trained_ckpt, tmp_path, capsys, argv, message):
    base = {"--checkpoint": str(trained_ckpt), "--out": str(tmp_path / "m.onnx")}
    args = dict(zip(argv[::2], argv[1::2]))
    merged = [x for k, v in {**base, **args}.items() for x in (k, v)]
    with pytest.raises(SystemExit) as exc:
        main(merged)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")])
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("1G", 1 << 30), ("512M", 512 << 20), ("2GiB", 2 << 30),
                                            ("1048576", 1 << 20), ("1.5G", int(1.5 * (1 << 30)))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected
