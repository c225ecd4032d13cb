"""DAgger: a learned driver steers while the route follower labels; rounds aggregate and retrain."""
import csv
import json

import numpy as np
import pytest

from carla_client.collector import CollectConfig, collect
from datasets.schema import INFO_NAME, MANIFEST_NAME
from tests.policy_data import make_policy_dataset


class _Driver:
    """Steers ``steer`` whatever it sees; records what it was shown."""

    def __init__(self, steer: float):
        self.steer, self.calls = steer, []

    def __call__(self, bgra, speed_kmh, command):
        self.calls.append((bgra.shape, float(speed_kmh), command))
        return self.steer

    def describe(self):
        return {"policy": "constant", "steer": self.steer}


def _rows(out):
    with open(out / MANIFEST_NAME, newline="") as f:
        return list(csv.DictReader(f))


def _config(out, **kw):
    return CollectConfig(out=out, towns=("Town01",), frames=16, sim="embedded", res=(96, 72), min_spacing=2.0,
                         progress=False, seed=3, **kw)


def test_a_drifting_driver_is_relabelled_by_the_follower_and_rescued(tmp_path):
    driver = _Driver(0.6)  # a hard right turn everywhere: leaves the lane within a second
    result = collect(_config(tmp_path / "d"), driver=driver)
    rows = _rows(tmp_path / "d")
    assert sum(result.added.values()) == 16 and len(rows) >= 16
    assert result.takeovers >= 1                              # the follower had to take the wheel
    assert driver.calls and driver.calls[0][0] == (72, 96, 4)  # the driver sees the BGRA camera frame
    assert {c[2] for c in driver.calls} <= {"LANEFOLLOW", "LEFT", "RIGHT", "STRAIGHT"}
    driven = [r for r in rows if r["recovery"] == "1"]
    assert driven, "frames steered by the learned driver are flagged recovery"
    # labels are the follower's: it steers back (left, negative) while the driver pulls right
    assert all(float(r["steer"]) != pytest.approx(0.6) for r in rows)
    assert np.mean([float(r["steer"]) for r in driven]) < 0
    run = json.loads((tmp_path / "d" / INFO_NAME).read_text())["runs"][0]
    assert run["driver"]["policy"] == "constant" and run["driver"]["takeover_m"] > 0


def test_a_learned_driver_needs_one_worker(tmp_path):
    with pytest.raises(ValueError, match="--workers 2"):
        collect(_config(tmp_path / "d", workers=2), driver=_Driver(0.0))


def test_train_policy_dagger_round_aggregates_and_retrains(tmp_path, capsys):
    from training.policy import load_policy_checkpoint
    from training.train_policy import main
    data = make_policy_dataset(tmp_path / "data", size=(96, 72))
    out = tmp_path / "run"
    rc = main(["--data", str(data), "--epochs", "1", "--batch-size", "16", "--dagger", "1", "--dagger-frames", "12",
               "--dagger-towns", "Town01", "--out", str(out), "--no-tensorboard"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "dagger.json").read_text())
    (r1,) = report["rounds"]
    assert r1["frames_added"] == 12 and r1["takeovers"] >= 0 and r1["simulated_minutes"] > 0
    round_rows = _rows(out / "dagger" / "r1")
    assert len([r for r in round_rows if r["route_dependent"] != "1"]) == 12
    _, cfg = load_policy_checkpoint(out / "weights" / "best.pt")
    assert cfg["recipe"]["data"] == [str(data), str(out / "dagger" / "r1")]  # retrained on the aggregate
    driver = json.loads((out / "dagger" / "r1" / INFO_NAME).read_text())["runs"][0]["driver"]
    assert driver["arch"] == "pilotnet" and len(driver["sha256"]) == 64


def test_dagger_bad_input_is_one_line(tmp_path, capsys):
    from training.train_policy import main
    data = make_policy_dataset(tmp_path / "data", episodes=1, frames_per_episode=6)
    assert main(["--data", str(data), "--dagger", "1", "--dagger-frames", "7", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--dagger-frames 7" in err
