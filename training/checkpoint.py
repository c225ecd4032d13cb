"""The checkpoint format shared by training, evaluation and perception/.

A checkpoint is ``torch.save`` of a dict of plain types and tensors, loadable with
``torch.load(path, weights_only=True)``::

    {"state_dict": model.state_dict(),
     "config": {"arch": str, "num_classes": 2, "classes": ["curve", "straight"], "img_size": int,
                "mean": [3 floats], "std": [3 floats], "color_order": "RGB", "dropout": float,
                "recipe": {every training flag, plain types},
                "temperature": float (softmax temperature fitted on validation; 1 if absent)},
     "epoch": int, "metrics": {plain types}}

``last.pt`` adds the resume state (``optimizer``, ``history``, ``early_stop``, ``stage``).
``color_order`` is the channel order of the model input; :func:`datasets.preprocess.preprocess`
produces it from any raw frame.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from training.models import create_model

REQUIRED_CONFIG = ("arch", "num_classes", "classes", "img_size", "mean", "std", "color_order", "dropout", "recipe")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: dict, epoch: int, metrics: dict,
                    **extra) -> None:
    """Atomically write a checkpoint (a crash mid-write never leaves a truncated best.pt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, "config": config, "epoch": int(epoch), "metrics": metrics, **extra}, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (weights_only); raises ValueError if it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {str(path)!r}: no such file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a training checkpoint (expected keys state_dict, config; "
                         f"got {sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__})")
    missing = [k for k in REQUIRED_CONFIG if k not in ckpt["config"]]
    if missing:
        raise ValueError(f"{path}: checkpoint config lacks {', '.join(missing)}")
    return ckpt


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint in eval mode on ``device``; returns ``(model, config)``.

    The architecture comes from the name-keyed factory (no pretrained download: ``weights="none"``)
    and the stored state dict is loaded strictly.
    """
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    model = create_model(cfg["arch"], num_classes=cfg["num_classes"], dropout=cfg["dropout"], weights="none")
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), cfg
