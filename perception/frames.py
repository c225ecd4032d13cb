"""Frames for parity checks and the bench: recorded ones from disk, or drawn road frames as a stand-in.

Frames look like a CARLA front camera (sky, grass, a grey road with lane markings running to the
horizon) and come as BGRA uint8 like ``carla.Image.raw_data``. A ``curve`` frame bends the road
left or right; a ``straight`` frame keeps it straight. Drawing is vectorised cv2 polygons.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from datasets.schema import MANIFEST_NAME

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

LABELS = ("curve", "straight")


def road_frame(label: str, rng: np.random.Generator, width: int = 800, height: int = 600) -> np.ndarray:
    """One H x W x 4 BGRA uint8 frame of ``label`` (``curve`` or ``straight``) with random colours and bend."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; valid: {', '.join(LABELS)}")
    horizon = int(height * rng.uniform(0.40, 0.50))
    img = np.empty((height, width, 3), np.uint8)
    img[:horizon] = rng.integers(150, 235, 3)                   # sky
    img[horizon:] = (rng.integers(30, 70), rng.integers(90, 140), rng.integers(30, 70))   # grass (BGR)
    t = np.linspace(0.0, 1.0, 48)                               # 0 = bottom of image, 1 = horizon
    v = height - 1 - t * (height - 1 - horizon)
    if label == "curve":
        bend = rng.choice([-1.0, 1.0]) * rng.uniform(0.45, 0.9) * width
        centre = width / 2 + rng.uniform(-0.05, 0.05) * width + bend * t ** 2
    else:
        centre = width / 2 + rng.uniform(-0.08, 0.08) * width + rng.uniform(-0.03, 0.03) * width * t
    half = (0.42 * width) * (1.0 - t) + 0.01 * width
    left = np.stack([centre - half, v], 1)
    right = np.stack([centre + half, v], 1)
    road = np.concatenate([left, right[::-1]]).astype(np.int32)
    grey = int(rng.integers(70, 120))
    cv2.fillPoly(img, [road], (grey, grey, grey))
    for frac in (-0.95, 0.95):                                   # edge lines
        line = np.stack([centre + frac * half, v], 1).astype(np.int32)
        cv2.polylines(img, [line], False, (230, 230, 230), thickness=max(2, width // 160))
    mid = np.stack([centre, v], 1).astype(np.int32)
    for a, b in zip(mid[:-1:4], mid[2::4]):                      # dashed centre line
        cv2.line(img, tuple(int(c) for c in a), tuple(int(c) for c in b), (40, 200, 230), max(1, width // 200))
    noise = np.empty(img.shape, np.int16)
    cv2.setRNGSeed(int(rng.integers(1 << 31)))
    cv2.randn(noise, (0, 0, 0), (6, 6, 6))                       # sensor noise, cheaper than numpy's
    img = cv2.add(img, noise, dtype=cv2.CV_8U)                   # saturating add
    return cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)


def road_frames(n: int, seed: int = 0, width: int = 800, height: int = 600) -> tuple[list[np.ndarray], list[str]]:
    """``n`` frames alternating curve/straight -> (frames BGRA, labels)."""
    rng = np.random.default_rng(seed)
    labels = [LABELS[i % 2] for i in range(n)]
    return [road_frame(lab, rng, width, height) for lab in labels], labels


def load_frames(path: str | Path, limit: int = 64) -> tuple[list[np.ndarray], str]:
    """Up to ``limit`` recorded frames -> (BGR uint8 frames, colour order ``"BGR"``).

    ``path`` is a dataset directory (its ``manifest.csv`` lists the images; an even spread over
    the manifest is taken) or any directory of images. Raises FileNotFoundError if none found.
    """
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        with open(path / MANIFEST_NAME, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows and "image" not in rows[0]:
            raise ValueError(f"{path / MANIFEST_NAME} has no 'image' column")
        files = [path / r["image"] for r in rows]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise FileNotFoundError(f"frames {str(path)!r}: not a directory (want a dataset dir with "
                                f"{MANIFEST_NAME} or a directory of {'/'.join(IMAGE_SUFFIXES)} images)")
    if len(files) > limit:
        idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in idx]
    frames = [f for f in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files) if f is not None]
    if not frames:
        raise FileNotFoundError(f"no readable images under {path}")
    return frames, "BGR"
