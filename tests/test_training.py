"""training/: the train CLI end to end, checkpoint format, evaluate CLI, two-stage freezing, errors."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from datasets.schema import CLASSES
from tests.synthetic_data import FAST, make_dataset
from training import train as T
from training.checkpoint import load_checkpoint
from training.evaluate import main as evaluate_main
from training.models import create_model, get_spec

CONFIG_KEYS = {"arch", "num_classes", "classes", "img_size", "crop_rows", "mean", "std", "color_order", "dropout", "recipe",
               "contract", "temperature", "tta"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("d") / "ds", episodes=4, frames_per_episode=8)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "run"
    T.main(["--data", str(data), "--val-towns", "Town03", "--test-towns", "Town02", "--epochs", "2", "--out", str(out),
            *FAST])
    return out


def test_run_directory_has_every_artifact(run):
    for name in ("weights/best.pt", "weights/last.pt", "metrics.json", "history.csv", "curves.png",
                 "confusion_matrix.png", "predictions.png", "split.json", "args.yaml"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert any((run / "tb").glob("events.out.tfevents.*"))
    with open(run / "history.csv") as f:
        hist = list(csv.DictReader(f))
    assert [int(h["epoch"]) for h in hist] == [1, 2] and all(float(h["images_per_s"]) > 0 for h in hist)


def test_metrics_cover_val_and_test_splits(run):
    m = json.loads((run / "metrics.json").read_text())
    split = json.loads((run / "split.json").read_text())
    for name, town in (("val", "Town03"), ("test", "Town02")):
        s = m[name]
        assert s["frames"] == split[name]["frames"] == np.sum(s["confusion_matrix"])
        assert set(s["per_class"]) == set(CLASSES) and {"precision", "recall", "f1"} <= set(s["per_class"]["curve"])
        assert 0 <= s["accuracy"] <= 1 and 0 <= s["roc_auc"] <= 1 and 0 <= s["macro_f1"] <= 1
        assert list(s["accuracy_per_town"]) == [town]
        assert s["accuracy_per_town"][town]["accuracy"] == pytest.approx(s["accuracy"])
        assert set(s["accuracy_per_weather"]) == {"ClearNoon", "WetNoon"}
    assert m["data"]["train_frames"] == split["train"]["frames"] and split["train"]["towns"] == ["Town01"]


def test_checkpoint_format_and_load_checkpoint(run, data):
    ckpt = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert set(ckpt) >= {"state_dict", "config", "epoch", "metrics"}
    cfg = ckpt["config"]
    assert set(cfg) == CONFIG_KEYS
    assert cfg["classes"] == ["curve", "straight"] and cfg["num_classes"] == 2 and cfg["color_order"] == "RGB"
    assert cfg["img_size"] == 32 and len(cfg["mean"]) == len(cfg["std"]) == 3
    assert cfg["recipe"]["val_towns"] == ["Town03"] and cfg["recipe"]["epochs"] == 2
    model, cfg2 = load_checkpoint(run / "weights" / "best.pt")
    assert not model.training and cfg2 == cfg
    # the restored best model reproduces the reported validation accuracy through the inference preprocessing
    from datasets.dataset import load_frames
    from datasets.preprocess import preprocess
    import cv2
    table = load_frames([data])
    val = table.town == "Town03"
    x = np.concatenate([preprocess(cv2.imread(str(data / p)), 32, "BGR", cfg["mean"], cfg["std"])
                        for p in table.image[val]])
    with torch.no_grad():
        acc = (model(torch.from_numpy(x)).argmax(1).numpy() == table.label[val]).mean()
    assert acc == pytest.approx(json.loads((run / "metrics.json").read_text())["val"]["accuracy"])


def _start_cv2_pool():
    """Use OpenCV's thread pool in this process, as resizing 800x600 frames does: forked workers must survive it."""
    import cv2
    cv2.GaussianBlur(cv2.warpAffine(np.zeros((600, 800, 3), np.uint8), np.eye(2, 3), (800, 600)), (5, 5), 0)


@pytest.mark.timeout(60)
def test_evaluate_cli_writes_same_metrics(run, data, tmp_path, capsys):
    _start_cv2_pool()
    evaluate_main(["--checkpoint", str(run / "weights" / "best.pt"), "--data", str(data), "--out", str(tmp_path),
                   "--workers", "2", "--no-progress"])
    m = json.loads((tmp_path / "metrics.json").read_text())["eval"]
    trained = json.loads((run / "metrics.json").read_text())
    for town, split in (("Town03", "val"), ("Town02", "test")):
        assert m["accuracy_per_town"][town]["accuracy"] == pytest.approx(trained[split]["accuracy"])
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "predictions.png").is_file()
    assert "accuracy" in capsys.readouterr().out
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["frames"]
    groups = json.loads((tmp_path / "robustness.json").read_text())["groups"]
    assert set(groups) == {"weather", "town", "camera"}                   # no routes stored: no road-ahead group
    assert all(r["road_ahead_deg"] == "" for r in rows)
    assert np.mean([int(r["correct"]) for r in rows]) == pytest.approx(m["accuracy"])
    correct = [int(r["correct"]) for r in rows]
    assert correct == sorted(correct)                                  # the mistakes first
    for r in rows:
        assert (float(r["p_curve"]) >= 0.5) == (r["pred"] == "curve") and r["weather"] and r["town"]


