"""TensorRT-RTX check (perception.rtx_check): a real TensorRT-family ONNX parser and CPU-only builder on our ONNX.

The tests that need ``tensorrt_rtx`` skip without it (``pip install tensorrt-rtx``; no GPU needed).
The CLI's usage errors are tested without it, on tiny hand-made ONNX files (no training).
"""
from __future__ import annotations

import json
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from perception.export import ExportConfig, export
from perception.meta import ModelMeta
from perception.rtx_check import RTXUnavailableError, check_onnx_with_tensorrt_rtx, import_tensorrt_rtx, main
from test_perception_support import IMG, trained_ckpt  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def rtx():
    try:
        return import_tensorrt_rtx()
    except RTXUnavailableError as e:
        pytest.skip(f"needs TensorRT-RTX: {e} (real libraries, builds on the CPU, no GPU needed)")


@pytest.fixture(scope="module")
def onnx_files(rtx, request, tmp_path_factory):
    """Exported like the export tests do it: the trained session checkpoint, FP32 static and FP16 dynamic.

    The checkpoint is asked for only after ``rtx`` (session fixtures would otherwise be set up first, so
    a run without tensorrt_rtx would train a model just to skip)."""
    trained_ckpt = request.getfixturevalue("trained_ckpt")
    d = tmp_path_factory.mktemp("rtx_onnx")
    files = {}
    for name, fp16, dyn in [("fp32_static", False, False), ("fp16_dynamic", True, True)]:
        files[name] = d / f"{name}.onnx"
        export(ExportConfig(checkpoint=trained_ckpt, out=files[name], fp16=fp16, dynamic_batch=dyn, parity_frames=0))
    return files


def _tiny_onnx(path, op: str = "Relu", domain: str = "", meta: bool = True):
    """A one-node ONNX with our metadata (or none): enough for usage errors and unsupported-op reports."""
    graph = helper.make_graph([helper.make_node(op, ["input"], ["logits"], name="node0", domain=domain)], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if meta:
        helper.set_model_props(model, ModelMeta(arch="simple_cnn", img_size=8).to_props())
    onnx.save(model, str(path))
    return path


# --- with tensorrt_rtx ---------------------------------------------------------------------------

def test_static_fp32_onnx_parses_and_builds_on_cpu(rtx, onnx_files):
    r = check_onnx_with_tensorrt_rtx(onnx_files["fp32_static"])
    assert r.ok, r.summary()
    assert r.trt_rtx_version == rtx.__version__ and r.num_layers > 0 and not r.unsupported_nodes
    assert [(t.name, t.shape, t.dtype) for t in r.inputs] == [("input", (1, 3, IMG, IMG), "FLOAT")]
    assert [(t.name, t.shape, t.dtype) for t in r.outputs] == [("logits", (1, r.meta.num_classes), "FLOAT")]
    assert r.meta.img_size == IMG and r.meta.precision == "fp32"
    assert r.built and r.engine_bytes > 0 and r.build_errors == []


def test_fp16_dynamic_onnx_keeps_float32_io_and_dynamic_batch(rtx, onnx_files):
    r = check_onnx_with_tensorrt_rtx(onnx_files["fp16_dynamic"], max_batch=4)
    assert r.ok, r.summary()
    assert r.meta.precision == "fp16" and r.meta.dynamic_batch
    assert [(t.name, t.shape, t.dtype) for t in r.inputs] == [("input", (-1, 3, IMG, IMG), "FLOAT")]
    assert [(t.name, t.shape) for t in r.outputs] == [("logits", (-1, 2))]
    assert r.engine_bytes > 0


def test_explicit_targets_and_parse_only(rtx, onnx_files):
    built = check_onnx_with_tensorrt_rtx(onnx_files["fp32_static"], compute_capabilities=("sm86", "SM89"))
    assert built.ok and built.compute_capabilities == ("SM86", "SM89"), built.summary()
    parsed = check_onnx_with_tensorrt_rtx(onnx_files["fp32_static"], build=False)
    assert parsed.ok and parsed.parsed and not parsed.built and "build" not in parsed.seconds


def test_hopper_is_not_a_target_and_says_so(rtx, onnx_files):
    with pytest.raises(ValueError, match="no SM90"):
        check_onnx_with_tensorrt_rtx(onnx_files["fp32_static"], compute_capabilities=("SM90",))


def test_metadata_that_disagrees_with_the_graph_is_reported(rtx, onnx_files, tmp_path, capsys):
    model = onnx.load(str(onnx_files["fp32_static"]))
    for prop in model.metadata_props:
        if prop.key == "img_size":
            prop.value = str(IMG * 2)
    lying = tmp_path / "lying.onnx"
    onnx.save(model, str(lying))
    r = check_onnx_with_tensorrt_rtx(lying, build=False)
    assert r.parsed and not r.ok
    assert len(r.mismatches) == 1 and f"img_size {IMG * 2}" in r.mismatches[0]
    assert main(["--model", str(lying), "--no-build"]) == 1
    assert "MISMATCH with metadata" in capsys.readouterr().out


def test_unsupported_op_is_named(rtx, tmp_path, capsys):
    path = _tiny_onnx(tmp_path / "custom_op.onnx", op="FrobnicateXYZ", domain="com.example")
    r = check_onnx_with_tensorrt_rtx(path)
    assert not r.parsed and not r.ok and not r.built
    assert r.unsupported_nodes == ["node0 (FrobnicateXYZ)"]
    assert any("FrobnicateXYZ" in e for e in r.parse_errors)
    assert main(["--model", str(path)]) == 1
    assert "unsupported node: node0 (FrobnicateXYZ)" in capsys.readouterr().out


def test_corrupted_onnx_names_the_file(rtx, onnx_files, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(onnx_files["fp32_static"].read_bytes()[:4096])
    with pytest.raises(ValueError, match=r"broken\.onnx is not a readable ONNX file"):
        check_onnx_with_tensorrt_rtx(broken)


def test_cli_reports_and_writes_json(rtx, onnx_files, tmp_path, capsys):
    out = tmp_path / "rtx.json"
    assert main(["--model", str(onnx_files["fp16_dynamic"]), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "parse: OK" in text and "build: OK, CPU-only ahead-of-time engine" in text and "verdict: OK" in text
    data = json.loads(out.read_text())
    assert data["parsed"] and data["built"] and data["inputs"][0]["shape"] == [-1, 3, IMG, IMG]


# --- without tensorrt_rtx (usage errors come before it is needed) ---------------------------------

def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("name, message", [("model.pt", "is not an .onnx file"), ("absent.onnx", "no such file")])
def test_cli_rejects_bad_model_path(tmp_path, capsys, name, message):
    path = tmp_path / name
    if name.endswith(".pt"):
        path.write_bytes(b"x")
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--model {path}" in err and message in err


def test_cli_corrupted_onnx_is_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not protobuf")
    assert main(["--model", str(path)]) == 2
    line = _one_line_error(capsys)
    assert str(path) in line and "not a readable ONNX file" in line


def test_cli_foreign_onnx_is_one_line(tmp_path, capsys):
    path = _tiny_onnx(tmp_path / "foreign.onnx", meta=False)
    assert main(["--model", str(path)]) == 2
    line = _one_line_error(capsys)
    assert "foreign.onnx has no carla-perception metadata" in line


def test_without_tensorrt_rtx_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)        # import fails as if not installed
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(RTXUnavailableError, match="pip install tensorrt-rtx"):
        check_onnx_with_tensorrt_rtx(path)
    assert main(["--model", str(path)]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("rtx check failed: tensorrt_rtx is not importable") and "pip install tensorrt-rtx" in line
