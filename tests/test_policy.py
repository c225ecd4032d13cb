"""Driving policies: data columns, flip augmentation, command branches, training CLI, ONNX parity."""
import json

import numpy as np
import pytest
import torch

from carla_client.route_command import COMMANDS, command_at, option_name
from training.policy import (FLIP_INDEX, create_policy, flip_batch, load_policy_checkpoint, load_policy_table,
                             select_subset)
from tests.policy_data import make_policy_dataset, make_tiny_policy


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_policy_dataset(tmp_path_factory.mktemp("pdata") / "d")


def test_policy_table_reads_controls_speed_command_and_flags(data):
    pt = load_policy_table([data])
    assert len(pt) == 2 * 3 * 12
    assert pt.controls.shape == (len(pt), 3) and pt.speed.dtype == np.float32
    names = {COMMANDS[i] for i in pt.command}
    assert names == {"LANEFOLLOW", "LEFT", "RIGHT"}
    assert pt.recovery.sum() == 2 * 3 * 2          # f % 5 == 4 -> frames 4 and 9 of each episode
    assert pt.table.route_dependent.sum() == 2 * 3  # f % 7 == 6
    left = pt.command == COMMANDS.index("LEFT")
    assert (pt.controls[left, 0] < 0).all()         # a left bend is steered left
    curve, straight = select_subset(pt, "curve"), select_subset(pt, "straight")
    assert len(curve) + len(straight) == len(pt) and len(curve) > 0 and len(straight) > 0
    assert select_subset(pt, "curve").table.route_dependent.any()  # junction frames stay for the experts
    with pytest.raises(ValueError, match="valid: all, curve, straight"):
        select_subset(pt, "junction")


def test_flip_mirrors_image_negates_steer_and_swaps_left_right():
    img = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    ctrl = torch.tensor([[0.3, 0.5, 0.0], [-0.2, 0.4, 0.1]])
    names = ["LEFT", "CHANGELANERIGHT"]
    cmd = torch.tensor([COMMANDS.index(n) for n in names])
    out_img, out_ctrl, out_cmd = flip_batch(img, ctrl, cmd, torch.tensor([True, False]))
    assert torch.equal(out_img[0], img[0].flip(-1)) and torch.equal(out_img[1], img[1])
    assert out_ctrl[0, 0].item() == pytest.approx(-0.3) and out_ctrl[1, 0].item() == pytest.approx(-0.2)
    assert torch.equal(out_ctrl[:, 1:], ctrl[:, 1:])       # throttle and brake untouched
    assert COMMANDS[out_cmd[0]] == "RIGHT" and COMMANDS[out_cmd[1]] == "CHANGELANERIGHT"
    all_cmd = torch.arange(len(COMMANDS))
    _, _, flipped = flip_batch(torch.zeros(len(COMMANDS), 3, 2, 2), torch.zeros(len(COMMANDS), 3), all_cmd,
                               torch.ones(len(COMMANDS), dtype=torch.bool))
    assert {COMMANDS[a]: COMMANDS[b] for a, b in zip(all_cmd, flipped)} == {
        "LANEFOLLOW": "LANEFOLLOW", "LEFT": "RIGHT", "RIGHT": "LEFT", "STRAIGHT": "STRAIGHT",
        "CHANGELANELEFT": "CHANGELANERIGHT", "CHANGELANERIGHT": "CHANGELANELEFT"}
    assert (FLIP_INDEX[FLIP_INDEX] == np.arange(len(COMMANDS))).all()  # flipping twice is the identity


def test_command_selects_the_branch():
    torch.manual_seed(0)
    model = create_policy("pilotnet", hidden=8).eval()
    with torch.no_grad():
        for k, b in enumerate(model.branches):
            b[-1].weight.zero_()
            b[-1].bias.copy_(torch.tensor([0.1 * (k + 1), 0.0, 0.0]))
    img, speed = torch.randn(len(COMMANDS), 3, 66, 200), torch.ones(len(COMMANDS), 1)
    out = model(img, speed, torch.eye(len(COMMANDS)))
    assert out.shape == (len(COMMANDS), 3)
    expected = torch.tanh(0.1 * torch.arange(1, len(COMMANDS) + 1, dtype=torch.float32))
    assert torch.allclose(out[:, 0], expected, atol=1e-6)
    assert ((out[:, 1:] >= 0) & (out[:, 1:] <= 1)).all() and (out[:, 0].abs() <= 1).all()


