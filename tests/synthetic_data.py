"""A tiny synthetic dataset in the real on-disk format (manifest.csv + dataset.json + JPEGs).

Road-like pictures drawn with cv2: grey road under a sky, lane lines converging to a vanishing
point; ``straight`` frames have straight lines, ``curve`` frames bend them left or right. Each
town gets its own colours (so held-out-town accuracy means something) and each episode one
weather (brightness). Small enough for tests: 96x72 JPEGs, ~100-200 frames.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from datasets.schema import MANIFEST_COLUMNS, MANIFEST_NAME, INFO_NAME

WEATHERS = ("ClearNoon", "WetNoon")
FAST = ["--arch", "simple_cnn", "--weights", "none", "--img-size", "32", "--batch-size", "16", "--workers", "0",
        "--no-progress"]
"""``training.train`` flags for a seconds-long run on these datasets (tiny CNN, 32 px, no workers, no bars)."""
_TOWN_COLOURS = [((190, 150, 110), (90, 90, 90)), ((200, 170, 140), (70, 75, 80)), ((160, 130, 120), (100, 95, 90)),
                 ((180, 160, 100), (80, 80, 95)), ((210, 180, 150), (95, 85, 80))]


def draw_road(label: str, bend: float, town_idx: int, brightness: float, rng: np.random.Generator,
              size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """One BGR uint8 frame. ``bend`` in [-1, 1] sets the side and strength of a curve."""
    w, h = size
    sky, road = _TOWN_COLOURS[town_idx % len(_TOWN_COLOURS)]
    img = np.empty((h, w, 3), np.uint8)
    horizon = int(h * (0.42 + 0.04 * rng.standard_normal()))
    img[:horizon] = sky
    img[horizon:] = (60, 110, 60)  # grass
    v = np.arange(horizon, h, dtype=np.float32)
    depth = (v - horizon) / (h - horizon)          # 0 at horizon, 1 at the bottom
    offset = 0.0 if label == "straight" else bend * 0.6 * w * (1 - depth) ** 2
    centre = np.full_like(v, w / 2 + rng.normal(0, 1.5)) + offset
    half = 0.05 * w + 0.45 * w * depth
    left, right = centre - half, centre + half
    poly = np.concatenate([np.stack([left, v], 1), np.stack([right, v], 1)[::-1]]).astype(np.int32)
    cv2.fillPoly(img, [poly], road)
    for xs in (left + 0.1 * half, right - 0.1 * half, centre):
        pts = np.stack([xs, v], 1).astype(np.int32)
        cv2.polylines(img, [pts], False, (40, 200, 230) if xs is centre else (230, 230, 230), 1)
    img = np.clip(img.astype(np.float32) * brightness + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img


def make_dataset(root: str | Path, towns=("Town01", "Town02", "Town03"), episodes: int = 4,
                 frames_per_episode: int = 10, size: tuple[int, int] = (96, 72), seed: int = 0,
                 fmt: str = "jpg") -> Path:
    """Write a dataset directory; returns its path. Labels alternate within an episode (both classes per town)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for ti, town in enumerate(towns):
        for e in range(episodes):
            episode = f"{town}-e{e:02d}"
            weather = WEATHERS[e % len(WEATHERS)]
            brightness = 1.0 if weather == "ClearNoon" else 0.7
            for f in range(frames_per_episode):
                label = "curve" if (f // 3 + e) % 2 == 0 else "straight"
                bend = float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.0))
                img = draw_road(label, bend, ti, brightness, rng, size)
                rel = f"images/{label}/{episode}_{f:04d}.{fmt}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), img)
                rows.append({"image": rel, "label": label, "town": town, "sim": "embedded", "weather": weather,
                             "episode": episode, "frame": f, "timestamp": f * 0.05, "x": 0.0, "y": 0.0, "z": 0.0,
                             "yaw": 0.0, "speed": 30.0, "steer": 0.0, "throttle": 0.5, "brake": 0.0,
                             "heading_change_deg": 40.0 if label == "curve" else 1.0,
                             "max_curvature": 0.05 if label == "curve" else 0.001, "lookahead_m": 20.0})
    with open(root / MANIFEST_NAME, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    (root / INFO_NAME).write_text(json.dumps({
        "label": {"lookahead_m": 20.0, "curve_heading_deg": 15.0}, "camera": {"width": size[0], "height": size[1],
                                                                              "fov": 90.0},
        "sim": "embedded", "towns": list(towns), "synthetic": True}))
    return root


if __name__ == "__main__":  # python -m tests.synthetic_data OUT [frames_per_episode]
    import sys
    out = make_dataset(sys.argv[1], frames_per_episode=int(sys.argv[2]) if len(sys.argv) > 2 else 10,
                       episodes=int(sys.argv[3]) if len(sys.argv) > 3 else 4)
    print(out)


def tiny_checkpoint(path: str | Path, **config) -> Path:
    """A seeded ``simple_cnn`` checkpoint at 32 px (``config`` overrides keys, e.g. crop_rows or tta)."""
    import torch

    from datasets.schema import CLASSES
    from training.checkpoint import save_checkpoint
    from training.models import create_model

    torch.manual_seed(0)
    model = create_model("simple_cnn", weights="none")
    cfg = {"arch": "simple_cnn", "num_classes": 2, "classes": list(CLASSES), "img_size": 32, "mean": [0.5] * 3,
           "std": [0.25] * 3, "color_order": "RGB", "dropout": 0.3, "recipe": {}, **config}
    save_checkpoint(path, model, cfg, 1, {})
    return Path(path)


def break_config(path: str | Path, key: str, value) -> None:
    """Rewrite one key of a checkpoint's config in place (for the CheckpointError tests)."""
    import torch

    raw = torch.load(path, weights_only=True)
    raw["config"][key] = value
    torch.save(raw, path)
