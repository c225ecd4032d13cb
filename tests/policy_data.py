"""A tiny synthetic driving dataset (format 2: speed, controls, command, recovery, route_dependent).

Frames come from :func:`tests.synthetic_data.draw_road`; a bend to the left (negative ``bend``) is
driven with negative steer and the ``LEFT`` command, as CARLA's convention has it, so a policy can
learn something from 100 frames.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from datasets.schema import INFO_NAME, MANIFEST_COLUMNS, MANIFEST_NAME
from tests.synthetic_data import WEATHERS, draw_road


def make_policy_dataset(root, towns=("Town01", "Town02"), episodes: int = 3, frames_per_episode: int = 12,
                        size=(96, 72), seed: int = 0) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for ti, town in enumerate(towns):
        for e in range(episodes):
            episode = f"{town}-e{e:02d}"
            weather = WEATHERS[e % len(WEATHERS)]
            for f in range(frames_per_episode):
                label = "curve" if (f // 3 + e) % 2 == 0 else "straight"
                bend = float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.0))
                img = draw_road(label, bend, ti, 1.0 if weather == "ClearNoon" else 0.7, rng, size)
                rel = f"images/{label}/{episode}_{f:04d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), img)
                steer = 0.5 * bend if label == "curve" else 0.0
                command = ("LEFT" if bend < 0 else "RIGHT") if label == "curve" and f % 2 else "LANEFOLLOW"
                rows.append({"image": rel, "label": label, "town": town, "sim": "embedded", "weather": weather,
                             "episode": episode, "frame": f, "timestamp": f * 0.05, "x": 0.0, "y": 0.0, "z": 0.0,
                             "yaw": 0.0, "speed": 20.0 if label == "curve" else 35.0, "steer": f"{steer:.4f}",
                             "throttle": 0.3 if label == "curve" else 0.6, "brake": 0.0,
                             "heading_change_deg": 40.0 if label == "curve" else 1.0,
                             "max_curvature": 0.05 if label == "curve" else 0.001, "lookahead_m": 25.0,
                             "command": command, "recovery": "1" if f % 5 == 4 else "0",
                             "route_dependent": "1" if f % 7 == 6 else "0"})
    with open(root / MANIFEST_NAME, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    (root / INFO_NAME).write_text(json.dumps({
        "camera": {"width": size[0], "height": size[1], "fov": 90.0},
        "label": {"lookahead_m": 25.0, "curve_deg": 20.0, "straight_deg": 5.0, "junction_policy": "flag"},
        "sim": "embedded", "towns": list(towns), "synthetic": True}))
    return root


def make_tiny_policy(path, seed: int = 0, camera=(160, 120), arch: str = "pilotnet", input_hw=(66, 200)) -> Path:
    """An untrained policy checkpoint in the real format (contract with ``camera`` WxH), for plumbing tests.
    The throttle bias is raised so the car moves."""
    import torch

    from training.checkpoint import save_checkpoint
    from training.policy import create_policy
    from training.train_policy import PolicyTrainConfig, _config
    from datasets.schema import CameraSpec, Contract

    torch.manual_seed(seed)
    model = create_policy(arch, "none", hidden=16)
    with torch.no_grad():
        for b in model.branches:
            b[-1].bias.copy_(torch.tensor([0.0, 1.0, -4.0]))
    cfg = PolicyTrainConfig(arch=arch, input_hw=input_hw, hidden=16)
    config = _config(cfg, Contract(CameraSpec(width=camera[0], height=camera[1])))
    save_checkpoint(path, model, config, 0, {})
    return Path(path)


def make_tiny_classifier(path, seed: int = 0) -> Path:
    """An untrained simple_cnn classifier checkpoint (.pt) at 64 px."""
    import torch

    from training.models import create_model

    torch.manual_seed(seed)
    model = create_model("simple_cnn", num_classes=2, dropout=0.0, weights="none").eval()
    config = {"arch": "simple_cnn", "num_classes": 2, "classes": ["curve", "straight"], "img_size": 64,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "color_order": "RGB",
              "dropout": 0.0, "recipe": {}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": config}, path)
    return Path(path)
