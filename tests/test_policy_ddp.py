"""DDP for the driving policy: ``torchrun --nproc_per_node 2 -m training.train_policy`` on CPU with gloo.

The behavioural check: two ranks with batch B each must train the same model as one process with
batch 2B on the same frames (DDP averages the two shards' gradients; with flip, jitter and dropout off
nothing else differs). Ranks that overlapped, skipped frames, or summed instead of averaged would not.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from carla_client.route_command import COMMANDS
from tests.policy_data import make_policy_dataset
from training import ddp
from training.policy import load_policy_checkpoint
from training.train_policy import DAGGER_NEEDS_ONE_PROCESS, _batches

REPO = Path(__file__).resolve().parents[1]


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.unit
@pytest.mark.parametrize("n,world", [(36, 2), (37, 3), (5, 2)])
def test_rank_shards_are_disjoint_cover_the_epoch_and_take_equal_steps(n, world):
    shards = [list(_batches(n, 4, np.random.default_rng(7), ddp.DistInfo(r, world))) for r in range(world)]
    frames = [np.concatenate(s) for s in shards]
    assert len({len(s) for s in shards}) == 1, "every rank takes as many steps (DDP all-reduces each one)"
    seen = np.concatenate(frames)
    assert len(np.unique(seen)) == len(seen) == n - n % world, "disjoint; only the epoch's last n % world dropped"
    single = np.concatenate(list(_batches(n, 4, np.random.default_rng(7))))
    assert sorted(single) == list(range(n))                 # one process: every frame, as before DDP
    assert set(seen) <= set(single[:n - n % world])         # the same permutation, shared by the ranks


@pytest.mark.slow   # two torch processes start and train
def test_two_gloo_ranks_train_what_one_process_trains_with_their_combined_batch(tmp_path):
    data = make_policy_dataset(tmp_path / "ds")     # Town01 (36 frames) trains, Town02 (36) validates
    common = ["--data", str(data), "--val-towns", "Town02", "--epochs", "2", "--hflip-prob", "0", "--jitter", "0",
              "--dropout", "0", "--device", "cpu", "--seed", "3"]
    ddp_out, ref_out = tmp_path / "ddp", tmp_path / "ref"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train_policy", *common, "--batch-size", "8", "--out", str(ddp_out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP rank 0/2 (gloo)" in proc.stderr
    assert proc.stdout.count("val steer MAE") == 1, proc.stdout      # rank 0 prints, rank 1 does not

    from training.train_policy import main
    assert main([*common, "--batch-size", "16", "--out", str(ref_out), "--no-tensorboard"]) == 0

    hist, ref_hist = _history(ddp_out), _history(ref_out)
    assert [int(h["train_frames"]) for h in hist] == [36, 36], "18 + 18 frames a epoch: shards, not copies"
    assert [int(h["train_frames"]) for h in ref_hist] == [36, 36]
    for h, r in zip(hist, ref_hist):   # averaged over ranks, not summed; same steps as the 2B batch
        for k in ("train_loss", "val_loss", "val_mae_steer", "val_mae_throttle"):
            assert float(h[k]) == pytest.approx(float(r[k]), rel=1e-4, abs=1e-6), (k, h, r)
    m, ref_m = json.loads((ddp_out / "metrics.json").read_text()), json.loads((ref_out / "metrics.json").read_text())
    assert m["world_size"] == 2 and ref_m["world_size"] == 1
    assert m["val"]["frames"] == 36 == sum(c["frames"] for c in m["val"]["mae_per_command"].values())
    assert m["best_epoch"] == ref_m["best_epoch"]
    for o in ("steer", "throttle", "brake"):
        assert m["val"]["mae"][o] == pytest.approx(ref_m["val"]["mae"][o], rel=1e-4, abs=1e-6)

    model, cfg = load_policy_checkpoint(ddp_out / "weights" / "best.pt")   # rank 0 saved the unwrapped model
    ref_model, _ = load_policy_checkpoint(ref_out / "weights" / "best.pt")
    assert cfg["recipe"]["batch_size"] == 8
    rng = np.random.default_rng(0)
    x = (torch.from_numpy(rng.standard_normal((6, 3, 66, 200), dtype=np.float32)), torch.full((6, 1), 0.7),
         torch.eye(len(COMMANDS))[:6])
    with torch.no_grad():
        assert torch.allclose(model(*x), ref_model(*x), atol=1e-5)
    assert len(list((ddp_out / "tb").glob("events.out.tfevents.*"))) == 1, "TensorBoard events from rank 0 only"
    assert (ddp_out / "curves.png").is_file() and (ddp_out / "split.json").is_file()


@pytest.mark.unit
def test_dagger_under_torchrun_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from training.train_policy import main
    argv = ["--data", str(tmp_path / "none"), "--dagger", "1", "--out", str(tmp_path / "x")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {DAGGER_NEEDS_ONE_PROCESS}\n", "rank 0 says it once; rank 1 exits quietly"
    assert not (tmp_path / "x").exists()
