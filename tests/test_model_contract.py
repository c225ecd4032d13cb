"""The camera/label contract travels with the model: dataset.json -> training (refuses mixed
datasets, stores it in the checkpoint) -> ONNX metadata / engine sidecar -> CurveClassifier and
``perception.meta.read_contract``; training.evaluate reports a dataset recorded under another one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from datasets.schema import CameraSpec, Contract, LabelParams, Mount
from perception.classifier import CurveClassifier
from perception.export import ExportConfig, export
from perception.meta import ModelMeta, read_contract, read_model_meta, read_onnx_meta
from tests.synthetic_data import FAST, make_dataset
from training import train as T
from training.checkpoint import save_checkpoint
from training.models import create_model

REPO = Path(__file__).resolve().parents[1]
WIDE = Contract(CameraSpec(640, 480, 110.0, Mount(x=1.2, z=1.6, pitch=-5.0)),
                LabelParams(lookahead_m=40.0, curve_deg=25.0, straight_deg=4.0, junction_policy="flag"))


def _set_camera(data: Path, **camera) -> Path:
    """Rewrite a dataset's recorded camera (what the collector's --res/--fov write)."""
    info = json.loads((data / "dataset.json").read_text())
    info["camera"] = {**info["camera"], **camera}
    (data / "dataset.json").write_text(json.dumps(info))
    return data


def _checkpoint(path: Path, contract: Contract | None) -> Path:
    """An untrained simple_cnn checkpoint in the training format, with or without a contract."""
    torch.manual_seed(0)
    config = {"arch": "simple_cnn", "num_classes": 2, "classes": ["curve", "straight"], "img_size": 32,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "color_order": "RGB", "dropout": 0.0,
              "recipe": {}}
    if contract is not None:
        config["contract"] = contract.to_json()
    save_checkpoint(path, create_model("simple_cnn", weights="none"), config, epoch=0, metrics={})
    return path


def _last_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        T.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# --- metadata -------------------------------------------------------------------------------

@pytest.mark.unit
def test_meta_keeps_the_contract_through_onnx_props_and_sidecar_json():
    meta = ModelMeta(arch="simple_cnn", img_size=32, contract=WIDE)
    props = meta.to_props()
    assert json.loads(props["camera"]) == {"width": 640, "height": 480, "fov": 110.0,
                                           "mount": {"x": 1.2, "y": 0.0, "z": 1.6, "pitch": -5.0, "yaw": 0.0,
                                                     "roll": 0.0}}
    assert json.loads(props["label"])["lookahead_m"] == 40.0
    assert ModelMeta.from_props(props).contract == WIDE
    assert ModelMeta.from_json(json.loads(json.dumps(meta.to_json()))).contract == WIDE
    assert meta.replace(precision="fp16").contract == WIDE
    assert meta.camera.res == (640, 480) and meta.label_params.junction_policy == "flag"
    bare = ModelMeta(arch="simple_cnn")
    assert "camera" not in bare.to_props() and ModelMeta.from_props(bare.to_props()).contract is None
    assert bare.camera is None and bare.label_params is None


@pytest.mark.unit
def test_unreadable_contract_metadata_is_one_clear_error():
    props = {**ModelMeta(arch="simple_cnn").to_props(), "camera": '{"width": 640, "height": 480, "fov": 500}'}
    with pytest.raises(ValueError, match=r"m\.onnx: unreadable camera/label metadata .*fov.*re-export"):
        ModelMeta.from_props(props, "m.onnx")


@pytest.mark.unit
def test_models_without_a_contract_still_load(tmp_path):
    ckpt = _checkpoint(tmp_path / "old.pt", None)
    assert read_contract(ckpt) is None
    onnx_path = tmp_path / "old.onnx"
    export(ExportConfig(checkpoint=ckpt, out=onnx_path, parity_frames=0))
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert "camera" not in props and "label" not in props
    clf = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0)
    assert clf.contract is None and clf.camera is None and clf.label_params is None
    assert clf.predict(np.zeros((480, 640, 4), np.uint8)).label in ("curve", "straight")
    engine = tmp_path / "old.engine"                      # an engine whose sidecar has no contract
    engine.write_bytes(b"plan")
    Path(str(engine) + ".json").write_text(json.dumps({"meta": read_onnx_meta(onnx_path).to_json()}))
    assert read_contract(engine) is None


@pytest.mark.unit
def test_read_contract_of_every_format_without_a_session(tmp_path):
    ckpt = _checkpoint(tmp_path / "wide.pt", WIDE)
    onnx_path = tmp_path / "wide.onnx"
    export(ExportConfig(checkpoint=ckpt, out=onnx_path, parity_frames=0))
    engine = tmp_path / "wide.engine"
    engine.write_bytes(b"not a real plan: read_contract must not deserialize it")
    meta = read_onnx_meta(onnx_path)
    Path(str(engine) + ".json").write_text(json.dumps({"meta": meta.to_json(), "onnx": str(onnx_path)}))
    for path in (ckpt, onnx_path, engine):
        assert read_contract(path) == WIDE, path
    old_sidecar = {k: v for k, v in meta.to_json().items() if k != "contract"}   # written before the contract
    Path(str(engine) + ".json").write_text(json.dumps({"meta": old_sidecar, "onnx": str(onnx_path)}))
    assert read_contract(engine) == WIDE, "an old sidecar takes the contract from its source ONNX"
    assert read_model_meta(ckpt).checkpoint_sha256 == read_model_meta(onnx_path).checkpoint_sha256
    with pytest.raises(FileNotFoundError, match="not found"):
        read_contract(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown model file type"):
        read_contract(tmp_path / "model.h5")


@pytest.mark.unit
def test_engine_sidecar_carries_the_contract(tmp_path, monkeypatch):
    """build_engine (on a stand-in TensorRT) writes the contract into the sidecar it creates."""
    from perception import tensorrt_engine as te
    from test_perception_tensorrt import FAKE_GPU, make_fake_trt
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(10, []))
    monkeypatch.setattr(te, "gpu_identity", lambda device=0: FAKE_GPU)
    monkeypatch.setenv("CARLA_PERCEPTION_CACHE", str(tmp_path / "cache"))
    onnx_path = tmp_path / "wide.onnx"
    export(ExportConfig(checkpoint=_checkpoint(tmp_path / "wide.pt", WIDE), out=onnx_path, parity_frames=0))
    engine = te.ensure_engine(onnx_path)
    side = json.loads(Path(str(engine) + ".json").read_text())
    assert side["meta"]["contract"]["camera"]["fov"] == 110.0 and side["meta"]["contract"]["camera"]["width"] == 640
    assert te.engine_meta(engine).contract == WIDE


# --- training ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fov90(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("c") / "fov90", episodes=3, frames_per_episode=6)


@pytest.fixture(scope="module")
def fov110(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("c") / "fov110", episodes=3, frames_per_episode=6, seed=1)
    return _set_camera(data, width=640, height=480, fov=110.0)


@pytest.mark.unit
def test_training_refuses_datasets_with_different_cameras(fov90, fov110, tmp_path, capsys):
    line = _last_error_line(capsys, ["--data", str(fov90), str(fov110), "--epochs", "1", "--out", str(tmp_path / "r"),
                                     *FAST])
    assert line.startswith("carla-train: error: datasets differ in their camera/label contract: ")
    assert "camera.fov 110.0" in line and "vs 90.0" in line and "camera.width 640" in line
    assert not (tmp_path / "r" / "weights" / "best.pt").exists()


@pytest.mark.unit
def test_training_on_a_dataset_without_a_usable_camera_record_is_one_line(tmp_path, capsys):
    data = _set_camera(make_dataset(tmp_path / "nofov", episodes=2, frames_per_episode=4), fov=None)
    line = _last_error_line(capsys, ["--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r"), *FAST])
    assert line.startswith("carla-train: error: unreadable camera/label record in a dataset.json of ") and "numbers" in line


@pytest.mark.unit
def test_route_dependent_frames_are_skipped_and_counted(fov90, tmp_path):
    import csv
    data = make_dataset(tmp_path / "flagged", episodes=3, frames_per_episode=6)
    with open(data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["route_dependent"] = "1" if r["episode"].endswith("e01") and r["frame"] in ("0", "1") else "0"
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from training.ddp import DistInfo
    prepared = T.prepare_data((str(data),), 32, None, DistInfo(), progress=False)
    assert prepared.route_dependent_skipped == 6 and len(prepared.table) == len(rows) - 6
    assert not prepared.table.route_dependent.any()


@pytest.mark.slow
def test_trained_checkpoint_stores_the_datasets_contract(fov110, tmp_path):
    out = tmp_path / "run"
    T.main(["--data", str(fov110), "--val-towns", "Town03", "--epochs", "1", "--out", str(out), *FAST])
    ckpt = torch.load(out / "weights" / "best.pt", weights_only=True)
    contract = Contract.from_json(ckpt["config"]["contract"])
    assert contract.camera.res == (640, 480) and contract.camera.fov == 110.0
    assert contract.label.lookahead_m == 20.0       # what the synthetic dataset.json records
    assert json.loads((out / "metrics.json").read_text())["contract"] == ckpt["config"]["contract"]
    assert read_contract(out / "weights" / "last.pt") == contract


# --- evaluation -------------------------------------------------------------------------------

@pytest.mark.unit
def test_evaluate_reports_a_dataset_of_another_camera(fov90, tmp_path, caplog):
    from training.evaluate import main as evaluate_main
    ckpt = _checkpoint(tmp_path / "wide.pt", WIDE)
    with caplog.at_level("WARNING", logger="training.evaluate"):
        evaluate_main(["--checkpoint", str(ckpt), "--data", str(fov90), "--out", str(tmp_path / "ev"),
                       "--workers", "0", "--no-progress"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "training.evaluate"]
    assert len(warnings) == 1
    assert "another camera/label contract" in warnings[0] and "camera.fov 110.0 (model) vs 90.0 (data)" in warnings[0]
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["contract"]["model"] == WIDE.to_json()
    assert "camera.width 640 (model) vs 96 (data)" in m["contract"]["differences"][str(fov90)]
    assert m["eval"]["frames"] == 54


@pytest.mark.unit
def test_evaluate_ignores_what_a_hand_labelled_dataset_leaves_unknown():
    """Real CARLA frames (/work/shared/real_carla) record no fov or mount: only their 640x380 differs."""
    from training.evaluate import contract_differences
    info = {"camera": {"width": 640, "height": 380, "fov": None, "mount": None, "image_format": "jpg"},
            "label": {"lookahead_m": 40.0, "curve_deg": 25.0, "straight_deg": 4.0, "junction_policy": "skip",
                      "source": "by eye"}}
    assert contract_differences(WIDE, info) == ["camera.height 480 (model) vs 380 (data)"]
    info["label"]["junction_policy"] = "keep"    # flag vs skip: both keep route-dependent frames out; keep does not
    assert contract_differences(WIDE, info)[-1] == "label.junction_policy 'flag' (model) vs 'keep' (data)"
    assert contract_differences(WIDE, {}) == []


# --- end to end on the embedded simulator ------------------------------------------------------

def _collect(out: Path, *args: str) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "carla_client.collect", "--sim", "embedded", "--res", "640x480",
           "--episode-length", "150", "--out", str(out), "--no-progress", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.sim
@pytest.mark.timeout(420)
def test_collect_fov110_train_export_classifier_reports_the_camera(tmp_path, capsys):
    wide = _collect(tmp_path / "wide", "--town", "Town01,Town02", "--frames", "40", "--fov", "110")
    narrow = _collect(tmp_path / "narrow", "--town", "Town01", "--frames", "4", "--fov", "90")

    line = _last_error_line(capsys, ["--data", str(wide), str(narrow), "--epochs", "1",
                                     "--out", str(tmp_path / "mixed"), *FAST])
    assert re.search(r"camera\.fov 90\.0 \(\S*narrow\) vs 110\.0 \(\S*wide\)", line), line
    assert "camera.width" not in line and "camera.height" not in line

    run = tmp_path / "run"
    T.main(["--data", str(wide), "--val-towns", "Town01", "--epochs", "1", "--out", str(run), *FAST])
    capsys.readouterr()
    from perception.export import main as export_main
    onnx_path = tmp_path / "wide.onnx"
    assert export_main(["--checkpoint", str(run / "weights" / "best.pt"), "--out", str(onnx_path),
                        "--parity-frames", "0"]) == 0
    assert "camera 640x480 fov 110" in capsys.readouterr().out

    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    camera = json.loads(props["camera"])
    assert (camera["width"], camera["height"], camera["fov"]) == (640, 480, 110.0)
    assert json.loads(props["label"])["lookahead_m"] == 25.0
    clf = CurveClassifier.load(onnx_path, backend="onnxruntime", warmup=0)
    assert clf.camera.res == (640, 480) and clf.camera.fov == 110.0
    assert clf.contract == read_contract(onnx_path) == read_contract(run / "weights" / "best.pt")
    assert clf.label_params.lookahead_m == 25.0
