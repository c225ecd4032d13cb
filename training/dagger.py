"""DAgger for the driving policies (Ross et al., 2011), as the origin of this study used it.

Behaviour cloning only sees the states the privileged route follower visits; a learned policy drifts
into states it never saw and cannot recover from them. Each round here:

1. drives the current policy (its steer; throttle/brake from the follower) in the training towns with
   :func:`carla_client.collector.collect` and a :class:`PolicyDriver`, while the route follower labels
   every saved frame with what it would do from that state (the follower takes the wheel beyond
   ``carla_client.collector.TAKEOVER_M`` from the lane centre, so the drive goes on);
2. aggregates those frames (flagged ``recovery``) with all earlier data;
3. retrains, warm-started from the previous weights.

Round datasets go to ``<out>/dagger/r<k>``; ``<out>/dagger.json`` has per round the frames added, how
often the follower had to take over (per simulated minute: the policy's own progress) and the validation
steer error. The final weights are ``<out>/weights/best.pt`` as without DAgger.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from carla_client.collector import CollectConfig, collect
from datasets.dataset import load_contract
from datasets.preprocess import to_rgb_resized_hw
from datasets.schema import INFO_NAME
from training.policy import SPEED_SCALE_KMH, command_index, load_policy_checkpoint, one_hot, to_input

log = logging.getLogger(__name__)


class PolicyDriver:
    """A trained policy checkpoint as the collector's learned driver: (BGRA frame, km/h, command) -> steer."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.path = Path(checkpoint)
        self.model, self.config = load_policy_checkpoint(self.path)
        self.hw = tuple(self.config["input_hw"])
        self.mean, self.std = self.config["mean"], self.config["std"]
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    @torch.no_grad()
    def __call__(self, bgra: np.ndarray, speed_kmh: float, command: str) -> float:
        x = to_input(to_rgb_resized_hw(bgra, self.hw, "BGRA")[None], self.mean, self.std)
        speed = torch.tensor([[speed_kmh / SPEED_SCALE_KMH]], dtype=torch.float32)
        cmd = one_hot(torch.tensor([command_index(command)]))
        return float(self.model(x, speed, cmd)[0, 0])

    def describe(self) -> dict:
        return {"policy": str(self.path), "sha256": self.sha256, "arch": self.config["arch"],
                "subset": self.config["subset"], "controls": "steer from the policy, throttle/brake from the follower"}


def _collection_settings(data_dirs) -> dict:
    """Weather, spacing, step and episode length of the first dataset's first run (the DAgger data matches it)."""
    info = json.loads((Path(data_dirs[0]) / INFO_NAME).read_text(encoding="utf-8"))
    run = (info.get("runs") or [{}])[0].get("config", {})
    keys = ("weather", "min_spacing", "delta_seconds", "episode_length")
    return {k: (tuple(run[k]) if isinstance(run[k], list) else run[k]) for k in keys if k in run}


def training_towns(cfg) -> tuple[str, ...]:
    """The towns of ``cfg.data`` that are not held out (``--val-towns``/``--test-towns``), sorted."""
    from training.policy import load_policy_table
    towns = set(load_policy_table(cfg.data).table.town.tolist()) - set(cfg.val_towns) - set(cfg.test_towns)
    return tuple(sorted(towns))


def run_dagger(cfg, first, train=None):
    """``cfg.dagger`` rounds after the first training (``first``: its PolicyTrainResult); returns the last result.

    ``train(cfg, init)`` trains one round (default :func:`training.train_policy.train_policy`).
    """
    from training.train_policy import train_policy
    train = train or train_policy
    out = Path(cfg.out)
    contract = load_contract(cfg.data)
    if contract is None:
        raise ValueError(f"--dagger needs datasets with a camera/label contract (dataset.json); {cfg.data[0]} has none")
    towns = cfg.dagger_towns or training_towns(cfg)
    if not towns:
        raise ValueError("--dagger: no training town left to drive in; give --dagger-towns")
    settings = _collection_settings(cfg.data)
    data, result, rounds = list(cfg.data), first, []
    for k in range(1, cfg.dagger + 1):
        best = out / "weights" / "best.pt"
        round_dir = out / "dagger" / f"r{k}"
        ccfg = CollectConfig(out=round_dir, towns=towns, frames=cfg.dagger_frames, sim=cfg.dagger_sim, host=cfg.host,
                             port=cfg.port, res=contract.camera.res, fov=contract.camera.fov,
                             label=contract.label, recovery=0.0,
                             seed=cfg.seed + 1000 * k, progress=False, **settings)
        log.info("DAgger round %d/%d: driving %s with %s in %s", k, cfg.dagger, best, ", ".join(towns), round_dir)
        collected = collect(ccfg, driver=PolicyDriver(best))
        minutes = collected.ticks * ccfg.delta_seconds / 60.0
        data.append(str(round_dir))
        result = train(replace(cfg, data=tuple(data)), init=best)
        rounds.append({"round": k, "data": str(round_dir), "frames_added": sum(collected.added.values()),
                       "takeovers": collected.takeovers, "simulated_minutes": round(minutes, 2),
                       "takeovers_per_minute": round(collected.takeovers / minutes, 3) if minutes else None,
                       "val_steer_mae": result.metrics.get("val", {}).get("mae", {}).get("steer")})
        log.info("DAgger round %d: %d frames, %d takeovers in %.1f simulated min, val steer MAE %.4f", k,
                 rounds[-1]["frames_added"], collected.takeovers, minutes, rounds[-1]["val_steer_mae"] or float("nan"))
        (out / "dagger.json").write_text(json.dumps({"towns": list(towns), "rounds": rounds}, indent=2))
    return result
