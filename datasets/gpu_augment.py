"""GPU training recipe: geometric augmentation on the CPU workers (uint8), photometric + normalise on the GPU.

The albumentations preset (:mod:`datasets.presets`) stays the CPU recipe and the default. On a
fast GPU its per-image float work in the workers starves the model (measured on an H100: the
loader gave 2609 img/s against a 4498 img/s model step), so this recipe splits it:

* :class:`GeometricPresetTrain` (DataLoader workers): one ``cv2.warpPerspective`` per image that
  composes the same mild shift/scale/rotate, perspective jitter and horizontal flip as the CPU
  preset, and returns a uint8 3xHxW tensor (a quarter of the bytes of float32 to pin and upload);
* :class:`GpuPhotometric` (once per batch on the device): brightness/contrast, saturation,
  hue, gamma, haze, blur and sensor noise drawn per image, then ``(x/255 - mean) / std``.

Evaluation keeps :class:`datasets.presets.ClassificationPresetEval` (no augmentation).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import nn

from datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD


class GeometricPresetTrain:
    """uint8 HxWx3 RGB -> uint8 3xHxW tensor, randomly shifted/scaled/rotated/warped/flipped (one warp).

    Args:
        img_size: side of the cached square frames.
        hflip_prob: horizontal flip probability (label-preserving, see :mod:`datasets.presets`).
        affine_prob, perspective_prob: as in the CPU preset (shift 4 %, scale 0.93-1.07, rotate 4 deg;
            corner jitter 2-5 %).
        seed: seed of the worker's RNG (re-seeded per worker by the DataLoader's init function).
    """

    def __init__(self, *, img_size: int, hflip_prob: float = 0.5, affine_prob: float = 0.5,
                 perspective_prob: float = 0.25, seed: int | None = None) -> None:
        self.img_size, self.hflip_prob = img_size, hflip_prob
        self.affine_prob, self.perspective_prob = affine_prob, perspective_prob
        self.rng = np.random.default_rng(seed)

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def homography(self, h: int, w: int) -> np.ndarray | None:
        """3x3 map from output to input pixels for one draw; None = identity."""
        r = self.rng
        m = np.eye(3)
        if r.random() < self.hflip_prob:
            m = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]]) @ m
        if r.random() < self.affine_prob:
            ang = math.radians(r.uniform(-4, 4))
            s = r.uniform(0.93, 1.07)
            tx, ty = r.uniform(-0.04, 0.04) * w, r.uniform(-0.04, 0.04) * h
            c = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]])
            rs = np.array([[s * math.cos(ang), -s * math.sin(ang), tx], [s * math.sin(ang), s * math.cos(ang), ty],
                           [0, 0, 1]])
            m = c @ rs @ np.linalg.inv(c) @ m
        if r.random() < self.perspective_prob:
            src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
            dst = src + np.float32(r.uniform(0.02, 0.05, (4, 2)) * r.choice([-1, 1], (4, 2)) * [w, h])
            m = cv2.getPerspectiveTransform(src, dst).astype(np.float64) @ m
        return None if np.allclose(m, np.eye(3)) else m

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        h, w = rgb.shape[:2]
        m = self.homography(h, w)
        if m is not None:
            rgb = cv2.warpPerspective(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = np.linalg.inv(_TO_YIQ)      # on the host once: no solver launch on the device per batch


def _apply(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), new, old)


class GpuPhotometric(nn.Module):
    """uint8 Nx3xHxW batch on the device -> float32 normalised batch, photometric jitter drawn per image.

    Probabilities and ranges follow the CPU preset; every op is a batched elementwise/tensor op,
    so a 256 x 224 px batch costs a few ms of GPU time and no CPU time. ``train=False`` (or
    :meth:`eval`) only normalises, which equals :func:`datasets.preprocess.normalize`.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.seed = seed
        self._gen: torch.Generator | None = None

    def _rand(self, n: int, device, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        if self._gen is None or self._gen.device != torch.device(device):
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return torch.rand(n, device=device, generator=self._gen) * (hi - lo) + lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a uint8 Nx3xHxW batch, got {tuple(x.shape)} {x.dtype}")
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
            else torch.contiguous_format
        x = x.float().div_(255.0)
        if self.training:
            x = self._jitter(x)
        return ((x - self.mean) / self.std).contiguous(memory_format=fmt)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        r = lambda lo=0.0, hi=1.0: self._rand(n, dev, lo, hi)  # noqa: E731
        v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
        # brightness / contrast (p 0.5)
        on = r() < 0.5
        mean_img = x.mean(dim=(1, 2, 3), keepdim=True)
        x = _apply(on, (x - mean_img) * v(r(0.75, 1.25)) + mean_img + v(r(-0.25, 0.25)) * 0.5, x)
        # saturation + hue (p 0.3): blend with grey, rotate chroma in YIQ
        on = r() < 0.3
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        sat = grey + (x - grey) * v(r(0.8, 1.2))
        th = r(-8, 8) * (2 * math.pi / 180.0)
        to_yiq, from_yiq = x.new_tensor(_TO_YIQ), x.new_tensor(_FROM_YIQ)
        c, s = torch.cos(th), torch.sin(th)
        rot = torch.zeros(n, 3, 3, device=dev)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, c, -s, s, c
        mat = from_yiq @ rot @ to_yiq                                   # n x 3 x 3
        hue = torch.einsum("nij,njhw->nihw", mat, sat)
        x = _apply(on, hue, x).clamp_(0, 1)
        # gamma (p 0.3)
        on = r() < 0.3
        x = _apply(on, x.clamp(1e-4, 1).pow(v(r(0.8, 1.2))), x)
        # haze (p 0.1): blend to light grey, denser towards the top
        on = r() < 0.1
        ramp = torch.linspace(1.0, 0.35, x.shape[2], device=dev).view(1, 1, -1, 1)
        w = v(r(0.15, 0.45)) * ramp
        x = _apply(on, x * (1 - w) + (205.0 / 255.0) * w, x)
        # blur (p 0.2): 3x3 box
        on = r() < 0.2
        blur = nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = _apply(on, blur, x)
        # sensor noise (p 0.2)
        on = r() < 0.2
        noise = torch.randn(x.shape, device=dev, generator=self._gen) * v(r(0.01, 0.05))
        x = _apply(on, x + noise, x)
        return x.clamp_(0, 1)


def gpu_train_pipeline(img_size: int, mean, std, hflip_prob: float, seed: int,
                       device: torch.device) -> tuple[GeometricPresetTrain, GpuPhotometric]:
    """(worker transform, per-batch device transform) of the GPU recipe."""
    return (GeometricPresetTrain(img_size=img_size, hflip_prob=hflip_prob, seed=seed),
            GpuPhotometric(mean, std, seed=seed).to(device).train())
