"""DDP: ``torchrun --nproc_per_node 2 -m training.train`` on CPU with gloo (tiny: simple_cnn, 32 px, 1 epoch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.synthetic_data import make_dataset

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_cpu_processes(tmp_path):
    data = make_dataset(tmp_path / "ds", episodes=3, frames_per_episode=6)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", "--data", str(data), "--val-towns", "Town03", "--arch", "simple_cnn",
           "--weights", "none", "--img-size", "32", "--batch-size", "8", "--epochs", "1", "--workers", "0",
           "--device", "cpu", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP rank 0/2 (gloo)" in proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    # every validation frame counted exactly once although two ranks evaluated shards of it
    assert m["val"]["frames"] == 18 == sum(map(sum, m["val"]["confusion_matrix"]))
    assert m["data"]["train_frames"] == 36
    ckpt = torch.load(out / "weights" / "best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # rank 0 saved the unwrapped model
    assert proc.stdout.count("weights:") == 1  # rank-0 printing only
    # losses are averaged over ranks, not summed (a 2-class loss near chance is ~0.69, never ~1.4)
    import csv
    with open(out / "history.csv") as f:
        row = next(csv.DictReader(f))
    assert 0.3 < float(row["train_loss"]) < 1.0 and abs(float(row["train_loss"]) - float(row["val_loss"])) < 0.3
