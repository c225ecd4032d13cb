"""Shared helpers for the perception tests: a quickly TRAINED checkpoint and frames to judge it on.

An untrained network gives (nearly) constant logits, so parity on it proves nothing. Here a
simple_cnn is trained for a few dozen steps at 64 px on drawn curve/straight road frames until its
logits clearly separate the classes; the checkpoint uses the training package's format. The
builder caches per output directory so several test modules share one training run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.preprocess import preprocess
from datasets.schema import CLASSES
from perception.frames import road_frames

IMG = 64
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_BUILT: dict[Path, Path] = {}


def frames_and_labels(n: int, seed: int, size=(320, 240)):
    """``n`` BGRA frames (smaller than 800x600 to keep tests fast) and their labels."""
    return road_frames(n, seed, *size)


def batch(frames, color_order: str = "BGRA") -> np.ndarray:
    return np.concatenate([preprocess(f, IMG, color_order, MEAN, STD) for f in frames])


def trained_checkpoint(out_dir: Path, steps: int = 30) -> Path:
    """Train simple_cnn on drawn frames and save ``out_dir/trained.pt`` in the training checkpoint format."""
    out_dir = Path(out_dir)
    if out_dir in _BUILT:
        return _BUILT[out_dir]
    from training.checkpoint import save_checkpoint
    from training.models import create_model
    torch.manual_seed(0)
    frames, labels = frames_and_labels(160, seed=1)
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
                                  "recipe": {"steps": steps, "data": "drawn road frames"}}, epoch=0, metrics={})
    _BUILT[out_dir] = path
    return path


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.getbasetemp() / "perception_ckpt"
    out.mkdir(exist_ok=True)
    return trained_checkpoint(out)


def test_trained_checkpoint_separates_classes(trained_ckpt):
    """The fixture is only useful if the network really learned: varied logits, high accuracy."""
    from perception.meta import load_checkpoint
    model, meta = load_checkpoint(trained_ckpt)
    frames, labels = frames_and_labels(64, seed=99)
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch(frames))).numpy()
    margin = logits[:, 0] - logits[:, 1]
    assert margin.std() > 1.0, f"logits barely vary across frames (std {margin.std():.3f})"
    acc = np.mean([CLASSES[i] == lab for i, lab in zip(logits.argmax(1), labels)])
    assert acc >= 0.9, f"trained fixture accuracy {acc:.2f}"
    assert meta.img_size == IMG and meta.classes == CLASSES