@pytest.mark.parametrize("arch,hw", [("pilotnet", (66, 200)), ("efficientnet_b0", (32, 64))])
def test_backbones_build_at_small_sizes(arch, hw):
    model = create_policy(arch, hidden=8).eval()
    out = model(torch.randn(2, 3, *hw), torch.zeros(2, 1), torch.eye(len(COMMANDS))[:2])
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_route_command_announces_the_junction_ahead():
    opts = ["LANEFOLLOW"] * 5 + ["LEFT"] * 3 + ["LANEFOLLOW"] * 2
    s = np.arange(len(opts)) * 2.0
    assert command_at(opts, s, 0, anticipation_m=4.0) == "LANEFOLLOW"
    assert command_at(opts, s, 3, anticipation_m=4.0) == "LEFT"     # junction 4 m ahead
    assert command_at(opts, s, 6) == "LEFT" and command_at(opts, s, 9) == "LANEFOLLOW"
    assert option_name(None) == "LANEFOLLOW" and option_name("void") == "LANEFOLLOW"


def test_train_policy_cli_writes_a_checkpoint_with_contract_and_commands(data, tmp_path, capsys):
    from training.train_policy import main
    out = tmp_path / "run"
    rc = main(["--data", str(data), "--subset", "curve", "--epochs", "2", "--batch-size", "16",
               "--out", str(out), "--no-tensorboard"])
    assert rc == 0, capsys.readouterr().err
    model, cfg = load_policy_checkpoint(out / "weights" / "best.pt")
    assert cfg["commands"] == list(COMMANDS) and cfg["subset"] == "curve"
    assert cfg["contract"]["camera"]["width"] == 96 and cfg["contract"]["label"]["junction_policy"] == "flag"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["val"]["mae"]) == {"steer", "throttle", "brake"}
    assert set(metrics["val"]["mae_per_command"]) <= set(COMMANDS) and metrics["val"]["mae_per_command"]
    assert (out / "curves.png").is_file() and (out / "history.csv").is_file()


def test_train_policy_bad_input_is_one_line(data, tmp_path, capsys):
    from training.train_policy import main
    assert main(["--data", str(data), "--input-hw", "66by200", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "66by200" in err
    with pytest.raises(ValueError, match="not a driving-policy checkpoint"):
        from tests.policy_data import make_tiny_classifier
        load_policy_checkpoint(make_tiny_classifier(tmp_path / "cls.pt"))


def test_expert_onnx_parity_with_torch(tmp_path):
    from perception.policy_runtime import PolicyRuntime, export_policy_onnx
    ckpts = {"curve": make_tiny_policy(tmp_path / "c.pt", seed=1), "straight": make_tiny_policy(tmp_path / "s.pt", seed=2)}
    onnx_path = export_policy_onnx(ckpts, tmp_path / "moe.onnx")
    ref, ort_rt = PolicyRuntime.load(ckpts, "torch"), PolicyRuntime.load(onnx_path, "onnxruntime")
    assert ort_rt.experts == ("curve", "straight")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 3, 66, 200)).astype(np.float32), rng.random((5, 1)).astype(np.float32),
         np.eye(len(COMMANDS), dtype=np.float32)[rng.integers(0, len(COMMANDS), 5)])
    a, b = ref.run(*x), ort_rt.run(*x)
    assert a.shape == (5, 2, 3)
    assert np.max(np.abs(a - b)) <= 1e-4
    assert not np.allclose(a[:, 0], a[:, 1])          # two different experts, one call
    frame = rng.integers(0, 256, (120, 160, 4), dtype=np.uint8)
    assert np.max(np.abs(ref.predict(frame, 25.0, "LEFT") - ort_rt.predict(frame, 25.0, "LEFT"))) <= 1e-4
    with pytest.raises(ValueError, match="valid: onnxruntime, torch, tensorrt"):
        PolicyRuntime.load(ckpts, "openvino")
