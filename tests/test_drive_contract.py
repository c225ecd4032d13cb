"""launch.drive takes its camera and label definition from the model (issue 10's acceptance, drive part)."""
import json

import pytest
import torch

from datasets.schema import CameraSpec, Contract, LabelParams, Mount
from launch.loop import DriveConfig, resolve_contract

pytestmark = pytest.mark.sim

WIDE = Contract(CameraSpec(640, 480, 110.0, Mount(x=1.2, z=1.6, pitch=-5.0)), LabelParams(lookahead_m=40.0))


@pytest.fixture(scope="module")
def wide_onnx(tmp_path_factory):
    """An untrained simple_cnn exported with a 640x480 / 110 deg / 40 m contract in its metadata."""
    from perception.export import export_onnx
    from perception.meta import ModelMeta
    from training.models import create_model

    d = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=2, dropout=0.0, weights="none").eval()
    meta = ModelMeta(arch="simple_cnn", img_size=32, contract=WIDE)
    export_onnx(model, meta, d / "wide.onnx")
    return d / "wide.onnx"


def test_the_model_camera_is_used_unless_overridden():
    cfg = DriveConfig(sim="embedded", gate="oracle", display=False)
    assert resolve_contract(cfg, WIDE) == (WIDE, [])
    assert resolve_contract(cfg, None)[0] == Contract()                          # no model: CARLA's hood camera
    with pytest.raises(ValueError) as e:
        resolve_contract(DriveConfig(sim="embedded", gate="oracle", fov=90.0), WIDE)
    assert "fov 110" in str(e.value) and "fov 90" in str(e.value) and "--camera-override" in str(e.value)
    used, overridden = resolve_contract(DriveConfig(sim="embedded", gate="oracle", fov=90.0, camera_override=True), WIDE)
    assert used.camera.fov == 90.0 and used.label == WIDE.label and overridden == ["camera.fov"]


def test_drive_cli_drives_with_the_model_camera_and_refuses_another_in_one_line(wide_onnx, tmp_path, capsys):
    from launch.drive import main

    metrics = tmp_path / "d.json"
    assert main(["--sim", "embedded", "--model", str(wide_onnx), "--gate", "hard", "--frames", "5", "--no-display",
                 "--metrics", str(metrics), "--warmup", "1"]) == 0
    m = json.loads(metrics.read_text())
    assert (m["camera"]["width"], m["camera"]["height"], m["camera"]["fov"]) == (640, 480, 110.0)
    assert m["label"]["lookahead_m"] == 40.0 and m["camera_override"] == []
    with pytest.raises(SystemExit) as e:
        main(["--sim", "embedded", "--model", str(wide_onnx), "--gate", "hard", "--frames", "5", "--no-display",
              "--fov", "90", "--warmup", "1"])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "fov 110" in err[-1] and "fov 90" in err[-1] and "--camera-override" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert main(["--sim", "embedded", "--model", str(wide_onnx), "--gate", "hard", "--frames", "5", "--no-display",
                 "--fov", "90", "--camera-override", "--metrics", str(metrics), "--warmup", "1"]) == 0
    assert json.loads(metrics.read_text())["camera_override"] == ["camera.fov"]