@pytest.mark.timeout(60)
def test_resume_continues_from_last(run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    data = json.loads((run / "split.json").read_text())["data"]
    _start_cv2_pool()
    T.main(["--data", *data, "--resume", str(out / "weights" / "last.pt"), "--epochs", "3", "--workers", "2",
            "--no-progress"])
    with open(out / "history.csv") as f:
        assert [int(h["epoch"]) for h in csv.DictReader(f)] == [1, 2, 3]
    assert torch.load(out / "weights" / "last.pt", weights_only=True)["epoch"] == 3
    assert json.loads((out / "split.json").read_text()) == json.loads((run / "split.json").read_text())


# ------------------------------------------------------------------ two-stage fine-tuning

@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_lite0", "simple_cnn"])
def test_two_stage_freezing_and_bn_policy(arch):
    cfg = T.TrainConfig(arch=arch, weights="imagenet", freeze_epochs=2, unfreeze_blocks=2, epochs=5)
    model = create_model(arch, weights="none")
    spec = get_spec(arch)
    head = set(map(id, spec.head_module(model).parameters()))
    last = set(map(id, (p for b in spec.blocks(model)[-2:] for p in b.parameters())))
    assert [T.stage_of(e, cfg) for e in range(5)] == [1, 1, 2, 2, 2]

    trainable = set(map(id, T.set_trainable(model, arch, 1, cfg)))
    assert trainable == head
    T.set_train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)  # frozen BN keeps its running statistics
    assert model.training

    trainable = set(map(id, T.set_trainable(model, arch, 2, cfg)))
    assert trainable == head | last
    T.set_train_mode(model)
    for block in spec.blocks(model)[-2:]:
        assert all(m.training for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert not any(m.training for m in spec.blocks(model)[0].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    scratch = T.TrainConfig(arch=arch, weights="none", freeze_epochs=2)
    assert T.stage_of(0, scratch) == 2
    assert len(T.set_trainable(model, arch, 2, scratch)) == len(list(model.parameters()))


def test_early_stopping_counts_only_in_last_stage():
    es = T.EarlyStopping(patience=2)
    assert es.step(1, 1.0) and not es.step(2, 1.1, counts=False) and not es.should_stop
    assert not es.step(3, 1.2) and not es.should_stop
    assert not es.step(4, 1.0) and es.should_stop and es.best_epoch == 1
    assert not T.EarlyStopping(patience=0, bad_epochs=9).should_stop


def test_cosine_schedule_restarts_per_stage():
    cfg = T.TrainConfig(weights="imagenet", lr=1.0, lr_schedule="cosine", freeze_epochs=2, epochs=6)
    lrs = [T.lr_at(e, cfg) for e in range(6)]
    assert lrs[0] == lrs[2] == 1.0 and lrs[1] < 1.0 and lrs[5] < lrs[3] < 1.0
    assert T.lr_at(3, T.TrainConfig(lr=0.1)) == 0.1


# ------------------------------------------------------------------ errors

def test_nan_loss_stops_with_message():
    class NaNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.w * torch.full((len(x), 2), float("nan"))

    model = NaNNet()
    loader = [(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), torch.arange(4))] * 3
    with pytest.raises(T.NonFiniteLossError, match="loss became nan in epoch 1 .* lower --lr"):
        T.train_one_epoch(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1), loader,
                          1, T.Runtime(progress=False))


