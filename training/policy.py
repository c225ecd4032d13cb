"""Driving policies: camera (+ speed, + route command) -> (steer, throttle, brake), command-conditioned.

Conditional imitation learning (Codevilla et al., 2018, "branched" variant): a shared image backbone
and a speed encoder feed one small head per route command (:data:`carla_client.route_command.COMMANDS`);
the command's one-hot selects the branch. Every branch is computed and the selection is a one-hot
weighted sum, so the graph has no data-dependent control flow and exports to ONNX as is.

Backbones are name-keyed (:func:`register_backbone`, like :mod:`training.models`):

===============  =================================================================================
pilotnet         NVIDIA's PilotNet (Bojarski et al., 2016): 5 convolutions + 3 dense layers, 66x200
                 input, no pretrained weights; the origin's first expert
efficientnet_b0  torchvision EfficientNet-B0 features + global pool (ImageNet weights optional)
===============  =================================================================================

Outputs: steer in [-1, 1] (tanh), throttle and brake in [0, 1] (sigmoid).

Also here: the policy frame table (manifest rows with their controls, speed, command, recovery flag),
subset selection, and the label-preserving augmentation (a horizontal flip mirrors steer and swaps
LEFT/RIGHT and CHANGELANELEFT/CHANGELANERIGHT).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from carla_client.route_command import COMMANDS
from datasets.dataset import FrameTable, load_frames
from datasets.manifest import read_manifest
from datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_rgb_resized_hw

log = logging.getLogger(__name__)

OUTPUTS: tuple[str, str, str] = ("steer", "throttle", "brake")
SUBSETS = ("all", "curve", "straight")
SPEED_SCALE_KMH = 40.0
"""Speed input = km/h / SPEED_SCALE_KMH (town speeds land near 1)."""

FLIP_COMMAND: dict[str, str] = {"LEFT": "RIGHT", "RIGHT": "LEFT", "CHANGELANELEFT": "CHANGELANERIGHT",
                                "CHANGELANERIGHT": "CHANGELANELEFT"}
FLIP_INDEX = np.array([COMMANDS.index(FLIP_COMMAND.get(c, c)) for c in COMMANDS], dtype=np.int64)
"""Command index -> index of its mirror image."""


def command_index(name: str) -> int:
    """Index into COMMANDS; empty (format-1 manifests) -> LANEFOLLOW. Raises ValueError on an unknown name."""
    if not name:
        return 0
    if name not in COMMANDS:
        raise ValueError(f"unknown route command {name!r}; valid: {', '.join(COMMANDS)}")
    return COMMANDS.index(name)


# ------------------------------------------------------------------------------------------ models

@dataclass(frozen=True)
class BackboneSpec:
    """``build(pretrained) -> (module, feature_dim)``; the input size and normalisation it expects."""
    build: Callable[[bool], tuple[nn.Module, int]]
    input_hw: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, spec: BackboneSpec) -> None:
    _BACKBONES[name] = spec


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    if name not in _BACKBONES:
        raise ValueError(f"unknown policy arch {name!r}; valid: {', '.join(list_backbones())}")
    return _BACKBONES[name]


class PilotNet(nn.Module):
    """PilotNet's convolutional trunk and its first dense layers (1164 -> 100 -> 50 in the paper; the
    last dense layers live in the command branches). An adaptive pool to PilotNet's 1x18 feature map
    makes other input sizes usable (an identity at 66x200)."""

    def __init__(self) -> None:
        super().__init__()
        def conv(a, b, k, s):
            return nn.Sequential(nn.Conv2d(a, b, k, stride=s), nn.ELU(inplace=True))
        self.features = nn.Sequential(conv(3, 24, 5, 2), conv(24, 36, 5, 2), conv(36, 48, 5, 2),
                                      conv(48, 64, 3, 1), conv(64, 64, 3, 1), nn.AdaptiveAvgPool2d((1, 18)))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 18, 100), nn.ELU(inplace=True),
                                nn.Linear(100, 50), nn.ELU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _pilotnet(pretrained: bool) -> tuple[nn.Module, int]:
    if pretrained:
        raise ValueError("pilotnet has no pretrained weights; use --weights none")
    return PilotNet(), 50


def _efficientnet_b0(pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision.models as tvm
    weights = tvm.EfficientNet_B0_Weights.IMAGENET1K_V1 if pretrained else None
    m = tvm.efficientnet_b0(weights=weights)
    return nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 1280


register_backbone("pilotnet", BackboneSpec(_pilotnet, (66, 200), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
register_backbone("efficientnet_b0", BackboneSpec(_efficientnet_b0, (88, 200)))


class ConditionalPolicy(nn.Module):
    """image (N,3,H,W), speed (N,1) (scaled), command one-hot (N,C) -> controls (N,3).

    One head per command; ``command`` selects it (a one-hot weighted sum of all heads' outputs).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, n_commands: int = len(COMMANDS),
                 hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.speed = nn.Sequential(nn.Linear(1, 16), nn.ReLU(inplace=True))
        self.join = nn.Sequential(nn.Linear(feat_dim + 16, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                                    nn.Linear(hidden, len(OUTPUTS)))
                                      for _ in range(n_commands))

    def branch_outputs(self, image: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
        """Raw outputs of every branch, (N, C, 3), before the output squashing."""
        z = self.join(torch.cat([self.backbone(image), self.speed(speed)], dim=1))
        return torch.stack([b(z) for b in self.branches], dim=1)

    def forward(self, image: torch.Tensor, speed: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        raw = (self.branch_outputs(image, speed) * command.unsqueeze(-1)).sum(dim=1)
        return torch.cat([torch.tanh(raw[:, :1]), torch.sigmoid(raw[:, 1:])], dim=1)


def create_policy(arch: str = "pilotnet", weights: str = "none", dropout: float = 0.2,
                  hidden: int = 64) -> ConditionalPolicy:
    """Build a command-conditioned policy on backbone ``arch``; ``weights``: ``none`` | ``imagenet``."""
    spec = get_backbone(arch)
    if weights not in ("none", "imagenet"):
        raise ValueError(f"--weights {weights!r}: valid: none, imagenet")
    backbone, dim = spec.build(weights == "imagenet")
    return ConditionalPolicy(backbone, dim, hidden=hidden, dropout=dropout)


class PolicyStack(nn.Module):
    """Several policies on the same inputs in one call: (N, E, 3). Lets the soft gate run both experts in
    one forward (one ONNX Runtime session run, one preprocessing)."""

    def __init__(self, policies: Sequence[nn.Module]) -> None:
        super().__init__()
        self.policies = nn.ModuleList(policies)

    def forward(self, image: torch.Tensor, speed: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        return torch.stack([p(image, speed, command) for p in self.policies], dim=1)


# ------------------------------------------------------------------------------------------ data

@dataclass
class PolicyTable:
    """Frames with what a policy learns from; ``table`` is the shared :class:`FrameTable` (splits use it)."""
    table: FrameTable
    controls: np.ndarray    # (N, 3) float32 steer, throttle, brake
    speed: np.ndarray       # (N,) float32 km/h
    command: np.ndarray     # (N,) int64 index into COMMANDS
    recovery: np.ndarray    # (N,) bool

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, sel) -> "PolicyTable":
        return PolicyTable(self.table.subset(sel), self.controls[sel], self.speed[sel], self.command[sel],
                           self.recovery[sel])


def load_policy_table(data_dirs: Sequence[str | os.PathLike]) -> PolicyTable:
    """Every manifest row of ``data_dirs`` (route-dependent and recovery frames included)."""
    table = load_frames(data_dirs)
    per_root = [read_manifest(r) for r in table.roots]
    rows = [per_root[s][r] for s, r in zip(table.source, table.row)]
    controls = np.array([[float(r["steer"]), float(r["throttle"]), float(r["brake"])] for r in rows], np.float32)
    return PolicyTable(table, controls.reshape(-1, 3), np.array([float(r["speed"]) for r in rows], np.float32),
                       np.array([command_index(r["command"]) for r in rows], np.int64),
                       np.array([r["recovery"] == "1" for r in rows], bool))


def select_subset(pt: PolicyTable, subset: str) -> PolicyTable:
    """``curve`` / ``straight``: rows with that label (the experts); ``all``: every row (monolithic)."""
    if subset not in SUBSETS:
        raise ValueError(f"--subset {subset!r}: valid: {', '.join(SUBSETS)}")
    if subset == "all":
        return pt
    from datasets.schema import CLASSES
    return pt.subset(pt.table.label == CLASSES.index(subset))


def load_images(table: FrameTable, input_hw: tuple[int, int], cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB of the table's frames at ``input_hw`` (the driving preprocessing), cached in
    ``cache_dir`` (keyed by the image list and size) so the three experts decode the frames once."""
    paths = table.paths()
    key = hashlib.sha1(("\n".join(str(p) for p in paths) + f"{input_hw}").encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"policy_{input_hw[0]}x{input_hw[1]}_{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        arr = np.load(cache)
        if arr.shape == (len(paths), *input_hw, 3):
            return arr
    out = np.empty((len(paths), *input_hw, 3), np.uint8)
    for i, p in enumerate(paths):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{p}: cannot decode image")
        out[i] = to_rgb_resized_hw(bgr, input_hw, "BGR")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, cache)
    return out


def flip_batch(images: torch.Tensor, controls: torch.Tensor, command: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mirror the samples where ``mask`` is true: image left-right, steer negated, LEFT<->RIGHT and
    CHANGELANELEFT<->CHANGELANERIGHT. ``images`` (N,3,H,W), ``controls`` (N,3), ``command`` (N,) indices."""
    m = mask.view(-1, 1, 1, 1)
    images = torch.where(m, images.flip(-1), images)
    steer = torch.where(mask, -controls[:, 0], controls[:, 0])
    controls = torch.cat([steer.unsqueeze(1), controls[:, 1:]], dim=1)
    command = torch.where(mask, torch.as_tensor(FLIP_INDEX, device=command.device)[command], command)
    return images, controls, command


def jitter_batch(images: torch.Tensor, gen: torch.Generator, strength: float = 0.2) -> torch.Tensor:
    """Brightness/contrast jitter on normalised images (label-preserving: weather and lighting vary)."""
    n = images.shape[0]
    b = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * strength
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * strength
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * c.to(images) + mean + b.to(images)


def to_input(rgb: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (N,H,W,3) RGB -> float (N,3,H,W) normalised (same maths as ``datasets.preprocess.normalize``)."""
    from datasets.preprocess import normalize
    return torch.from_numpy(normalize(rgb, mean, std))


def one_hot(command: torch.Tensor, n: int = len(COMMANDS)) -> torch.Tensor:
    return torch.nn.functional.one_hot(command, n).to(torch.float32)


# ------------------------------------------------------------------------------------------ checkpoints

POLICY_KIND = "driving_policy"
REQUIRED_POLICY_CONFIG = ("kind", "arch", "input_hw", "mean", "std", "color_order", "commands", "outputs",
                          "speed_scale_kmh", "subset", "recipe")


def load_policy_checkpoint(path: str | os.PathLike) -> tuple[ConditionalPolicy, dict]:
    """(model in eval mode on CPU, config) of a checkpoint written by ``training.train_policy``.

    Raises:
        ValueError: not a policy checkpoint (e.g. a classifier's), naming what is missing.
    """
    ckpt, cfg = _read_policy_checkpoint(path)
    model = create_policy(cfg["arch"], "none", dropout=cfg.get("dropout", 0.2), hidden=cfg.get("hidden", 64))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), cfg


def policy_contract(path: str | os.PathLike):
    """The camera/label contract a policy checkpoint was trained with (None if it has none); no model is built."""
    from datasets.schema import Contract
    return Contract.from_json(_read_policy_checkpoint(path)[1].get("contract"))


def _read_policy_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(checkpoint, config) of a policy checkpoint, its config checked (see :func:`load_policy_checkpoint`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"policy checkpoint {str(path)!r}: no such file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt.get("config", {}) if isinstance(ckpt, dict) else {}
    missing = [k for k in REQUIRED_POLICY_CONFIG if k not in cfg]
    if missing or cfg.get("kind") != POLICY_KIND:
        raise ValueError(f"{path}: not a driving-policy checkpoint (config lacks {', '.join(missing) or 'kind'}); "
                         "train one with python -m training.train_policy")
    if tuple(cfg["commands"]) != COMMANDS:
        raise ValueError(f"{path}: trained with commands {cfg['commands']}, this code has {list(COMMANDS)}")
    return ckpt, cfg
