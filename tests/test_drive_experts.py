"""launch.drive with learned camera experts (--experts) in place of the route followers."""
import pytest
import torch

from launch.loop import DriveConfig, parse_experts, run_drive
from tests.policy_data import make_tiny_policy


def _steering_policy(path, steer_bias: float, camera=(160, 120)):
    """A tiny policy that steers tanh(steer_bias) whatever it sees (its camera is ``camera``)."""
    p = make_tiny_policy(path, camera=camera)
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    for k in [k for k in ckpt["state_dict"] if k.startswith("branches.") and k.endswith(".2.bias")]:
        ckpt["state_dict"][k][0] = steer_bias
        ckpt["state_dict"].update({k.replace(".bias", ".weight"): ckpt["state_dict"][k.replace(".bias", ".weight")] * 0})
    torch.save(ckpt, p)
    return p


def test_drive_steers_with_the_learned_policy_and_its_camera(tmp_path):
    mono = _steering_policy(tmp_path / "m.pt", 0.5)
    cfg = DriveConfig(town="Town02", gate="oracle", frames=40, display=False, seed=1,
                      experts=(("monolithic", str(mono)),))
    result = run_drive(cfg)
    steers = [r.steer for r in result.records[5:]]
    assert steers and all(s == pytest.approx(0.4621, abs=1e-3) for s in steers)  # tanh(0.5): the policy drove
    assert result.metrics["camera"]["width"] == 160                           # the policy's camera
    followers = run_drive(DriveConfig(town="Town02", gate="oracle", frames=40, display=False, seed=1))
    assert max(abs(r.steer - 0.4621) for r in followers.records[5:]) > 0.2  # the route followers drive otherwise


def test_experts_flag_names_and_files_are_checked(tmp_path):
    p = make_tiny_policy(tmp_path / "c.pt")
    assert parse_experts(f"curve={p},straight={p}") == (("curve", str(p)), ("straight", str(p)))
    with pytest.raises(ValueError, match="curve=PATH,straight=PATH or monolithic=PATH"):
        parse_experts(f"curve={p}")
    with pytest.raises(ValueError, match="no such file"):
        parse_experts("monolithic=/nope.pt")
    other = _steering_policy(tmp_path / "o.pt", 0.0, camera=(200, 150))
    with pytest.raises(ValueError, match="another camera"):
        run_drive(DriveConfig(town="Town02", gate="oracle", frames=2, display=False,
                              experts=(("curve", str(p)), ("straight", str(other)))))