def test_sample_weights_make_the_loss_a_weighted_mean():
    """--horizon-weight's loss: frames weighted as given, the plain mean when every weight is 1."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    loader = [(x, y, torch.arange(6))]
    frozen = torch.optim.SGD(model.parameters(), 0.0)
    per = nn.functional.cross_entropy(model(x), y, reduction="none").detach()
    rt = T.Runtime(progress=False)
    plain = T.train_one_epoch(model, nn.CrossEntropyLoss(), frozen, loader, 1, rt)["loss"]
    ones = T.train_one_epoch(model, nn.CrossEntropyLoss(), frozen, loader, 1, rt, sample_weight=torch.ones(6))["loss"]
    w = torch.tensor([1.0, 1.0, 3.0, 1.0, 3.0, 1.0])
    weighted = T.train_one_epoch(model, nn.CrossEntropyLoss(), frozen, loader, 1, rt, sample_weight=w)["loss"]
    assert plain == pytest.approx(float(per.mean()), rel=1e-6) and ones == pytest.approx(plain, rel=1e-6)
    assert weighted == pytest.approx(float((per * w).sum() / w.sum()), rel=1e-6)
    assert weighted != pytest.approx(plain, rel=1e-3)


def test_horizon_weight_on_data_without_routes_warns_and_weighs_nothing(data, caplog):
    from datasets.dataset import load_frames
    from training.horizon import horizon_weights

    table = load_frames([data])
    with caplog.at_level("WARNING", logger="training.horizon"):
        w = horizon_weights(table, 3.0)
    assert (w == 1.0).all() and "--horizon-weight 3 has no effect" in caplog.text


def _one_line_error(capsys, argv, code=2):
    with pytest.raises(SystemExit) as e:
        T.main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_cli_bad_inputs_are_one_line_errors(data, tmp_path, capsys):
    base = ["--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r"), *FAST]
    err = _one_line_error(capsys, [*base, "--val-towns", "Town7"])
    assert "unknown town(s) Town7; towns in the data: Town01, Town02, Town03" in err
    assert "needs a CUDA device" in _one_line_error(capsys, [*base, "--amp", "--device", "cpu"])
    assert "--dropout 1.5" in _one_line_error(capsys, [*base, "--dropout", "1.5"])
    assert "--horizon-weight 0.0: must be > 0" in _one_line_error(capsys, [*base, "--horizon-weight", "0"])
    assert "no such directory" in _one_line_error(capsys, ["--data", str(tmp_path / "nope"), *FAST])
    one = shutil.copytree(data, tmp_path / "one", ignore=shutil.ignore_patterns("cache"))
    with open(one / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] == "curve"]
    with open(one / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert "one class only" in _one_line_error(capsys, ["--data", str(one), "--out", str(tmp_path / "r1"), *FAST])
    assert "--weights 'missing.pt': no such file" in _one_line_error(
        capsys, [*base[:-len(FAST)], *FAST[:2], "--weights", "missing.pt", *FAST[4:]])


def test_bench_reports_images_per_second(capsys):
    from training.bench import main as bench_main
    bench_main(["--arch", "simple_cnn", "--img-size", "32", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                "--device", "cpu"])
    out = capsys.readouterr().out
    assert "train images/s" in out and float(out.split(": ")[1].split()[0]) > 0


@pytest.mark.timeout(60)
def test_loader_workers_get_distinct_augmentation_streams(data):
    """Albumentations ignores torch/numpy seeds: without per-worker seeding every worker would repeat
    the same augmentations. Feed one frame repeatedly through 2 workers and compare their batches."""
    from datasets.dataset import FrameDataset, build_cache, load_frames
    from datasets.presets import ClassificationPresetTrain
    from training.ddp import DistInfo
    _start_cv2_pool()
    table = load_frames([data])
    same = table.subset(np.zeros(16, dtype=np.int64))
    ds = FrameDataset(build_cache(table, 32, progress=False), same, ClassificationPresetTrain(img_size=32, seed=0))
    with T.fork_safe_cv2():
        loader = T.make_loader(ds, 4, 2, torch.device("cpu"), train=True, info=DistInfo(), seed=0)
        batches = [x for x, _, _ in loader]
    assert len(batches) == 4
    assert not torch.equal(batches[0], batches[1])  # worker 0 vs worker 1
    assert not torch.equal(batches[0], batches[2])  # worker 0, next batch


@pytest.mark.timeout(300)
def test_resumed_run_matches_an_uninterrupted_one(data, tmp_path):
    """--resume restores the sampler, augmentation and global RNG state: epoch 3 of a run stopped after
    epoch 2 and resumed equals epoch 3 of the run that never stopped (the sampler was reseeded before)."""
    def history(out):
        with open(out / "history.csv") as f:
            return [{k: float(v) for k, v in h.items()} for h in csv.DictReader(f)]

    args = ["--data", str(data), "--val-towns", "Town03", *FAST, "--seed", "5"]
    T.main([*args, "--epochs", "3", "--out", str(tmp_path / "straight")])
    T.main([*args, "--epochs", "2", "--out", str(tmp_path / "stopped")])
    T.main(["--data", str(data), "--resume", str(tmp_path / "stopped" / "weights" / "last.pt"), "--epochs", "3",
            "--workers", "0", "--no-progress"])
    full, resumed = history(tmp_path / "straight"), history(tmp_path / "stopped")
    assert len(full) == len(resumed) == 3
    assert resumed[2]["train_loss"] == pytest.approx(full[2]["train_loss"], rel=1e-5, abs=1e-6)
    assert resumed[2]["val_loss"] == pytest.approx(full[2]["val_loss"], rel=1e-5, abs=1e-6)
