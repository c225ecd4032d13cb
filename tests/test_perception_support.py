"""Shared helpers for the perception tests: a quickly TRAINED checkpoint and real simulator frames.

An untrained network gives (nearly) constant logits, so parity on it proves nothing. Here the
real collector records small PNG (lossless) datasets on the embedded simulator: Town01 to train a
simple_cnn for a few dozen steps at 64 px, Town02 to judge it and to compare backends on. The
checkpoint uses the training package's format. Everything is built once per test session.
"""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.preprocess import preprocess
from datasets.schema import CLASSES

IMG = 64
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_BUILT: dict[Path, Path] = {}
_POOLS: dict[str, tuple[list[np.ndarray], list[str]]] = {}
_POOL_ROOT = Path(tempfile.mkdtemp(prefix="perception_frames_"))


def _pool(town: str, frames: int = 240) -> tuple[list[np.ndarray], list[str]]:
    """Raw BGRA frames (320x240) and map labels recorded by the collector in ``town``, once per session."""
    if town not in _POOLS:
        from carla_client.collector import CollectConfig, collect
        out = _POOL_ROOT / town
        collect(CollectConfig(out=out, towns=(town,), frames=frames, sim="embedded", res=(320, 240), seed=3,
                              image_format="png", min_spacing=3.0, progress=False,
                              weather=("ClearNoon", "WetNoon", "CloudySunset")))
        rows = list(csv.DictReader(open(out / "manifest.csv", newline="")))
        imgs = [cv2.cvtColor(cv2.imread(str(out / r["image"])), cv2.COLOR_BGR2BGRA) for r in rows]
        _POOLS[town] = (imgs, [r["label"] for r in rows])
    return _POOLS[town]


def frames_and_labels(n: int, seed: int, town: str = "Town02"):
    """``n`` raw BGRA simulator frames (a seeded sample of the town's pool) and their map labels."""
    imgs, labels = _pool(town)
    idx = np.random.default_rng(seed).choice(len(imgs), size=min(n, len(imgs)), replace=False)
    return [imgs[i] for i in idx], [labels[i] for i in idx]


def batch(frames, color_order: str = "BGRA") -> np.ndarray:
    return np.concatenate([preprocess(f, IMG, color_order, MEAN, STD) for f in frames])


def trained_checkpoint(out_dir: Path, steps: int = 60) -> Path:
    """Train simple_cnn on Town01 frames and save ``out_dir/trained.pt`` in the training checkpoint format."""
    out_dir = Path(out_dir)
    if out_dir in _BUILT:
        return _BUILT[out_dir]
    from training.checkpoint import save_checkpoint
    from training.models import create_model
    torch.manual_seed(0)
    frames, labels = frames_and_labels(240, seed=1, town="Town01")
    x = torch.from_numpy(batch(frames))
    y = torch.tensor([CLASSES.index(lab) for lab in labels])
    model = create_model("simple_cnn", num_classes=2, dropout=0.1, weights="none")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = out_dir / "trained.pt"
    save_checkpoint(path, model, {"arch": "simple_cnn", "num_classes": 2, "classes": list(CLASSES), "img_size": IMG,
                                  "mean": list(MEAN), "std": list(STD), "color_order": "RGB", "dropout": 0.1,
                                  "recipe": {"steps": steps, "data": "embedded Town01 frames"}}, epoch=0, metrics={})
    _BUILT[out_dir] = path
    return path


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.getbasetemp() / "perception_ckpt"
    out.mkdir(exist_ok=True)
    return trained_checkpoint(out)


def test_trained_checkpoint_separates_classes(trained_ckpt):
    """The fixture is only useful if the network really learned: varied logits, clearly above chance on
    a town it never saw (the few-step CPU model is not meant to be good, only to have a real signal)."""
    from perception.meta import load_checkpoint
    model, meta = load_checkpoint(trained_ckpt)
    frames, labels = frames_and_labels(200, seed=99)
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch(frames))).numpy()
    margin = logits[:, 0] - logits[:, 1]
    assert margin.std() > 1.0, f"logits barely vary across frames (std {margin.std():.3f})"
    acc = np.mean([CLASSES[i] == lab for i, lab in zip(logits.argmax(1), labels)])
    assert acc >= 0.7, f"trained fixture accuracy {acc:.2f} on Town02"
    assert meta.img_size == IMG and meta.classes == CLASSES
